"""The CUDA backend: Philox4x32-10 signs fused with scale-and-add, in Triton.

Same contract and same bits as kernels.TorchBackend and the C kernel. One program handles
``TILE`` sign blocks of 128 elements: it computes Philox once per block (shape (TILE, 1)),
selects each element's word and bit (shape (TILE, 128)), and accumulates ``steps[r] * z`` for
all R records in int32 registers before one read-modify-write of the weights. So a batch of R
records reads and writes each weight once, and Philox costs 1/128 of an evaluation per element.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .errors import ModelError

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
    def _accumulate_kernel(  # type: ignore[no-untyped-def]
        w_ptr, n, tensor_id, keys_ptr, steps_ptr, nrec, scale, TILE: tl.constexpr
    ):
        pid = tl.program_id(0)
        blocks = pid * TILE + tl.arange(0, TILE)[:, None]  # (TILE, 1)
        cols = tl.arange(0, 128)[None, :]  # (1, 128)
        c0 = blocks.to(tl.uint32)
        zero = tl.zeros_like(c0)
        c1 = zero + tensor_id  # uint32 (tensor_id may arrive as a specialised constant)
        shift = (cols % 32).to(tl.uint32)
        word = cols // 32
        acc = tl.zeros((TILE, 128), dtype=tl.int32)
        for r in range(nrec):
            k0 = tl.load(keys_ptr + 2 * r).to(tl.uint32, bitcast=True) + zero
            k1 = tl.load(keys_ptr + 2 * r + 1).to(tl.uint32, bitcast=True) + zero
            s = tl.load(steps_ptr + r)
            x0, x1, x2, x3 = _philox(k0, k1, c0, c1, zero, zero)
            x = tl.where(word == 0, x0, tl.where(word == 1, x1, tl.where(word == 2, x2, x3)))
            bit = ((x >> shift) & 1).to(tl.int32)
            acc += s - 2 * s * bit
        offs = blocks.to(tl.int64) * 128 + cols
        mask = offs < n
        w = tl.load(w_ptr + offs, mask=mask, other=0.0)
        tl.store(w_ptr + offs, w + acc.to(tl.float32) * scale, mask=mask)


class TritonBackend:
    name = "triton"

    def __init__(self, tile: int = 16) -> None:
        if not triton_available():
            raise ModelError("Triton with a CUDA device is needed for the triton kernel")
        self.tile = tile

    def accumulate(
        self,
        w: torch.Tensor,
        tensor_id: int,
        seeds: Sequence[int],
        steps: Sequence[int],
        scale: float,
    ) -> None:
        pairs = [(s, k) for s, k in zip(seeds, steps, strict=True) if k]
        if not pairs or w.numel() == 0:
            return
        if w.device.type != "cuda" or w.dtype != torch.float32 or not w.is_contiguous():
            raise ModelError("the triton kernel needs a contiguous fp32 CUDA tensor")
        halves = [half for s, _ in pairs for half in (s & 0xFFFFFFFF, s >> 32)]
        words = [v - (1 << 32) if v >= 1 << 31 else v for v in halves]  # int32 bit patterns
        keys = torch.tensor(words, dtype=torch.int32, device=w.device)
        st = torch.tensor([k for _, k in pairs], dtype=torch.int32, device=w.device)
        n = w.numel()
        n_blocks = -(-n // 128)
        grid = (-(-n_blocks // self.tile),)
        _accumulate_kernel[grid](w, n, tensor_id, keys, st, len(pairs), scale, TILE=self.tile)
