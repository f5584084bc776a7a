"""The node's step loop: peers' records applied, own steps taken, evaluations, snapshots,
and the curves (node/curves.py) of its steps and evaluations.

Every pass runs on the model thread (``ModelThread``), between passes nothing is in flight, so
what changes the model is ordered here and nowhere else:

  * retractions first (a third party's copies given back once their author is back);
  * then a pass: one own step with the peers' records that are ready (``replica.step``), or
    only those records (``replica.apply``). A record of a peer is ready once it is durable
    (``stored``: what the driver reports the store has) and continues that peer's prefix;
  * with ``--eval``, a pass ends exactly at the next evaluation point, so every node evaluates
    at the same record counts;
  * every ``--snapshot-every`` records, a snapshot (node/snapshotter.py), saved only once the
    node's own records in it are written (the flusher).

The own bytes of a step go to the flusher (node/flusher.py), which seals, stores and publishes
them. ``--steps`` bounds the own steps; SIGUSR2 (``finish``) makes the steps taken so far the
bound; the peers' records are applied either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from seedswarm.daemon.settings import NodeSettings
from seedswarm.model.grid import Headroom
from seedswarm.model.replica import Capture, Replica, StepOutcome, pending_records
from seedswarm.model.tasks import Examples
from seedswarm.protocol.events import Retracted
from seedswarm.protocol.log import OrderedLog
from seedswarm.protocol.vv import digest

from .curves import Curves
from .evaluation import EvalHistory, evaluate
from .flusher import Flusher
from .model_thread import ModelThread
from .progress import Stats
from .snapshotter import Snapshotter

log = logging.getLogger("seedswarm.node")

APPLY_BATCH = 4096  # peer records applied in one pass at most


@dataclass(frozen=True, slots=True)
class TrainerStatistics:
    applied: Mapping[str, int]  # the replica's version vector, as of its last pass
    own_steps: int  # own steps in the log (all sessions)
    steps_this_session: int
    max_steps: int  # -1: no limit
    step_rate: float  # own steps per second, recently
    record_rate: float  # records applied per second, recently
    seconds_each: float | None  # mean duration of the recent steps
    examples: int  # the batch the last own step drew (before one: the next step's)
    loss_recent: float | None
    loss_first: float | None
    restored_records: int  # at start-up, from a snapshot
    replayed_records: int  # at start-up, from the log past it
    headroom: Headroom | None  # of the state (a guaranteed bound), from the first pass on
    model_busy: bool
    uptime_s: float


class Trainer:
    def __init__(
        self,
        settings: NodeSettings,
        replica: Replica,
        model: ModelThread,
        log_: OrderedLog,
        flusher: Flusher,
        snapshots: Snapshotter,
        *,
        presence_due: Any,  # () -> None: what the presence says changed
        evals: EvalHistory | None = None,
        eval_examples: Examples | None = None,
        curves: Curves | None = None,
    ) -> None:
        self.settings = settings
        self.me = settings.node
        self.replica = replica
        self.model = model
        self.log = log_
        self.flusher = flusher
        self.snapshots = snapshots
        self._presence_due = presence_due
        self.evals = evals
        self._eval_examples = eval_examples
        self.curves = curves
        self.stats = Stats()
        self.max_steps = settings.steps
        self.applied: dict[str, int] = replica.vv  # the replica's vv, as of its last pass
        self.fingerprint_cache: tuple[str, str] = ("", "")  # (vv digest, fingerprint)
        self.durable: dict[str, int] = {}  # peer records the store has acknowledged
        self.joined = asyncio.Event()  # the join decided: stepping may start
        self.stop = asyncio.Event()
        self.done = asyncio.Event()
        self._retracted: list[Retracted] = []  # given back, not yet un-applied
        self._retractions_done = 0  # retractions the model reflects (un-applied or loaded)
        self._finish_requested = False
        self._wake = asyncio.Event()
        self._next_step_at = 0.0  # --step-interval: not before this (monotonic)
        self._eval_due = evals.next_due(sum(self.applied.values())) if evals else 0
        self.since_snapshot = 0
        self.stats.headroom = replica.headroom()  # before the model thread has any work

    # -- what others tell it ---------------------------------------------------------------------

    def stored(self, ends: Mapping[str, int], retracted: list[Retracted]) -> None:
        """Peers' records are durable up to ``ends`` now; ``retracted``: to give back."""
        for n, end in ends.items():
            if end:
                self.durable[n] = end
            else:
                self.durable.pop(n, None)
        self._retracted.extend(retracted)
        self._wake.set()

    def queued_retractions(self) -> int:
        """Retractions told (``stored``) and not yet un-applied."""
        return len(self._retracted)

    def forget_retractions(self, count: int) -> None:
        """The first ``count`` queued retractions are reflected already: a snapshot audited
        against the log after they happened was loaded (node/join.py)."""
        del self._retracted[:count]
        self._retractions_done += count

    @property
    def retractions_done(self) -> int:
        return self._retractions_done

    def request_stop(self) -> None:
        self.stop.set()
        self.joined.set()  # a trainer still waiting for the join sees the stop
        self._wake.set()

    def request_finish(self) -> None:
        """Take no more own steps, as if --steps had been reached; keep applying peers'
        records. The swarm launcher uses it (SIGUSR2) to stop in agreement."""
        self._finish_requested = True
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    # -- the loop --------------------------------------------------------------------------------

    @property
    def own_steps(self) -> int:
        """Own steps taken: own records over the records a step makes (K for FZOO)."""
        return self.applied.get(self.me, 0) // self.replica.engine.records_per_step

    def steps_left(self) -> bool:
        return self.joined.is_set() and (self.max_steps < 0 or self.own_steps < self.max_steps)

    async def run(self) -> None:
        try:
            await self.joined.wait()
            while not self.stop.is_set():
                # cleared before the pass looks for work, never after it: what arrives while
                # the pass is in flight (records, a stop) leaves it set, so the wait below
                # returns at once instead of sleeping through it
                self._wake.clear()
                if not await self._pass():
                    wait = self._next_step_at - time.monotonic() if self.steps_left() else None
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):  # the next step's time, or an event
                            await self._wake.wait()
        finally:
            self.done.set()
            self.flusher.finish()

    async def _pass(self) -> bool:
        """One pass over the weights, if there is work; False when there is none."""
        # between passes, so nothing is in flight on the model thread:
        await self._give_back()
        if self._finish_requested:
            self._finish_requested = False
            taken = self.own_steps
            if self.max_steps < 0 or self.max_steps > taken:
                self.max_steps = taken
                log.info("%s: finishing: no more own steps after %d", self.me, taken)
        limit = APPLY_BATCH
        if self.evals is not None:
            await self._maybe_evaluate()
            # given back while it evaluated: un-applied before the pass reads the log, which
            # no longer holds them (and may hold their author's copies already)
            await self._give_back()
        now = time.monotonic()
        stepping = self.steps_left() and now >= self._next_step_at
        if self.evals is not None:
            # end the pass at the next point, so that every node evaluates at it: the
            # peer records of a pass and the records of its own step land on it together
            room = self._eval_due - sum(self.applied.values())
            if stepping:
                room -= self.replica.engine.records_per_step
            limit = max(0, min(limit, room))
        ready = pending_records(self.log, self.applied, limit, upto=self.durable) if limit else []
        if stepping:
            self._next_step_at = now + self.settings.step_interval
            outcome: StepOutcome = await self.model.run(self.replica.step, ready)
            self.applied = dict(outcome.vv)
            self.stats.headroom = outcome.headroom
            self.stats.record_step(
                outcome.loss,
                outcome.seconds,
                own=self.own_steps,
                applied=sum(self.applied.values()),
                examples=outcome.examples,
            )
            if self.curves is not None:
                self.curves.train(self.own_steps, outcome.loss, unix_time=time.time())
            last = not self.steps_left()
            self.flusher.add(outcome.qs, now=last)  # the last step: publish it now
            if last:
                self._presence_due()
            done, stepped = len(ready) + len(outcome.qs), True
        elif ready:
            self.applied = dict(await self.model.run(self.replica.apply, ready))
            self.stats.headroom = await self.model.run(self.replica.headroom)
            done, stepped = len(ready), False
        else:
            return False
        self.stats.record_pass(done, stepped)
        self.since_snapshot += done
        if self.since_snapshot >= self.settings.snapshot_every:
            await self.snapshot()
        return True

    async def _give_back(self) -> None:
        """Un-apply what the log gave back (a third party's copies once their author is back,
        or a copy that contradicted its author's), in the order it was given back."""
        while self._retracted:
            event = self._retracted[0]
            self.applied = dict(
                await self.model.run(self.replica.retract, event.node, event.records)
            )
            del self._retracted[0]
            self._retractions_done += 1
            log.warning(
                "%s: gave back %d records of %s (seq %d on) that did not come from %s; asking "
                "%s for them",
                self.me, len(event.records), event.node, event.first_seq, event.node, event.node,
            )  # fmt: skip

    async def _maybe_evaluate(self) -> None:
        """Between passes: evaluate once the records applied reach the next point."""
        assert self.evals is not None
        assert self._eval_examples is not None
        applied = sum(self.applied.values())
        if applied < self._eval_due:
            return
        point = await self.model.run(
            evaluate, self.replica, self._eval_examples, self.replica.batch_size * 4
        )
        point = dataclasses.replace(point, records=self._eval_due)  # the count nodes share
        await asyncio.to_thread(self.evals.add, point)
        if self.curves is not None:
            self.curves.eval(point)
        log.info("%s: eval at %d records: %s", self.me, point.records, point.line())
        self._eval_due = self.evals.next_due(applied + 1)

    async def snapshot(self) -> None:
        await self._give_back()  # a snapshot never holds records the log gave back
        mark = self._retractions_done
        cap: Capture = await self.model.run(self.replica.capture)
        self.fingerprint_cache = (digest(cap.vv), cap.fingerprint)
        self.stats.headroom = cap.headroom  # measured from the state, not only bounded
        await self.flusher.until_stored(cap.vv.get(self.me, 0))  # own records stored first
        self.since_snapshot = 0
        if await self.snapshots.save(cap, mark):
            self._presence_due()

    # -- what it reports -------------------------------------------------------------------------

    async def fingerprint(self, *, fresh: bool) -> tuple[str, str, bool]:
        """(fingerprint, digest of the version vector it belongs to, stale?)."""
        vv_digest = digest(self.applied)
        cached_digest, cached = self.fingerprint_cache
        if cached_digest == vv_digest:
            return cached, vv_digest, False
        if fresh or not self.model.busy:
            vv, fp = await self.model.run(self.replica.fingerprint)
            self.fingerprint_cache = (digest(vv), fp)
            return fp, digest(vv), False
        return cached, cached_digest, True

    def statistics(self) -> TrainerStatistics:
        s = self.stats
        now = time.monotonic()
        step_rate, record_rate = s.rates(now)
        times = s.step_times
        return TrainerStatistics(
            applied=dict(self.applied),
            own_steps=self.own_steps,
            steps_this_session=s.steps,
            max_steps=self.max_steps,
            step_rate=step_rate,
            record_rate=record_rate,
            seconds_each=sum(times) / len(times) if times else None,
            examples=(
                s.examples
                if s.examples is not None
                else self.replica.batch_at(sum(self.applied.values()))
            ),
            loss_recent=s.recent_loss(),
            loss_first=s.first_loss,
            restored_records=s.restored_records,
            replayed_records=s.replayed_records,
            headroom=s.headroom,
            model_busy=self.model.busy,
            uptime_s=round(now - s.started, 3),
        )
