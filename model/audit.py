"""The audit of a snapshot: the exact state of a few elements, from a known state and the log.

A record's effect on element ``e`` of tensor ``t`` is ``-du_t(q) · z(e)`` grid steps, with
``z`` from Philox at a counter that names the tensor and the element's block (docs/PROTOCOL.md
§4-5). So the state of any element after a set of records follows from its state before and the
records alone, without touching the rest of the model: a joiner picks blocks of its own
(secret) choice, computes their exact state, and compares it with a donor's snapshot (whose
tensors are the state: int64 grid steps). The arithmetic is the numpy reference
(protocol/philox.py) in int64 with wrap-around, not the backend that made the snapshot, and it
is exact for the same reason replay is: integer sums.

Cost: one Philox evaluation per record and audited block (for a low-rank matrix, one per row
block and column block the audited elements touch), independent of the model's size. Detection: a snapshot that differs
from the truth in ``d`` of the ``B`` blocks escapes an audit of ``k`` blocks (drawn without
replacement) with probability C(B-d, k) / C(B, k) (about ``(1 - d/B)^k``); one altered element
is caught with probability ``k / B``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from seedswarm.protocol.philox import (
    BLOCK,
    STREAM_LOWRANK_A,
    STREAM_LOWRANK_B,
    STREAM_SIGNS,
    philox4x32,
)
from seedswarm.protocol.records import Record

from .engine import Engine


@dataclass(frozen=True, slots=True)
class Block:
    """Elements ``BLOCK*block .. BLOCK*block + BLOCK - 1`` of trainable tensor ``tensor``."""

    tensor: int
    block: int


@dataclass(frozen=True, slots=True)
class AuditResult:
    blocks: int  # audited
    elements: int
    mismatches: tuple[Block, ...]

    @property
    def passed(self) -> bool:
        return not self.mismatches


def total_blocks(engine: Engine) -> int:
    return sum(-(-g.numel // BLOCK) for g in engine.grids)


def choose_blocks(engine: Engine, k: int, rng: random.Random) -> list[Block]:
    """``k`` distinct blocks, uniform over all blocks of the trainable tensors."""
    sizes = [-(-g.numel // BLOCK) for g in engine.grids]
    total = sum(sizes)
    picks = sorted(rng.sample(range(total), min(k, total)))
    out, t, start = [], 0, 0
    for p in picks:
        while p >= start + sizes[t]:
            start += sizes[t]
            t += 1
        out.append(Block(t, p - start))
    return out


def _words(
    seeds: npt.NDArray[np.uint64], block: int, tensor: int, stream: int
) -> npt.NDArray[np.uint32]:
    """(R, 4) Philox words of counter (block, tensor, 0, stream), one key per seed."""
    ctr = np.zeros((len(seeds), 4), dtype=np.uint32)
    ctr[:, 0] = block
    ctr[:, 1] = tensor
    ctr[:, 3] = stream
    keys = np.stack([seeds & np.uint64(0xFFFFFFFF), seeds >> np.uint64(32)], axis=1)
    return philox4x32(ctr, keys.astype(np.uint32))


def _bits(words: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint8]:
    """(R, 128) sign bits of the words' block: bit j of word k is element 32k + j (z = 1 - 2 bit)."""
    little = np.ascontiguousarray(words, dtype="<u4").view(np.uint8)  # (R, 16), byte 4k+i of word k
    return np.unpackbits(little, axis=1, bitorder="little")


