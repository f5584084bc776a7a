"""A replica: the engine, this node's training examples, and the one version vector of what
the model holds. Every command that steps or applies (``node``, ``train``, ``replay``,
``eval``) goes through it, so a new kind of step touches ``model/`` only.

Theory of operation
-------------------
The weights are a function of the set of records applied to the base (the exact grid makes
order and batching irrelevant), and that set is a version vector ``{node: next_seq}`` because
only contiguous per-node prefixes are ever applied. ``Replica.vv`` is that vector; nothing else
in the process keeps its own copy of what the model holds.

Invariants:
  * ``vv`` changes only together with the weights, in the same call, on the thread that owns
    the model (the daemon runs every method here on its model thread).
  * Records are applied only as continuations of ``vv``: a record whose seq is not the next
    one of its node is refused before anything changes (``advance``).
  * ``step`` applies the pending peer records and takes the own step in the same passes over
    the weights; its records are seqs ``vv[me] .. vv[me] + K - 1`` (``K =
    engine.records_per_step``), each with its own seed, and the batch is drawn from the first.
    Its size is the node's own (no part of a record's meaning): ``batch_size``, grown by up
    to ``batch_growth`` as the run's rate decays (``grown_batch``).
  * ``load`` trusts a snapshot only if its weights hash to the fingerprint it came with; a
    snapshot that does not leaves the weights as they were.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from seedswarm.protocol.log import OrderedLog
from seedswarm.protocol.records import Record

from .data import sample_batch
from .engine import Engine
from .errors import ModelError
from .grid import Headroom
from .tasks import Examples


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """One pass of the step loop: own records ``first_seq ..`` and the peer records applied."""

    first_seq: int
    qs: tuple[int, ...]
    loss: float
    applied: int  # peer records applied in the same pass
    seconds: float
    vv: Mapping[str, int]  # what the model holds afterwards (a copy)
    headroom: Headroom  # how far the state is from the end of its exact range
    examples: int  # the batch the step drew


@dataclass(frozen=True, slots=True)
class Capture:
    """Everything a snapshot needs, taken at one instant."""

    vv: Mapping[str, int]
    state: dict[str, torch.Tensor]  # CPU copies of the trainable tensors' state (int64)
    fingerprint: str
    headroom: Headroom  # measured from the state at this instant


class Replica:
    """The model of node ``node``: ``engine`` on its grid, at version vector ``vv``."""

    def __init__(
        self,
        engine: Engine,
        node: str,
        examples: Examples | None = None,
        *,
        batch_size: int = 16,
        batch_growth: float = 1.0,
    ) -> None:
        if batch_growth < 1.0:
            raise ValueError(f"batch_growth is at least 1, got {batch_growth}")
        self.engine = engine
        self.node = node
        self.examples = examples  # None: this replica only applies (replay, eval)
        self.batch_size = batch_size
        self.batch_growth = batch_growth
        self._vv: dict[str, int] = {}

    @property
    def vv(self) -> dict[str, int]:
        """What the model holds (a copy)."""
        return dict(self._vv)

    @property
    def next_own_seq(self) -> int:
        return self._vv.get(self.node, 0)

    # -- the step loop -----------------------------------------------------------------------

    def step(self, pending: Sequence[Record] = ()) -> StepOutcome:
        """Apply ``pending`` and take the next own step, in the same passes over the weights."""
        if self.examples is None:
            raise ModelError("this replica has no training examples: it cannot step")
        t0 = time.monotonic()
        self._check(pending)
        first = self.next_own_seq
        e = self.engine
        seeds = [e.seed_of(self.node, first + i) for i in range(e.records_per_step)]
        held = sum(self._vv.values()) + len(pending)  # what the step's view holds
        size = self.batch_at(held)
        idx = sample_batch(seeds[0], len(self.examples), size)
        batch = e.task_model.make_batch(self.examples.subset(idx))
        result = e.step(seeds, batch, pending, held=held)
        _advance(self._vv, pending)
        self._vv[self.node] = first + len(result.qs)
        return StepOutcome(
            first,
            result.qs,
            result.loss,
            len(pending),
            time.monotonic() - t0,
            self.vv,
            e.headroom(),
            size,
        )

    def batch_at(self, held: int) -> int:
        """The examples of a step taken on a model that holds ``held`` records."""
        if self.batch_growth == 1.0:
            return self.batch_size
        return grown_batch(self.batch_size, self.batch_growth, self.engine.rate_fraction(held))

    def apply(self, records: Sequence[Record], *, batch: int = 256) -> Mapping[str, int]:
        """Apply peer records (contiguous per node, continuing ``vv``); returns the new vv."""
        self._check(records)
        self.engine.apply(records, batch=batch)
        _advance(self._vv, records)
        return self.vv

    def retract(self, node: str, records: Sequence[Record]) -> Mapping[str, int]:
        """Take back ``records`` (a suffix of ``node``'s, from the log's ``retract``): the
        applied ones are un-applied, exactly (the grid makes ``-q`` undo ``q``), and ``vv``
        ends where they began. Returns the new vv."""
        if not records:
            return self.vv
        first = records[0].seq
        held = self._vv.get(node, 0)
        undo = [Record(r.node, r.seq, -r.q, r.clock) for r in records if r.seq < held]
        self.engine.apply(undo)
        if first < held:
            self._vv[node] = first
            if not first:
                del self._vv[node]
        return self.vv

    def apply_rate(self, n: int = 64) -> float:
        """Records per second this replica applies (in batches of ``n``), measured on made-up
        records that are taken back at once: the weights come back bit for bit."""
        probe = [Record("probe", i, 1 + i % 126, 0) for i in range(n)]
        t0 = time.monotonic()
        self.engine.apply(probe, batch=n)
        seconds = time.monotonic() - t0
        self.engine.apply([Record(r.node, r.seq, -r.q, 0) for r in probe], batch=n)
        return n / max(seconds, 1e-9)

    def catch_up(self, log: OrderedLog, *, batch: int = 256) -> int:
        """Apply every record ``log`` holds that the model does not; returns how many."""
        total = 0
        while recs := pending_records(log, self._vv, batch * 16):
            self.apply(recs, batch=batch)
            total += len(recs)
        return total

    def _check(self, records: Iterable[Record]) -> None:
        _advance(dict(self._vv), records)  # on a copy: refuse before anything changes

    # -- state -------------------------------------------------------------------------------

    def headroom(self) -> Headroom:
        """How far the state is from the end of its exact range (a guaranteed bound, cheap)."""
        return self.engine.headroom()

    def fingerprint(self) -> tuple[dict[str, int], str]:
        """The weights' hash and the version vector it belongs to, together."""
        return self.vv, self.engine.fingerprint()

    def capture(self) -> Capture:
        e = self.engine
        return Capture(self.vv, e.trainable_state(), e.fingerprint(), e.headroom(measure=True))

    def load(self, state: dict[str, torch.Tensor], vv: Mapping[str, int], fingerprint: str) -> bool:
        """Take a snapshot's state as the state at ``vv``, if it hashes to ``fingerprint``.

        Returns False (and changes nothing) when they do not or do not fit the run. The hash
        is taken of ``state`` before it is loaded, so a refused snapshot costs no copy.
        """
        e = self.engine
        try:
            if e.fingerprint_of(state) != fingerprint:
                return False
        except ModelError:
            return False
        e.load_trainable_state(state)
        self._vv = {n: s for n, s in vv.items() if s > 0}
        return True

    def evaluate(self, examples: Examples, *, batch_size: int = 64) -> dict[str, float]:
        return self.engine.evaluate(examples, batch_size=batch_size)


