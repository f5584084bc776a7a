"""The flusher (daemon/node/flusher.py) on a real session and a real SQLite store; what it
publishes is collected in a list (the driver's publish is the seam it is given).

``--max-latency`` is an hour here, so a request to seal now that the flusher forgets shows as
a test that waits for its safety net, not as a slow test: every flush below must come from a
request (a full frame, the last step, a snapshot's ``until_stored``), never from the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from seedswarm.daemon.node.flusher import Flusher
from seedswarm.daemon.store.log_store import SqliteLogStore, Stored, StoreThread
from seedswarm.protocol.events import Outgoing
from seedswarm.protocol.log import OrderedLog
from seedswarm.protocol.manifest import Manifest, TaskSpec
from seedswarm.protocol.session import Session, SessionConfig

pytestmark = pytest.mark.asyncio

MANIFEST = Manifest(name="t", model="tiny", base_hash="0" * 64, task=TaskSpec(kind="causal_lm"))
FRAME = 8  # records in a full frame
HOUR = 3600.0  # --max-latency: never reached in these tests
SAFETY = 60  # seconds: a safety net on a loaded machine


@dataclass
class Rig:
    session: Session
    store: StoreThread
    flusher: Flusher
    published: list[Outgoing]
    changed: asyncio.Event  # set on every publish

    def stored(self) -> int:
        """Own records written and published (a frame is published once it is written)."""
        return sum(m.records for m in self.published)


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with _rig(tmp_path) as r:
        yield r


class Clock:
    """The flusher's clock, moved by the test: the seconds between own steps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def _rig(tmp_path: Path, clock: Clock | None = None) -> AsyncIterator[Rig]:
    session = Session(MANIFEST, "me", config=SessionConfig(frame_records=FRAME))
    store = StoreThread(SqliteLogStore(tmp_path / "log.sqlite"), tmp_path / "log.sqlite")
    await store.call(store.store.bind, MANIFEST)
    published: list[Outgoing] = []
    changed = asyncio.Event()

    def publish(messages: Sequence[Outgoing]) -> None:
        published.extend(messages)
        changed.set()

    flusher = Flusher(
        session, store, publish, frame_records=FRAME, max_latency=HOUR,
        **({"clock": clock} if clock else {}),
    )  # fmt: skip
    task = asyncio.create_task(flusher.run())
    try:
        yield Rig(session, store, flusher, published, changed)
    finally:
        flusher.finish()
        async with asyncio.timeout(SAFETY):
            await task
        await asyncio.to_thread(store.close)


async def _until(rig: Rig, records: int) -> None:
    """Until ``records`` own records are stored and published."""
    async with asyncio.timeout(SAFETY):
        while True:
            if rig.stored() >= records:
                return
            rig.changed.clear()
            await rig.changed.wait()


async def _taken(rig: Rig) -> None:
    """Let the flusher run until it has taken the unsealed records and awaits the store (it
    needs one turn of the loop; a few are allowed)."""
    for _ in range(10):
        if not rig.flusher.statistics().unsealed:
            return
        await asyncio.sleep(0)
    pytest.fail("the flusher did not take the records")


async def test_a_full_frame_and_the_last_step_go_out_at_once(rig: Rig) -> None:
    rig.flusher.add([1] * 3)
    rig.flusher.add([2] * 5)  # a frame's worth
    await _until(rig, FRAME)
    rig.flusher.add([3, -3], now=True)  # the last step
    await _until(rig, FRAME + 2)
    assert len(rig.published) == 2
    stats = rig.flusher.statistics()
    assert (stats.unsealed, stats.frames, stats.records) == (0, 2, FRAME + 2)
    bodies = await rig.store.frames_for("me", 0, FRAME + 2)
    assert len(bodies) == 2  # written before they were published


async def test_a_frame_filled_while_the_last_one_is_written_goes_out_at_once(rig: Rig) -> None:
    """A frame fills while the flusher waits for the store to write the previous one: its
    request to seal outlives that flush."""
    rig.flusher.add([1] * FRAME)
    await _taken(rig)
    assert rig.stored() == 0  # still being written
    rig.flusher.add([2] * FRAME)
    await _until(rig, 2 * FRAME)
    assert len(rig.published) == 2