def _vector(
    seeds: npt.NDArray[np.uint64], index: npt.NDArray[np.int64], tensor: int, stream: int
) -> npt.NDArray[np.int8]:
    """(R, len(index)) entries ``index`` of a low-rank sign vector (a: rows, b: columns)."""
    out = np.empty((len(seeds), len(index)), dtype=np.int8)
    for blk in np.unique(index // BLOCK):
        at = index // BLOCK == blk
        bits = _bits(_words(seeds, int(blk), tensor, stream))  # (R, 128)
        out[:, at] = 1 - 2 * bits[:, index[at] % BLOCK].astype(np.int8)
    return out


@dataclass(frozen=True, slots=True)
class _Records:
    """What every audited block needs of the records, computed once: (R,) seeds and the (R, T)
    grid steps ``-du_t(q)`` of each record on each trainable tensor."""

    seeds: npt.NDArray[np.uint64]
    steps: npt.NDArray[np.int64]

    @staticmethod
    def of(engine: Engine, records: Sequence[Record]) -> _Records:
        live = [r for r in records if r.q]  # q = 0 moves nothing
        seeds = np.array([engine.seed_of(r.node, r.seq) for r in live], dtype=np.uint64)
        if not live:
            return _Records(seeds, np.zeros((0, len(engine.grids)), dtype=np.int64))
        steps = engine.layout.steps_matrix([(0, 0, r.q) for r in live]).astype(np.int64)
        return _Records(seeds, steps)


def expected_block(
    engine: Engine, block: Block, now: torch.Tensor, records: Sequence[Record] | _Records
) -> npt.NDArray[np.int64]:
    """The exact state of ``block`` after ``records``, from its state ``now`` (int64 grid
    steps, the block's valid elements) before them."""
    recs = records if isinstance(records, _Records) else _Records.of(engine, records)
    grid = engine.grids[block.tensor]
    n = len(now)
    total = np.zeros(n, dtype=np.int64)
    matrix = next((m for m in engine.layout.matrices if m.tensor_id == block.tensor), None)
    if len(recs.seeds) and matrix is not None:
        # a low-rank direction: z[i*cols + j] = a[i] * b[j] (docs/PROTOCOL.md §4)
        steps = recs.steps[:, block.tensor]  # (R,)
        e = np.arange(block.block * BLOCK, block.block * BLOCK + n)
        a = _vector(recs.seeds, e // matrix.cols, grid.tensor_id, STREAM_LOWRANK_A)  # (R, n)
        b = _vector(recs.seeds, e % matrix.cols, grid.tensor_id, STREAM_LOWRANK_B)
        total = np.einsum("r,rj->j", steps, a * b, dtype=np.int64)
    elif len(recs.seeds):
        steps = recs.steps[:, block.tensor]  # (R,)
        bits = _bits(_words(recs.seeds, block.block, grid.tensor_id, STREAM_SIGNS))[:, :n]
        # sum_r steps_r * (1 - 2 bit_r) = sum(steps) - 2 * steps @ bits, exact in int64. einsum,
        # not a BLAS product: no float rounding, and no BLAS threads fighting the model's
        dot = np.einsum("r,rj->j", steps, bits, dtype=np.int64)
        total = int(steps.sum()) - 2 * dot
    with np.errstate(over="ignore"):  # the state wraps modulo 2**64 (docs/PROTOCOL.md §5)
        return now.numpy().astype(np.int64) + total


def audit(
    engine: Engine,
    state: dict[str, torch.Tensor],
    records: Sequence[Record],
    blocks: Sequence[Block],
) -> AuditResult:
    """Compare ``state`` (a snapshot's tensors: int64 grid steps) at ``blocks`` with the
    engine's state now plus ``records``, exactly. The engine is left as it was."""
    recs = _Records.of(engine, records)
    mismatches = []
    elements = 0
    for b in blocks:
        name, param = engine.trainable[b.tensor]
        lo = b.block * BLOCK
        hi = min(lo + BLOCK, param.numel())
        elements += hi - lo
        theirs = state.get(name)
        if theirs is None or theirs.shape != param.shape or theirs.dtype != torch.int64:
            mismatches.append(b)  # not even the run's tensor
            continue
        off = engine.layout.offsets[b.tensor]
        now = engine.state[off + lo : off + hi].to("cpu")
        want = expected_block(engine, b, now, recs)
        got = theirs.reshape(-1)[lo:hi].numpy()
        if not np.array_equal(want, got):
            mismatches.append(b)
    return AuditResult(len(blocks), elements, tuple(mismatches))
