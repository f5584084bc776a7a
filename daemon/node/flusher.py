"""The node's own records on their way out: sealed into frames, stored durably, published.

The trainer hands over the bytes of each own step (``add``); the flusher seals them into frames
once a frame is full or its oldest record has waited ``--max-latency`` seconds: few, full frames
where steps are fast, a bound on the delay where they are slow. A frame waits only for records
that can still join it: when the next step, expected one step interval (the last one) after
this one, would come after the frame's deadline, the frame is sealed at once. A node that steps
slower than ``--max-latency`` so publishes each step as it ends, in the same frames it would
have sent a latency later — the same bytes, and records of others that are fresher by up to
``--max-latency`` at every node (the staleness ``seedswarm bench scale`` measures). Each frame is written to the
store before it is published, so a crash can never make the node reuse a seq with another byte
(an own record that was applied but not yet written is lost with the crash, and nobody saw it).

A request to seal now (a full frame, the last step, a snapshot waiting in ``until_stored``) is
an event that only the flush which takes the records clears, so a request made while another
flush is being written is not lost with it: the next round seals at once instead of waiting
out ``--max-latency``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from seedswarm.daemon.store.log_store import Stored, StoreThread
from seedswarm.protocol.events import Outgoing
from seedswarm.protocol.session import Session


def next_step_too_late(at: float, interval: float | None, deadline: float) -> bool:
    """Whether a frame open until ``deadline`` should be sealed as the step ending ``at`` hands
    over its records: the next step is expected one ``interval`` (the last one) later, and if
    that is past the deadline nothing more can join the frame, so waiting would only age its
    records. With no interval yet (a first step), it waits."""
    return interval is not None and at + interval >= deadline


@dataclass(frozen=True, slots=True)
class FlusherStatistics:
    unsealed: int  # own records stepped but not yet written and published
    frames: int  # own frames written and published
    records: int  # own records in them


class Flusher:
    def __init__(
        self,
        session: Session,
        store: StoreThread,
        publish: Callable[[Sequence[Outgoing]], None],
        *,
        frame_records: int,
        max_latency: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session = session
        self.store = store
        self.publish = publish  # the driver's: to the transport's outbox
        self.frame_records = frame_records
        self.max_latency = max_latency
        self._clock = clock
        self._last_add: float | None = None  # when the previous own step was handed over
        self._interval: float | None = None  # the time between the last two own steps
        self._unsealed: list[int] = []  # own bytes applied but not yet sealed into frames
        self._oldest = 0.0  # when the first of them was stepped
        self._wake = asyncio.Event()  # own bytes are waiting to be sealed
        self._full = asyncio.Event()  # seal now (a frame's worth, the last step, a snapshot);
        # cleared only by the flush that takes the records
        self._durable = asyncio.Event()  # a flush reached the store
        self._last = False  # the trainer took its last step: seal what is left and end
        self.done = asyncio.Event()
        self._frames = self._records = 0

    def add(self, qs: Sequence[int], *, now: bool = False) -> None:
        """The bytes of an own step, in seq order; ``now``: seal them without waiting."""
        at = self._clock()
        if self._last_add is not None:
            self._interval = at - self._last_add
        self._last_add = at
        if not self._unsealed:
            self._oldest = at
        self._unsealed.extend(qs)
        self._wake.set()
        late = next_step_too_late(at, self._interval, self._oldest + self.max_latency)
        if now or late or len(self._unsealed) >= self.frame_records:
            self._full.set()

    def finish(self) -> None:
        """No more own steps: seal what is left, then end."""
        self._last = True
        self._wake.set()

    async def until_stored(self, own_end: int) -> None:
        """Until the node's own records below ``own_end`` are written to the store (a snapshot
        that holds them is saved only after that): the session's ``own_stored``, not its log,
        which holds the frame of a flush in flight before the store has it."""
        while self.session.own_stored < own_end:
            if self.done.is_set():  # nothing would ever store them: a bug, never a hang
                raise RuntimeError(
                    f"own records {self.session.own_stored}..{own_end} are not in the store "
                    "and the flusher has ended"
                )
            if self._unsealed:  # else they are in the flush being written
                self._full.set()
            self._durable.clear()
            await self._durable.wait()

    async def run(self) -> None:
        while True:
            if not self._unsealed:
                if self._last:
                    break
                self._wake.clear()
                await self._wake.wait()
                continue
            due = self._oldest + self.max_latency - self._clock()
            if due > 0 and not self._last:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(due):
                        await self._full.wait()
            await self._flush()
        self.done.set()

    async def _flush(self) -> None:
        qs, self._unsealed = self._unsealed, []
        self._full.clear()  # what was asked for is in this flush
        sealed = self.session.seal(qs)
        await self.store.append([Stored(s.frame, s.body) for s in sealed])
        self.session.stored(sealed)  # own_stored: what the store holds
        self._durable.set()
        self.publish([s.message for s in sealed])
        self._frames += len(sealed)
        self._records += len(qs)

    def statistics(self) -> FlusherStatistics:
        return FlusherStatistics(
            unsealed=len(self._unsealed), frames=self._frames, records=self._records
        )
