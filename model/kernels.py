"""Backends for the one primitive every update is made of.

    accumulate(n, w, tensor_id, seeds, steps, scale):
        n += sum_r steps[r] * z(seeds[r])          (int64 state, wrapping)
        w  = fp32(n) * scale                        (the weights, rewritten from the state)

``n`` is a flat int64 tensor (a trainable tensor's state in grid steps, model/grid.py), ``w``
the fp32 storage of the same elements, ``steps`` whole grid steps. Perturbing, restoring,
applying a batch of peer records and the fused restore-and-update of a ZO step are all calls
of this with different (seed, steps) lists. With low-rank directions a matrix tensor (rows,
cols) takes the same call in its own form:

    accumulate_lowrank(n, w, tensor_id, seeds, steps, scale):
        n += sum_r steps[r] * a(seeds[r]) b(seeds[r])^T  =  A diag(steps) B^T

an integer matrix product, exact because every partial sum is an integer below 2**24
(layout.exact_batches), then added to the state once.

Backends, all bit-identical (tests/unit/model/test_kernels.py):
  * ``torch``  : plain torch integer ops (signs.py); any device; the portable reference.
  * ``cpu``    : the C kernel in csrc/zokernel.c, built with the package; signs are generated
                 and added in one pass over the weights, in L1-sized tiles, by several threads;
                 low-rank products by the four-Russians method in int32.
  * ``triton`` : a Triton kernel for CUDA (triton_kernel.py), when Triton is installed; low-rank
                 products as an fp32 tensor-core-free dot (IEEE) fused with the add.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch

from seedswarm.protocol.philox import BLOCK, STREAM_LOWRANK_A, STREAM_LOWRANK_B

from .errors import ModelError
from .layout import FlatLayout, matrix_view, single_tensor
from .signs import philox_words, seed_keys, sign_matrix


class Backend(Protocol):
    name: str

    def accumulate_flat(
        self,
        state: torch.Tensor,
        flat: torch.Tensor,
        layout: FlatLayout,
        seeds: Sequence[int],
        steps: npt.NDArray[np.int32],
    ) -> None:
        """Every tensor of a packed buffer at once (layout.py): steps is (R, n_tensors)."""
        ...

    def accumulate(
        self,
        n: torch.Tensor,
        w: torch.Tensor,
        tensor_id: int,
        seeds: Sequence[int],
        steps: Sequence[int],
        scale: float,
    ) -> None: ...

    def accumulate_lowrank(
        self,
        n: torch.Tensor,
        w: torch.Tensor,
        tensor_id: int,
        seeds: Sequence[int],
        steps: Sequence[int],
        scale: float,
    ) -> None:
        """``n`` and ``w`` are (rows, cols) contiguous matrices; see the module docstring."""
        ...


def _rewrite(n: torch.Tensor, w: torch.Tensor, scale: float) -> None:
    """``w = fp32(n) * scale``: the weights of a slice, from its state (model/grid.py)."""
    w.copy_(n.to(torch.float32)).mul_(scale)


class TorchBackend:
    """The reference: chunked torch integer ops, on whatever device ``w`` is on."""

    name = "torch"

    def __init__(self, chunk_elements: int = 1 << 21) -> None:
        self.chunk_elements = chunk_elements

    def accumulate(
        self,
        n_state: torch.Tensor,
        w: torch.Tensor,
        tensor_id: int,
        seeds: Sequence[int],
        steps: Sequence[int],
        scale: float,
    ) -> None:
        pairs = [(s, k) for s, k in zip(seeds, steps, strict=True) if k]
        if not pairs or w.numel() == 0:
            return
        n = w.numel()
        n_blocks = -(-n // BLOCK)
        device = w.device
        # Records are processed in groups so that a chunk's bits stay near chunk_elements.
        group = max(1, min(len(pairs), self.chunk_elements // (BLOCK * 64)))
        chunk_blocks = max(1, self.chunk_elements // (BLOCK * group))
        shifts = torch.arange(32, dtype=torch.int64, device=device)
        for g0 in range(0, len(pairs), group):
            part = pairs[g0 : g0 + group]
            k0, k1 = seed_keys([s for s, _ in part], device)
            st = torch.tensor([k for _, k in part], dtype=torch.int64, device=device).view(-1, 1)
            for b0 in range(0, n_blocks, chunk_blocks):
                nb = min(chunk_blocks, n_blocks - b0)
                blocks = torch.arange(b0, b0 + nb, dtype=torch.int64, device=device).view(1, -1)
                words = torch.stack(philox_words(k0, k1, blocks, tensor_id, 0, 0), -1)
                bits = ((words.unsqueeze(-1) >> shifts) & 1).reshape(len(part), nb * BLOCK)
                # sum_r k_r * (1 - 2 b_r) = sum_r k_r - 2 * sum_r k_r b_r, exact in int64
                acc = st.sum() - 2 * (bits * st).sum(0)
                lo = b0 * BLOCK
                hi = min(lo + nb * BLOCK, n)
                n_state[lo:hi] += acc[: hi - lo]
                _rewrite(n_state[lo:hi], w[lo:hi], scale)

    def accumulate_lowrank(
        self,
        n: torch.Tensor,
        w: torch.Tensor,
        tensor_id: int,
        seeds: Sequence[int],
        steps: Sequence[int],
        scale: float,
    ) -> None:
        """A diag(steps) B^T as a float64 product (exact: integers far below 2**53, and no
        float64 matmul anywhere uses reduced precision), added in row chunks."""
        pairs = [(s, k) for s, k in zip(seeds, steps, strict=True) if k]
        if not pairs or w.numel() == 0:
            return
        rows, cols = w.shape
        device = w.device
        live = [s for s, _ in pairs]
        st = torch.tensor([k for _, k in pairs], dtype=torch.float64, device=device)
        b = sign_matrix(live, tensor_id, cols, STREAM_LOWRANK_B, device, torch.float64)
        chunk = max(1, self.chunk_elements // max(cols, 1))
        for r0 in range(0, rows, chunk):
            r1 = min(rows, r0 + chunk)
            a = _rows_of(live, tensor_id, r0, r1, device) * st.view(-1, 1)  # (R, r1-r0)
            n[r0:r1] += (a.T @ b).to(torch.int64)
            _rewrite(n[r0:r1], w[r0:r1], scale)

    def accumulate_flat(
        self,
        state: torch.Tensor,
        flat: torch.Tensor,
        layout: FlatLayout,
        seeds: Sequence[int],
        steps: npt.NDArray[np.int32],
    ) -> None:
        _flat_by_tensor(self, state, flat, layout, seeds, steps)


def _rows_of(
    seeds: list[int], tensor_id: int, r0: int, r1: int, device: torch.device
) -> torch.Tensor:
    """(R, r1 - r0) float64 a-signs of rows r0 .. r1-1 (whole sign blocks generated)."""
    from .signs import sign_bits_torch

    b0, b1 = r0 // BLOCK, -(-r1 // BLOCK)
    bits = sign_bits_torch(seeds, tensor_id, b0, b1 - b0, device, STREAM_LOWRANK_A)
    lo = r0 - b0 * BLOCK
    return 1 - 2 * bits[:, lo : lo + (r1 - r0)].to(torch.float64)


def _flat_by_tensor(
    backend: Backend,
    state: torch.Tensor,
    flat: torch.Tensor,
    layout: FlatLayout,
    seeds: Sequence[int],
    steps: npt.NDArray[np.int32],
) -> None:
    """accumulate_flat as one per-tensor call each (the reference the packed kernels match)."""
    matrices = {m.tensor_id: m for m in layout.matrices}
    for t, (off, n) in enumerate(zip(layout.offsets, layout.numels, strict=True)):
        col = [int(s) for s in steps[:, t]]
        scale = float(layout.scales[t])
        if t in matrices:
            m = matrices[t]
            backend.accumulate_lowrank(
                matrix_view(state, m), matrix_view(flat, m), t, seeds, col, scale
            )
        else:
            backend.accumulate(state[off : off + n], flat[off : off + n], t, seeds, col, scale)


class CpuKernelBackend:
    """The C kernel: one pass over the state and weights per call, split over threads by block
    range."""

    name = "cpu"

    def __init__(self, threads: int | None = None) -> None:
        try:
            from . import _zokernel  # type: ignore[attr-defined]
        except ImportError as exc:
            raise ModelError(
                "the compiled CPU kernel is not built (no C compiler at install time?); "
                "use --kernel torch"
            ) from exc
        self._k = _zokernel
        self.threads = threads or max(1, torch.get_num_threads())
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="zokernel")
        # Below this many element-records a split costs more than it saves.
        self.min_split = 1 << 16

    def accumulate(
        self,
        n: torch.Tensor,
        w: torch.Tensor,
        tensor_id: int,
        seeds: Sequence[int],
        steps: Sequence[int],
        scale: float,
    ) -> None:
        one = single_tensor(w.numel(), tensor_id, scale, seeds, steps)
        if one is not None:
            self._run(n, w, *one, id_base=tensor_id)

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
        dense = layout.n_dense_blocks * BLOCK
        if dense:
            self._run(
                state[:dense], flat[:dense], layout.block_tensor, layout.block_local,
                layout.scales, list(seeds), steps,
            )  # fmt: skip
        if layout.matrices:
            jobs = []
            for m in layout.matrices:
                col = steps[:, m.tensor_id]
                if col.any():
                    scale = float(layout.scales[m.tensor_id])
                    jobs += self._lowrank_jobs(
                        matrix_view(state, m), matrix_view(flat, m), m.tensor_id, seeds, col, scale
                    )
            self._wait(jobs)

    def accumulate_lowrank(
        self,
        n: torch.Tensor,
        w: torch.Tensor,
        tensor_id: int,
        seeds: Sequence[int],
        steps: Sequence[int],
        scale: float,
    ) -> None:
        col = np.asarray(steps, dtype=np.int32)
        if col.any():
            self._wait(self._lowrank_jobs(n, w, tensor_id, seeds, col, scale))

    def _lowrank_jobs(
        self,
        n: torch.Tensor,
        w: torch.Tensor,
        tensor_id: int,
        seeds: Sequence[int],
        col: npt.NDArray[np.int32],
        scale: float,
    ) -> list[tuple[Any, ...]]:
        """Calls of the C low-rank kernel for ``w``, split by rows over the threads."""
        _check_cpu(n, w)
        rows, cols = w.shape
        if rows == 0 or cols == 0:
            return []
        live = [int(i) for i in np.flatnonzero(col)]
        seed_bytes = struct.pack(f"<{len(live)}Q", *(seeds[i] for i in live))
        step_bytes = np.ascontiguousarray(col[live], dtype="<i4").tobytes()
        work = rows * cols * len(live)
        parts = max(1, min(self.threads, work // self.min_split, -(-rows // BLOCK)))
        per = -(-rows // parts)
        return [
            (w.data_ptr(), n.data_ptr(), rows, cols, r0, min(rows, r0 + per), tensor_id, scale,
             seed_bytes, step_bytes)
            for r0 in range(0, rows, per)
        ]  # fmt: skip

    def _wait(self, jobs: list[tuple[Any, ...]]) -> None:
        if len(jobs) == 1:
            self._k.lowrank(*jobs[0])
            return
        for f in [self._pool.submit(self._k.lowrank, *job) for job in jobs]:
            f.result()

    def _run(
        self,
        state: torch.Tensor,
        w: torch.Tensor,
        block_tensor: torch.Tensor,
        block_local: torch.Tensor,
        scales: torch.Tensor,
        seeds: list[int],
        steps: npt.NDArray[np.int32],
        id_base: int = 0,
    ) -> None:
        """One pass over ``state`` and ``w``, split by block range over the threads (GIL
        released)."""
        _check_cpu(state, w)
        n = w.numel()
        nb = -(-n // BLOCK)
        args = (
            w.data_ptr(), state.data_ptr(), n, block_tensor.data_ptr(), block_local.data_ptr(),
            id_base, scales.data_ptr(),
            steps.shape[1], struct.pack(f"<{len(seeds)}Q", *seeds),
            np.ascontiguousarray(steps, dtype="<i4").tobytes(),
        )  # fmt: skip
        parts = min(self.threads, max(1, (n * len(seeds)) // self.min_split), nb)
        if parts == 1:
            self._k.accumulate_flat(*args, 0, nb)
            return
        per = -(-nb // parts)

        def run(lo: int, hi: int) -> None:
            self._k.accumulate_flat(*args, lo, hi)

        futures = [self._pool.submit(run, b, min(b + per, nb)) for b in range(0, nb, per)]
        for f in futures:
            f.result()

    def signs(self, seed: int, tensor_id: int, numel: int) -> torch.Tensor:
        out = torch.empty(numel, dtype=torch.int8)
        self._k.signs(out.data_ptr(), numel, tensor_id, seed)
        return out


def _check_cpu(n: torch.Tensor, w: torch.Tensor) -> None:
    ok = (
        w.device.type == "cpu"
        and w.dtype == torch.float32
        and w.is_contiguous()
        and n.device.type == "cpu"
        and n.dtype == torch.int64
        and n.is_contiguous()
        and n.shape == w.shape
    )
    if not ok:
        raise ModelError(
            "the CPU kernel needs contiguous CPU tensors of one shape: int64 state, fp32 weights"
        )


def available_backends(device: torch.device) -> list[str]:
    names = ["torch"]
    if device.type == "cpu":
        try:
            CpuKernelBackend(threads=1)
            names.append("cpu")
        except ModelError:
            pass
    if device.type == "cuda":
        from .triton_kernel import triton_available

        if triton_available():
            names.append("triton")
    return names


def make_backend(name: str, device: torch.device, *, threads: int = 0) -> Backend:
    """``auto`` picks the fastest backend available for ``device``; ``threads``: the C
    kernel's threads (0: torch's thread count)."""
    if name == "auto":
        name = available_backends(device)[-1]
    if name == "torch":
        return TorchBackend()
    if name == "cpu":
        if device.type != "cpu":
            raise ModelError("the cpu kernel runs on CPU tensors only")
        return CpuKernelBackend(threads or None)
    if name == "triton":
        if device.type != "cuda":
            raise ModelError("the triton kernel runs on CUDA tensors only")
        from .triton_kernel import TritonBackend

        return TritonBackend()
    raise ModelError(f"unknown kernel {name!r}: choose auto, torch, cpu or triton")
