"""One flat buffer for all trainable weights, so every update is one pass and one kernel call.

The trainable parameters become views into a single fp32 buffer, each starting on a 128-element
sign block and padded to a whole block, and their state (model/grid.py: int64 grid steps) lives
in a second buffer of the same layout:

    flat  = [ tensor 0 | pad ][ tensor 1 | pad ] ...         (n_blocks * 128 floats)
    state = [ tensor 0 | pad ][ tensor 1 | pad ] ...         (n_blocks * 128 int64)
    block_tensor[b] = tensor id of block b                  (int32, n_blocks)
    block_local[b]  = index of block b within its tensor    (int32, n_blocks)
    scales[t]       = 2**e_t, the grid step of tensor t      (fp32, n_tensors)

A kernel adds a batch's integer sum to ``state`` and rewrites the weights of the same elements
as ``fp32(state) * scales[t]`` (model/grid.py).

A kernel walks the blocks of ``flat`` once and, per block, regenerates the signs of every record
from Philox(seed, (block_local[b], block_tensor[b], 0, 0)) -- exactly the per-tensor layout of
docs/PROTOCOL.md, so packing changes nothing in the bits. Padding elements receive updates too;
nothing ever reads them.

Memory: 12 bytes per trainable element (4 of weights, 8 of state), against 4 before the state
existed. For the usual trainable sets (biases and LayerNorms, adapters) that is a rounding
error next to the frozen weights; for full-weight training it triples the trainable weights'
footprint.

With low-rank directions (the manifest's ``direction = "lowrank"``) every 2-D tensor takes its
direction from two sign vectors instead (z = a b^T, docs/PROTOCOL.md). Those
tensors are packed after all the others, so the dense kernels walk blocks [0, dense_blocks)
only, and each matrix is a contiguous (rows, cols) view for the low-rank kernels:

    flat = [ dense tensors ... | pad ][ matrix | pad ][ matrix | pad ] ...
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from seedswarm.protocol.philox import BLOCK

from .grid import TensorGrid, steps_of, weights_of_


@dataclass(frozen=True, slots=True)
class Matrix:
    """A 2-D trainable tensor with a low-rank direction: its id, where it sits, its shape."""

    tensor_id: int
    offset: int
    rows: int
    cols: int


@dataclass(frozen=True, slots=True)
class FlatLayout:
    offsets: tuple[int, ...]  # element offset of each tensor in the buffer
    numels: tuple[int, ...]
    n_blocks: int
    block_tensor: torch.Tensor  # (n_blocks,) int32, on the buffer's device
    block_local: torch.Tensor  # (n_blocks,) int32
    scales: torch.Tensor  # (n_tensors,) float32
    eps_steps: npt.NDArray[np.int64]  # (n_tensors,)
    unit_shift: npt.NDArray[np.int64]  # (n_tensors,)
    exps: tuple[int, ...] = ()  # e_t of each tensor (scales[t] = 2**e_t)
    dense_blocks: int = -1  # blocks [0, dense_blocks) take dense signs (-1: all of them)
    matrices: tuple[Matrix, ...] = ()  # the low-rank tensors, after the dense region

    @property
    def n_dense_blocks(self) -> int:
        return self.n_blocks if self.dense_blocks < 0 else self.dense_blocks

    @property
    def n_tensors(self) -> int:
        return len(self.offsets)

    @property
    def size(self) -> int:
        return self.n_blocks * BLOCK

    def steps_matrix(self, terms: Sequence[tuple[int, int, int]]) -> npt.NDArray[np.int32]:
        """(R, n_tensors) grid steps of ``(seed, eps_mult, q)`` terms: m*eps_t - du_t(q).

        du_t(q) = q * 2**shift_t, rounded half to even when shift_t < 0 (numpy's round); the
        products are exact in float64, so this equals grid.TensorGrid.update_steps.
        """
        mult = np.array([m for _, m, _ in terms], dtype=np.float64)[:, None]
        q = np.array([q for _, _, q in terms], dtype=np.float64)[:, None]
        du = np.round(np.ldexp(q, self.unit_shift[None, :]))
        # in float64: exact below 2**53, and a huge shift cannot wrap around as an int64 would
        steps = mult * self.eps_steps[None, :] - du
        if np.abs(steps).max(initial=0) >= 2**31:
            raise OverflowError(
                "grid steps beyond int32: the grid is far too fine for these records"
            )
        return steps.astype(np.int32)


EXACT_SUM = 1 << 24  # an fp32 holds every integer below this exactly


def exact_batches(steps: npt.NDArray[np.int32]) -> list[tuple[int, int]]:
    """Split the records (rows) so that no tensor's summed |steps| reaches 2**24.

    A kernel sums a batch's steps per element in int32 (the Triton low-rank kernel: as an fp32
    product) before it adds the sum to the int64 state once; keeping sum_r |steps[r, t]| < 2**24
    makes every partial sum exact in both, whatever the signs and the order. The state itself
    has no such limit (docs/PROTOCOL.md §5). With the default grids a batch of 256 records
    needs about 2**23 at most, so the split almost never happens.
    """
    if steps.shape[0] == 0:
        return []
    mags = np.abs(steps.astype(np.int64))
    if mags.max(initial=0) >= EXACT_SUM:
        raise OverflowError("one record moves a tensor by 2**24 grid steps or more: grid too fine")
    if mags.sum(axis=0).max() < EXACT_SUM:
        return [(0, steps.shape[0])]  # the usual case: one batch
    out: list[tuple[int, int]] = []
    lo = 0
    running = np.zeros(steps.shape[1], dtype=np.int64)
    for r in range(steps.shape[0]):
        running += mags[r]
        if running.max() >= EXACT_SUM:
            out.append((lo, r))
            lo = r
            running = mags[r].copy()
    out.append((lo, steps.shape[0]))
    return out


def pack_(
    params: Sequence[torch.Tensor], grids: Sequence[TensorGrid], *, lowrank: bool = False
) -> tuple[torch.Tensor, torch.Tensor, FlatLayout]:
    """Move ``params`` into one padded fp32 buffer (in place: they become views of it) and
    make their state: ``(weights, state, layout)``.

    The state is ``round_half_even(param / 2**e_t)`` in int64 (the snapped base), and the
    weights are rewritten from it, so they come out snapped. ``lowrank``: 2-D tensors get
    low-rank directions and are packed after the others.
    """
    device = params[0].device
    is_matrix = [lowrank and p.dim() == 2 for p in params]
    order = [t for t, m in enumerate(is_matrix) if not m] + [
        t for t, m in enumerate(is_matrix) if m
    ]
    offsets, numels = [0] * len(params), [p.numel() for p in params]
    total_blocks = 0
    for t in order:
        offsets[t] = total_blocks * BLOCK
        total_blocks += -(-numels[t] // BLOCK)
    dense_blocks = sum(-(-numels[t] // BLOCK) for t in order if not is_matrix[t])
    flat = torch.zeros(total_blocks * BLOCK, dtype=torch.float32, device=device)
    state = torch.zeros(total_blocks * BLOCK, dtype=torch.int64, device=device)
    block_tensor = np.empty(total_blocks, dtype=np.int32)
    block_local = np.empty(total_blocks, dtype=np.int32)
    with torch.no_grad():
        for t, (p, g, off, n) in enumerate(zip(params, grids, offsets, numels, strict=True)):
            view = flat[off : off + n]
            state[off : off + n] = steps_of(p.data.reshape(-1), g.exp)
            weights_of_(view, state[off : off + n], g.exp)
            p.data = view.view(p.shape)
            nb = -(-n // BLOCK)
            first = off // BLOCK
            block_tensor[first : first + nb] = t
            block_local[first : first + nb] = np.arange(nb, dtype=np.int32)
    layout = FlatLayout(
        offsets=tuple(offsets),
        numels=tuple(numels),
        n_blocks=total_blocks,
        block_tensor=torch.from_numpy(block_tensor).to(device),
        block_local=torch.from_numpy(block_local).to(device),
        scales=torch.tensor([g.scale for g in grids], dtype=torch.float32, device=device),
        eps_steps=np.array([g.eps_steps for g in grids], dtype=np.int64),
        unit_shift=np.array([g.unit_shift for g in grids], dtype=np.int64),
        exps=tuple(g.exp for g in grids),
        dense_blocks=dense_blocks,
        matrices=tuple(
            Matrix(t, offsets[t], int(params[t].shape[0]), int(params[t].shape[1]))
            for t in order
            if is_matrix[t]
        ),
    )
    return flat, state, layout


def matrix_view(flat: torch.Tensor, m: Matrix) -> torch.Tensor:
    """The (rows, cols) view of a low-rank matrix in the flat buffer."""
    return flat[m.offset : m.offset + m.rows * m.cols].view(m.rows, m.cols)


def single_tensor(
    numel: int,
    tensor_id: int,
    scale: float,
    seeds: Sequence[int],
    steps: Sequence[int],
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int], npt.NDArray[np.int32]] | None:
    """The packed-kernel arguments for one tensor: a one-column layout.

    Every block is column 0 of the steps and scales; the kernel names the tensor
    ``id_base + column`` in the Philox counter, so the caller passes ``id_base = tensor_id``.
    None when there is nothing to do.
    """
    pairs = [(s, k) for s, k in zip(seeds, steps, strict=True) if k]
    if not pairs or numel == 0:
        return None
    nb = -(-numel // BLOCK)
    matrix = np.array([[k] for _, k in pairs], dtype=np.int32)
    scales = torch.tensor([scale], dtype=torch.float32, device=device)
    block_tensor = torch.zeros(nb, dtype=torch.int32, device=device)
    block_local = torch.arange(nb, dtype=torch.int32, device=device)
    return block_tensor, block_local, scales, [s for s, _ in pairs], matrix
