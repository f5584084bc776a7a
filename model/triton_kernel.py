"""The CUDA backend: Philox4x32-10 signs fused with the state update, in Triton.

Same contract and same bits as kernels.TorchBackend and the C kernel. One kernel serves both
the packed buffer of all trainable weights (model/layout.py) and a single tensor (a layout of
one tensor). A program handles ``TILE`` sign blocks of 128 elements:

  * Philox runs once per block and record, on a (TILE, 1) column of counters;
  * each of the four output words drives its own (TILE, 32) accumulator, so no element has to
    select its word: lane j of accumulator w is element 32*w + j of the block;
  * the bit becomes a mask: (x << (31 - j)) reinterpreted as int32 and shifted right
    arithmetically is 0 or -1; ``acc += s & m`` sums s_r over the records whose bit is set,
    and ``sum_r s_r z_r = sum_r s_r - 2 * acc`` at the end: four integer ops per element and
    record, no multiply;
  * all R records are summed in int32 registers before one read-modify-write of the int64
    state, and the weights are rewritten from it (``w = fp32(n) * scale``, model/grid.py), so
    a batch reads the state and writes state and weights once per element.

Low-rank directions (``_lowrank_kernel``): the update of a matrix by R records is the product
A' B with A' = (R, rows) the a-signs times each record's steps and B = (R, cols) the b-signs
(both made by signs.sign_matrix on the device). Each program computes one (BM, BN) tile with
``tl.dot(..., input_precision="ieee")``: plain fp32 multiply-adds, no TF32, whose partial sums
are integers below 2**24 and therefore exact in any order; the tile is then added to the
state once and the weights rewritten from it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch

from seedswarm.protocol.philox import STREAM_LOWRANK_A, STREAM_LOWRANK_B

from .errors import ModelError
from .layout import FlatLayout, matrix_view, single_tensor
from .signs import sign_matrix

try:  # Triton is optional: present with CUDA builds of torch, absent on CPU-only hosts.
    import triton
    import triton.language as tl

    _HAVE_TRITON = True
except ImportError:  # pragma: no cover - depends on the host
    _HAVE_TRITON = False


def triton_available() -> bool:
    return _HAVE_TRITON and torch.cuda.is_available()


if _HAVE_TRITON:

    @triton.jit
    def _philox(k0, k1, c0, c1, c2, c3):  # type: ignore[no-untyped-def]
        for r in tl.static_range(10):
            if r > 0:
                k0 = k0 + 0x9E3779B9
                k1 = k1 + 0xBB67AE85
            a0 = c0
            a2 = c2
            hi0 = tl.umulhi(a0, 0xD2511F53)
            lo0 = a0 * 0xD2511F53
            hi1 = tl.umulhi(a2, 0xCD9E8D57)
            lo1 = a2 * 0xCD9E8D57
            c0 = hi1 ^ c1 ^ k0
            c1 = lo1
            c2 = hi0 ^ c3 ^ k1
            c3 = lo0
        return c0, c1, c2, c3

    @triton.jit
    def _add_word(acc, x, up, s):  # type: ignore[no-untyped-def]
        # lane j: bit j of x moved to the sign bit, then smeared: m = 0 (z=+1) or -1 (z=-1).
        # acc collects sum_r s_r * b_r; the caller turns it into sum_r s_r * (1 - 2 b_r).
        m = (x << up).to(tl.int32, bitcast=True) >> 31
        return acc + (s & m)

    @triton.jit
    def _commit(w_ptr, n_ptr, offs, mask, acc, scale):  # type: ignore[no-untyped-def]
        # n += acc (int64, wrapping); w = fp32(n) * scale (cvt.rn: nearest, ties to even)
        n = tl.load(n_ptr + offs, mask=mask, other=0) + acc.to(tl.int64)
        tl.store(n_ptr + offs, n, mask=mask)
        tl.store(w_ptr + offs, n.to(tl.float32) * scale, mask=mask)

    @triton.jit
    def _accumulate_kernel(  # type: ignore[no-untyped-def]
        w_ptr,
        n_ptr,
        block_tensor_ptr,
        block_local_ptr,
        id_base,
        scales_ptr,
        keys_ptr,
        steps_ptr,
        nrec,
        n_tensors,
        n_blocks,
        n_elements,
        TILE: tl.constexpr,
    ):
        pid = tl.program_id(0)
        blocks = pid * TILE + tl.arange(0, TILE)  # (TILE,)
        live = blocks < n_blocks
        tensor = tl.load(block_tensor_ptr + blocks, mask=live, other=0)  # int32
        local = tl.load(block_local_ptr + blocks, mask=live, other=0)
        c0 = local.to(tl.uint32)[:, None]  # (TILE, 1)
        c1 = (tensor.to(tl.uint32) + id_base).to(tl.uint32)[:, None]  # tensor id: Philox counter
        zero = tl.zeros_like(c0)
        lane = tl.arange(0, 32)[None, :]  # (1, 32)
        up = (31 - lane).to(tl.uint32)
        acc0 = tl.zeros((TILE, 32), dtype=tl.int32)
        acc1 = tl.zeros((TILE, 32), dtype=tl.int32)
        acc2 = tl.zeros((TILE, 32), dtype=tl.int32)
        acc3 = tl.zeros((TILE, 32), dtype=tl.int32)
        total = tl.zeros((TILE, 1), dtype=tl.int32)  # sum_r s_r
        for r in range(nrec):
            k0 = tl.load(keys_ptr + 2 * r).to(tl.uint32, bitcast=True) + zero
            k1 = tl.load(keys_ptr + 2 * r + 1).to(tl.uint32, bitcast=True) + zero
            s = tl.load(steps_ptr + r * n_tensors + tensor, mask=live, other=0)[:, None]
            total += s
            x0, x1, x2, x3 = _philox(k0, k1, c0, c1, zero, zero)
            acc0 = _add_word(acc0, x0, up, s)
            acc1 = _add_word(acc1, x1, up, s)
            acc2 = _add_word(acc2, x2, up, s)
            acc3 = _add_word(acc3, x3, up, s)
        # sum_r s_r z_r = sum_r s_r - 2 sum_r s_r b_r   (exact in int32)
        acc0 = total - 2 * acc0
        acc1 = total - 2 * acc1
        acc2 = total - 2 * acc2
        acc3 = total - 2 * acc3
        scale = tl.load(scales_ptr + tensor, mask=live, other=0.0)[:, None]
        base = blocks.to(tl.int64)[:, None] * 128 + lane  # (TILE, 32)
        offs = base
        _commit(w_ptr, n_ptr, offs, live[:, None] & (offs < n_elements), acc0, scale)
        offs = base + 32
        _commit(w_ptr, n_ptr, offs, live[:, None] & (offs < n_elements), acc1, scale)
        offs = base + 64
        _commit(w_ptr, n_ptr, offs, live[:, None] & (offs < n_elements), acc2, scale)
        offs = base + 96
        _commit(w_ptr, n_ptr, offs, live[:, None] & (offs < n_elements), acc3, scale)

    @triton.jit
    def _lowrank_kernel(  # type: ignore[no-untyped-def]
        w_ptr,
        n_ptr,
        a_ptr,
        b_ptr,
        rows,
        cols,
        nrec,
        scale,
        BM: tl.constexpr,
        BN: tl.constexpr,
        BK: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rm = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)
        rn = (pid_n * BN + tl.arange(0, BN)).to(tl.int64)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, nrec, BK):
            rk = (k0 + tl.arange(0, BK)).to(tl.int64)
            a_mask = (rk[None, :] < nrec) & (rm[:, None] < rows)
            a = tl.load(a_ptr + rk[None, :] * rows + rm[:, None], mask=a_mask, other=0.0)
            b_mask = (rk[:, None] < nrec) & (rn[None, :] < cols)
            b = tl.load(b_ptr + rk[:, None] * cols + rn[None, :], mask=b_mask, other=0.0)
            acc = tl.dot(a, b, acc, input_precision="ieee")  # (BM, BK) @ (BK, BN)
        offs = rm[:, None] * cols + rn[None, :]
        mask = (rm[:, None] < rows) & (rn[None, :] < cols)
        _commit(w_ptr, n_ptr, offs, mask, acc, scale)  # acc: whole numbers below 2**24


class TritonBackend:
    name = "triton"

    def __init__(self, tile: int = 0, warps: int = 0) -> None:
        if not triton_available():
            raise ModelError("Triton with a CUDA device is needed for the triton kernel")
        # blocks and warps per program; 256 x 8 measured best on an H100 (16 records: 3.3x one
        # pass, against 6.9x at 32 x 4); pass others for tuning
        self.tile = tile or 256
        self.warps = warps or 8

    def accumulate(
        self,
        n: torch.Tensor,
        w: torch.Tensor,
        tensor_id: int,
        seeds: Sequence[int],
        steps: Sequence[int],
        scale: float,
    ) -> None:
        """One tensor, as a one-column layout whose counter names ``tensor_id``."""
        one = single_tensor(w.numel(), tensor_id, scale, seeds, steps, device=w.device)
        if one is not None:
            self._check(n, w)
            block_tensor, block_local, scales, live_seeds, matrix = one
            self._launch(n, w, block_tensor.numel(), block_tensor, block_local, scales,
                         live_seeds, matrix, id_base=tensor_id)  # fmt: skip

    def accumulate_flat(
        self,
        state: torch.Tensor,
        flat: torch.Tensor,
        layout: FlatLayout,
        seeds: Sequence[int],
        steps: npt.NDArray[np.int32],
    ) -> None:
        if not len(seeds):
            return
        self._check(state, flat)
        dense = layout.n_dense_blocks
        if dense:
            self._launch(state[: dense * 128], flat[: dense * 128], dense, layout.block_tensor,
                         layout.block_local, layout.scales, seeds, steps)  # fmt: skip
        for m in layout.matrices:
            col = [int(x) for x in steps[:, m.tensor_id]]
            scale = float(layout.scales[m.tensor_id])
            self.accumulate_lowrank(
                matrix_view(state, m), matrix_view(flat, m), m.tensor_id, seeds, col, scale
            )

    def accumulate_lowrank(
        self,
        n: torch.Tensor,
        w: torch.Tensor,
        tensor_id: int,
        seeds: Sequence[int],
        steps: Sequence[int],
        scale: float,
    ) -> None:
        """n += A' B, w = fp32(n) * scale for a (rows, cols) matrix (the module docstring)."""
        pairs = [(s, k) for s, k in zip(seeds, steps, strict=True) if k]
        if not pairs or w.numel() == 0:
            return
        self._check(n, w)
        rows, cols = w.shape
        dev = w.device
        live = [s for s, _ in pairs]
        st = torch.tensor([k for _, k in pairs], dtype=torch.float32, device=dev)
        a = sign_matrix(live, tensor_id, rows, STREAM_LOWRANK_A, dev) * st.view(-1, 1)
        b = sign_matrix(live, tensor_id, cols, STREAM_LOWRANK_B, dev)
        bm, bn, bk = 64, 64, 32
        grid = (-(-rows // bm), -(-cols // bn))
        _lowrank_kernel[grid](
            w, n, a.contiguous(), b.contiguous(), rows, cols, len(live), scale, BM=bm, BN=bn,
            BK=bk,
        )  # fmt: skip

    @staticmethod
    def _check(n: torch.Tensor, w: torch.Tensor) -> None:
        ok = (
            w.device.type == "cuda"
            and w.dtype == torch.float32
            and w.is_contiguous()
            and n.device == w.device
            and n.dtype == torch.int64
            and n.is_contiguous()
            and n.shape == w.shape
        )
        if not ok:
            raise ModelError(
                "the triton kernel needs contiguous CUDA tensors of one shape: int64 state, "
                "fp32 weights"
            )

    def _launch(
        self,
        n: torch.Tensor,
        w: torch.Tensor,
        n_blocks: int,
        block_tensor: torch.Tensor,
        block_local: torch.Tensor,
        scales: torch.Tensor,
        seeds: Sequence[int],
        steps: npt.NDArray[np.int32],
        id_base: int = 0,
    ) -> None:
        dev = w.device
        keys = torch.from_numpy(_key_words(seeds)).to(dev, non_blocking=True)
        st = torch.from_numpy(np.ascontiguousarray(steps, dtype=np.int32)).to(
            dev, non_blocking=True
        )
        grid = (-(-n_blocks // self.tile),)
        _accumulate_kernel[grid](
            w, n, block_tensor, block_local, id_base, scales, keys, st, len(seeds), st.shape[1], n_blocks,
            w.numel(), TILE=self.tile, num_warps=self.warps,
        )  # fmt: skip


def _key_words(seeds: Sequence[int]) -> npt.NDArray[np.int32]:
    """(2R,) int32 bit patterns of the seeds' low and high words."""
    arr = np.array(seeds, dtype=np.uint64)
    words = np.empty(2 * len(seeds), dtype=np.uint32)
    words[0::2] = (arr & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    words[1::2] = (arr >> np.uint64(32)).astype(np.uint32)
    return words.view(np.int32)