async def test_until_stored_seals_what_waits_without_waiting_for_the_latency(rig: Rig) -> None:
    """A snapshot asks for the own records it holds to be stored, right after the step that
    made them (before the flusher even looked at them), and while a flush is in flight; it
    returns once they are written (here: published, which follows the write), not once they
    are sealed into the session's log, which happens before the write."""
    rig.flusher.add([1, 2, 3])
    async with asyncio.timeout(SAFETY):
        await rig.flusher.until_stored(3)
    assert rig.stored() == 3
    rig.flusher.add([4] * FRAME)  # a full frame: taken to the store ...
    await _taken(rig)
    assert rig.stored() == 3  # still being written
    async with asyncio.timeout(SAFETY):
        rig.flusher.add([5])  # ... and one more record behind it
        await rig.flusher.until_stored(3 + FRAME + 1)
    assert rig.stored() == 3 + FRAME + 1
    assert len(rig.published) == 3


async def test_a_frame_waits_only_for_a_step_that_can_come_before_its_deadline(
    tmp_path: Path,
) -> None:
    """Steps slower than --max-latency (an hour, on the test's clock): each is sealed as it
    ends, since the next cannot join its frame in time; steps faster than it share a frame
    until it is full, as before. The first step, with no interval to go by, waits."""
    clock = Clock()
    async with _rig(tmp_path, clock) as rig:
        rig.flusher.add([1, 1])  # t = 0: the first step
        await asyncio.sleep(0.05)
        assert rig.stored() == 0  # waiting: it knows no interval yet
        clock.now = 2 * HOUR
        rig.flusher.add([2, 2])  # two hours later: the next would come after the deadline
        await _until(rig, 4)
        assert len(rig.published) == 1  # one frame: the waiting step and this one
        clock.now = 4 * HOUR
        rig.flusher.add([3, 3])  # the same pace: sealed as it ends
        await _until(rig, 6)
        assert len(rig.published) == 2
        for _ in range(3):  # now a step a second: they share a frame until it is full
            clock.now += 1.0
            rig.flusher.add([4, 4])
        await asyncio.sleep(0.05)
        assert rig.stored() == 6
        clock.now += 1.0
        rig.flusher.add([5, 5])  # the frame's eighth record
        await _until(rig, 6 + FRAME)
        assert [m.records for m in rig.published] == [4, 2, FRAME]


async def test_a_session_over_a_stored_log_counts_its_own_records_as_stored(
    tmp_path: Path,
) -> None:
    """A restart: the session is made from the log the store holds, so the own records in it
    are stored already and a snapshot's ``until_stored`` returns at once. Made the other way
    round (the log read into the session afterwards, as the node once did), the flusher that
    has ended says so instead of letting the snapshot wait forever."""
    path = tmp_path / "log.sqlite"
    store = StoreThread(SqliteLogStore(path), path)
    await store.call(store.store.bind, MANIFEST)
    try:
        first = Session(MANIFEST, "me", config=SessionConfig(frame_records=FRAME))
        sealed = first.seal([1] * 5)
        await store.append([Stored(s.frame, s.body) for s in sealed])

        def over_the_store(log: OrderedLog | None) -> tuple[Session, Flusher]:
            session = Session(MANIFEST, "me", config=SessionConfig(frame_records=FRAME), log=log)
            flusher = Flusher(session, store, lambda _: None, frame_records=FRAME, max_latency=HOUR)
            return session, flusher

        log = OrderedLog()
        await store.call(store.store.load_log, log)
        session, flusher = over_the_store(log)
        assert session.own_stored == 5
        flusher.finish()
        await flusher.run()  # nothing to seal: it ends at once
        async with asyncio.timeout(SAFETY):
            await flusher.until_stored(5)

        late, flusher = over_the_store(None)
        await store.call(store.store.load_log, late.log)
        assert (late.log.next_seq("me"), late.own_stored) == (5, 0)
        flusher.finish()
        await flusher.run()
        with pytest.raises(RuntimeError, match="flusher has ended"):
            async with asyncio.timeout(SAFETY):
                await flusher.until_stored(5)
    finally:
        await asyncio.to_thread(store.close)
