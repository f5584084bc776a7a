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
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch

from seedswarm.protocol.philox import BLOCK

from .errors import ModelError
from .layout import FlatLayout, single_tensor
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
        one = single_tensor(w.numel(), tensor_id, scale, seeds, steps)
        if one is not None:
            self._run(w, *one, id_base=tensor_id)

    def accumulate_flat(
        self,
        flat: torch.Tensor,
        layout: FlatLayout,
        seeds: Sequence[int],
        steps: npt.NDArray[np.int32],
    ) -> None:
        if len(seeds):
            self._run(
                flat, layout.block_tensor, layout.block_local, layout.scales, list(seeds), steps
            )

    def _run(
        self,
        w: torch.Tensor,
        block_tensor: torch.Tensor,
        block_local: torch.Tensor,
        scales: torch.Tensor,
        seeds: list[int],
        steps: npt.NDArray[np.int32],
        id_base: int = 0,
    ) -> None:
        """One pass over ``w``, split by block range over the threads (GIL released)."""
        if w.device.type != "cpu" or w.dtype != torch.float32 or not w.is_contiguous():
            raise ModelError("the CPU kernel needs a contiguous fp32 CPU tensor")
        n = w.numel()
        nb = -(-n // BLOCK)
        args = (
            w.data_ptr(), n, block_tensor.data_ptr(), block_local.data_ptr(), id_base,
            scales.data_ptr(),
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


def scale_of(exp: int) -> float:
    return math.ldexp(1.0, exp)