def grown_batch(base: int, growth: float, fraction: float) -> int:
    """The batch of a step whose learning rate is ``fraction`` of the run's peak: ``base``
    examples times ``min(growth, 1 / fraction)`` (to a multiple of 8 once ``base`` is 8 or
    more), so that as a decaying rate settles the weights the sampling noise in each record
    falls with it (docs/LEARNING.md, "A batch that grows"). A node's own choice: no byte on
    the wire, and replay never draws a batch."""
    factor = growth if fraction * growth <= 1.0 else 1.0 / fraction
    size = base * factor
    grain = 8 if base >= 8 else 1
    return max(base, min(int(base * growth), grain * round(size / grain)))


def pending_records(
    log: OrderedLog,
    applied: Mapping[str, int],
    limit: int | None = None,
    *,
    upto: Mapping[str, int] | None = None,
) -> list[Record]:
    """Held records not yet applied, node by node, at most ``limit``; only below ``upto`` (a
    version vector, e.g. what is durable) when given."""
    out: list[Record] = []
    for node, end in log.held().items():
        if upto is not None:
            end = min(end, upto.get(node, 0))
        start = applied.get(node, 0)
        if start < end:
            take = end if limit is None else min(end, start + limit - len(out))
            out.extend(log.records(node, start, take))
            if limit is not None and len(out) >= limit:
                break
    return out


def _advance(vv: dict[str, int], records: Iterable[Record]) -> None:
    for r in records:
        if r.seq != vv.get(r.node, 0):
            raise ModelError(
                f"record {r.node} seq {r.seq} does not continue what the model holds "
                f"({vv.get(r.node, 0)})"
            )
        vv[r.node] = r.seq + 1
