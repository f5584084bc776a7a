"""Backends for the one primitive every update is made of.

    accumulate(w, tensor_id, seeds, steps, scale):   w += scale * sum_r steps[r] * z(seeds[r])

``w`` is a flat fp32 tensor (a trainable parameter's storage), ``steps`` are whole grid steps.
Perturbing, restoring, applying a batch of peer records and the fused restore-and-update of a ZO
step are all calls of this with different (seed, steps) lists.

Backends, all bit-identical (tests/unit/model/test_kernels.py):
  * ``torch``  : plain torch integer ops (signs.py); any device; the portable reference.
  * ``cpu``    : the C kernel in csrc/zokernel.c, built with the package; signs are generated
                 and added in one pass over the weights, in L1-sized tiles, by several threads.
  * ``triton`` : a Triton kernel for CUDA (triton_kernel.py), when Triton is installed.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch

from seedswarm.protocol.philox import BLOCK

from .errors import ModelError
from .layout import FlatLayout
from .signs import philox_words, seed_keys


class Backend(Protocol):
    name: str

    def accumulate_flat(
        self,
        flat: torch.Tensor,
        layout: FlatLayout,
        seeds: Sequence[int],
        steps: npt.NDArray[np.int32],
    ) -> None:
        """Every tensor of a packed buffer at once (layout.py): steps is (R, n_tensors)."""
        ...

    def accumulate(
        self,
        w: torch.Tensor,
        tensor_id: int,
        seeds: Sequence[int],
        steps: Sequence[int],
        scale: float,
    ) -> None: ...


class TorchBackend:
    """The reference: chunked torch integer ops, on whatever device ``w`` is on."""

    name = "torch"

    def __init__(self, chunk_elements: int = 1 << 21) -> None:
        self.chunk_elements = chunk_elements

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
                w[lo:hi] += acc[: hi - lo].to(torch.float32) * scale

    def accumulate_flat(
        self,
        flat: torch.Tensor,
        layout: FlatLayout,
        seeds: Sequence[int],
        steps: npt.NDArray[np.int32],
    ) -> None:
        _flat_by_tensor(self, flat, layout, seeds, steps)


def _flat_by_tensor(
    backend: Backend,
    flat: torch.Tensor,
    layout: FlatLayout,
    seeds: Sequence[int],
    steps: npt.NDArray[np.int32],
) -> None:
    """accumulate_flat as one per-tensor call each (the reference the packed kernels match)."""
    for t, (off, n) in enumerate(zip(layout.offsets, layout.numels, strict=True)):
        col = [int(s) for s in steps[:, t]]
        backend.accumulate(flat[off : off + n], t, seeds, col, float(layout.scales[t]))


class CpuKernelBackend:
    """The C kernel: one pass over the weights per call, split over threads by block range."""

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
        w: torch.Tensor,
        tensor_id: int,
        seeds: Sequence[int],
        steps: Sequence[int],
        scale: float,
    ) -> None:
        pairs = [(s, k) for s, k in zip(seeds, steps, strict=True) if k]
        if not pairs or w.numel() == 0:
            return
        if w.device.type != "cpu" or w.dtype != torch.float32 or not w.is_contiguous():
            raise ModelError("the CPU kernel needs a contiguous fp32 CPU tensor")
        seed_bytes = struct.pack(f"<{len(pairs)}Q", *(s for s, _ in pairs))
        step_bytes = struct.pack(f"<{len(pairs)}i", *(k for _, k in pairs))
        n = w.numel()
        n_blocks = -(-n // BLOCK)
        ptr = w.data_ptr()
        parts = min(self.threads, max(1, (n * len(pairs)) // self.min_split), n_blocks)
        if parts == 1:
            self._k.accumulate(ptr, n, tensor_id, seed_bytes, step_bytes, scale, 0, n_blocks)
            return
        per = -(-n_blocks // parts)
        futures = [
            self._pool.submit(
                self._k.accumulate,
                ptr,
                n,
                tensor_id,
                seed_bytes,
                step_bytes,
                scale,
                b,
                min(b + per, n_blocks),
            )
            for b in range(0, n_blocks, per)
        ]
        for f in futures:
            f.result()

    def accumulate_flat(
        self,
        flat: torch.Tensor,
        layout: FlatLayout,
        seeds: Sequence[int],
        steps: npt.NDArray[np.int32],
    ) -> None:
        if not len(seeds):
            return
        if flat.device.type != "cpu" or flat.dtype != torch.float32 or not flat.is_contiguous():
            raise ModelError("the CPU kernel needs a contiguous fp32 CPU buffer")
        seed_bytes = struct.pack(f"<{len(seeds)}Q", *seeds)
        step_bytes = np.ascontiguousarray(steps, dtype="<i4").tobytes()
        nb = layout.n_blocks
        args = (
            flat.data_ptr(), nb, layout.block_tensor.data_ptr(), layout.block_local.data_ptr(),
            layout.scales.data_ptr(), layout.n_tensors, seed_bytes, step_bytes,
        )  # fmt: skip
        parts = min(self.threads, max(1, (nb * BLOCK * len(seeds)) // self.min_split), nb)
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


def make_backend(name: str, device: torch.device) -> Backend:
    """``auto`` picks the fastest backend available for ``device``."""
    if name == "auto":
        name = available_backends(device)[-1]
    if name == "torch":
        return TorchBackend()
    if name == "cpu":
        if device.type != "cpu":
            raise ModelError("the cpu kernel runs on CPU tensors only")
        threads = int(os.environ.get("SEEDSWARM_KERNEL_THREADS", "0")) or None
        return CpuKernelBackend(threads)
    if name == "triton":
        if device.type != "cuda":
            raise ModelError("the triton kernel runs on CUDA tensors only")
        from .triton_kernel import TritonBackend

        return TritonBackend()
    raise ModelError(f"unknown kernel {name!r}: choose auto, torch, cpu or triton")


def scale_of(exp: int) -> float:
    return math.ldexp(1.0, exp)
