"""Simulated nodes for load and wire benchmarks: the real session on the real wire, no model.

A ``SimNode`` is a node without a model or a disk: the session driver of every peer
(daemon/peer/driver.py: the protocol session and the transport of a real node) on frames kept
in memory, with records of random bytes at a fixed rate instead of ZO steps, frames sealed
under the same latency bound, presence, wants answered from memory. Many of them share one process and one event loop, so a machine can stand in for
hundreds of hosts; each is a real MQTT client of a real broker, and real ``seedswarm node``
processes can join the same run.

A simulated node listens as a real one does (the driver): what it subscribes to follows
``Session.subscriptions(now)``, so while a relay is up it listens to the relay's bundles
instead of to every node's records and presence, and to every node again once none is up.

A *light* node (``SimSettings.full`` False) publishes and subscribes exactly as a full one, so
the broker does the same work for it, but it reads only what decides what it listens to: the
presence messages it gets and, of a relay's bundle, only that it came. It holds no peer's
records and asks for none; it answers wants for its own. The reason: every node checks every
record, N² per frame interval in all, which N hosts share in a real swarm but one machine
cannot (about 13 µs a record in the session: 1,000 nodes at one frame per second would need
13 cores). So a bench of N nodes on one machine runs a few full nodes, which measure the lag
and the loss, among light ones that load the broker.

``Clock`` gives every frame's publication time to the receivers in the same process, which is
how the end-to-end lag (publish to receipt) is measured; with ``Receipts`` it keeps every
receipt instead, for lags across processes (CLOCK_MONOTONIC is one clock for the machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from array import array
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from seedswarm.daemon.peer.driver import DriverConfig, Received, SessionDriver
from seedswarm.daemon.settings import BrokerAddress
from seedswarm.daemon.store.log_store import Stored
from seedswarm.daemon.transport import INCOMING_QUEUE, keepalive_for, transport_factory
from seedswarm.protocol.codec import encode_bundle
from seedswarm.protocol.events import Outgoing
from seedswarm.protocol.manifest import Manifest
from seedswarm.protocol.records import Frame
from seedswarm.protocol.session import Session, SessionConfig
from seedswarm.protocol.signing import NodeKey
from seedswarm.protocol.topics import BUNDLES, RECORDS


@dataclass(slots=True)
class Receipts:
    """Every frame a process's nodes took: its author, first seq and when (monotonic)."""

    names: dict[str, int] = field(default_factory=dict)
    node: array[int] = field(default_factory=lambda: array("l"))
    seq: array[int] = field(default_factory=lambda: array("q"))
    at: array[float] = field(default_factory=lambda: array("d"))

    def add(self, node: str, seq: int, at: float) -> None:
        self.node.append(self.names.setdefault(node, len(self.names)))
        self.seq.append(seq)
        self.at.append(at)


@dataclass(slots=True)
class Clock:
    """When each frame was published, for the receivers' lag (shared within a process)."""

    published: dict[tuple[str, int], float] = field(default_factory=dict)
    lags: list[float] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # a record made or received
    receipts: Receipts | None = None  # keep every receipt (then no ``lags``)

    def sent(self, frame: Frame) -> None:
        self.published[(frame.node, frame.first_seq)] = time.monotonic()

    def got(self, frame: Frame) -> None:
        now = time.monotonic()
        if self.receipts is not None:
            self.receipts.add(frame.node, frame.first_seq, now)
        else:
            at = self.published.get((frame.node, frame.first_seq))
            if at is not None:
                self.lags.append(now - at)
        self.changed.set()


@dataclass(frozen=True, slots=True)
class SimSettings:
    rate: float  # own records per second
    max_latency: float  # seconds an own record may wait before its frame goes out
    presence_interval: float = 60.0
    frame_records: int = 1024
    use_relays: bool = True  # listen to a relay's bundles while one is up, as nodes do
    full: bool = True  # False: a light node (the module docstring)
    mqtt_version: str = "5"


class _Memory:
    """A simulated node's frames, kept in memory: the driver's ``Holder``, kept as the log store
    keeps them (daemon/store/log_store.py)."""

    def __init__(self) -> None:
        # frames held, by author and first seq: (records, body as received, provisional)
        self.frames: defaultdict[str, dict[int, tuple[int, bytes, bool]]] = defaultdict(dict)

    def keep(self, frame: Frame, body: bytes, provisional: bool = False) -> None:
        self.frames[frame.node][frame.first_seq] = (frame.count, body, provisional)

    async def append(self, frames: Sequence[Stored]) -> None:
        for s in frames:
            self.keep(s.frame, s.body, s.provisional)

    async def retract(self, node: str, first: int) -> None:
        held = self.frames.get(node, {})
        for f in [f for f, (n, _, prov) in held.items() if f + n > first and (prov or f >= first)]:
            del held[f]

    async def frames_for(self, node: str, first: int, count: int) -> list[bytes]:
        held = self.frames.get(node, {})
        return [
            body for f, (n, body, _) in sorted(held.items()) if f < first + count and f + n > first
        ]


class SimNode:
    """A session driver (daemon/peer/driver.py) on an in-memory holder, writing random records
    at a rate: what is its own is the load accounting (``produced``, ``delivered``, the clock)."""

    def __init__(
        self,
        name: str,
        manifest: Manifest,
        address: BrokerAddress,
        settings: SimSettings,
        *,
        clock: Clock,
        key: NodeKey | None = None,
        seed: int = 0,
    ) -> None:
        self.name = name
        self.s = settings
        self.clock = clock
        self.session = Session(
            manifest,
            name,
            key=key,
            config=SessionConfig(
                frame_records=settings.frame_records,
                peer_timeout=3 * settings.presence_interval,
                use_relays=settings.use_relays,
            ),
        )
        topics = self.session.topics
        self._records_topics = f"{topics.base}/{RECORDS}/"
        self._bundles_topics = f"{topics.base}/{BUNDLES}/"
        # a light node's stand-in for a relay's bundle: one entry, its own will (which its
        # session ignores), so the session learns that the relay spoke and nothing else
        self._beat = encode_bundle([(name, self.session.will().payload)])
        self._memory = _Memory()
        self.driver = SessionDriver(
            self.session,
            transport_factory(
                address, version=settings.mqtt_version,
                keepalive=keepalive_for(settings.presence_interval),
            ),
            self._memory,
            self,
            DriverConfig(
                presence_interval=settings.presence_interval,
                fill_gaps=settings.full,  # a light node holds no peer's records, asks for none
                # a light node reads little of what it gets: a short queue, or a thousand of
                # them on one machine hold 4,096 messages each (~20 GB) when they fall behind
                incoming_queue=INCOMING_QUEUE if settings.full else 256,
                admit=None if settings.full else self._admit,
            ),
            client_id=f"seedswarm-{manifest.name}-{name}",
        )  # fmt: skip
        self.transport = self.driver.transport
        self._rng = random.Random(seed)
        self._unsealed: list[int] = []
        self._oldest = 0.0
        self._origin: float | None = None  # when the rate's schedule starts (None: at once)
        self._go = asyncio.Event()
        self.produced = 0
        self.delivered = 0  # peers' records accepted
        self._stop = asyncio.Event()

    @property
    def via_relay(self) -> bool:
        """Listening to a relay's bundles (as of the last sync tick)."""
        return bool(self.driver.relays)

    def _admit(self, topic: str, payload: bytes) -> bytes | None:
        """A light node: a frame is counted by the transport, not read; of a relay's bundle
        only that it came."""
        if topic.startswith(self._records_topics):
            return None
        if topic.startswith(self._bundles_topics):
            return self._beat
        return payload

    # -- the Role of the driver ------------------------------------------------------------------

    def presence(self, *, alive: bool) -> Outgoing:
        return self.session.presence(steps=self.produced, loss=None, alive=alive)

    def received(self, batch: Received) -> None:
        for event in batch.accepted:
            self.delivered += event.new_records
            self.clock.got(event.frame)

    # -- running ---------------------------------------------------------------------------------

    def begin(self, origin: float) -> None:
        """Start writing records (``run(hold=True)``), on a schedule from ``origin``
        (monotonic seconds): record i is due at ``origin + (i + 1) / rate``."""
        self._origin = origin
        self._go.set()

    def stop(self) -> None:
        self._stop.set()

    async def run(self, *, steps: int, hold: bool = False) -> None:
        """Write ``steps`` records at the rate (once connected; with ``hold``, from
        ``begin()``), then keep listening until ``stop()``."""
        if not hold:
            self._go.set()
        async with asyncio.TaskGroup() as tg:
            self.driver.start(tg)
            waits = [
                tg.create_task(self.driver.connected.wait(), name=f"{self.name}-connect"),
                tg.create_task(self._stop.wait(), name=f"{self.name}-stop"),
            ]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            if not self.driver.connected.is_set():
                await self.driver.stop(0.0)  # stopped before it ever connected: no goodbye
                return
            jobs = [
                tg.create_task(self._steps(steps), name=f"{self.name}-steps"),
                tg.create_task(self._latency(), name=f"{self.name}-latency"),
            ]
            await self._stop.wait()
            for job in jobs:
                job.cancel()
            self._flush()
            await self.driver.stop(10.0)

    async def _steps(self, steps: int) -> None:
        await self._go.wait()
        start = time.monotonic() if self._origin is None else self._origin
        for i in range(steps):
            # on the rate's schedule, so a late wake-up does not slow the rate down
            await asyncio.sleep(max(0.0, start + (i + 1) / self.s.rate - time.monotonic()))
            if not self._unsealed:
                self._oldest = time.monotonic()
            self._unsealed.append(self._rng.randint(-127, 127))
            self.produced += 1
            self.clock.changed.set()
            if len(self._unsealed) >= self.s.frame_records or (
                time.monotonic() - self._oldest >= self.s.max_latency
            ):
                self._flush()
        self._flush()
        self.driver.presence_due()

    async def _latency(self) -> None:
        """Records that waited ``max_latency`` go out even between two steps."""
        while True:
            await asyncio.sleep(1.0)
            if self._unsealed and time.monotonic() - self._oldest >= self.s.max_latency:
                self._flush()

    def _flush(self) -> None:
        if not self._unsealed:
            return
        qs, self._unsealed = self._unsealed, []
        sealed = self.session.seal(qs)
        for x in sealed:
            self._memory.keep(x.frame, x.body)
        self.session.stored(sealed)
        for x in sealed:
            self.clock.sent(x.frame)
        self.driver.publish([x.message for x in sealed])


async def run_sims(
    nodes: Sequence[SimNode],
    clock: Clock,
    *,
    steps: int,
    settle: float,
    patience: float,
    before_stop: Callable[[], None] | None = None,
) -> bool:
    """Run ``nodes`` until each wrote ``steps`` records and every record reached every node
    (True; False after ``patience`` seconds), then ``settle`` seconds more, then (after
    ``before_stop``) stop them."""
    total = steps * len(nodes)

    def done() -> bool:
        return all(n.produced >= steps and n.delivered >= total - steps for n in nodes)

    async with asyncio.TaskGroup() as tg:
        for n in nodes:
            tg.create_task(n.run(steps=steps), name=f"sim-{n.name}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(patience):
                while not done():
                    clock.changed.clear()
                    await clock.changed.wait()
        complete = done()
        await asyncio.sleep(settle)
        if before_stop is not None:
            before_stop()
        for n in nodes:
            n.stop()
    return complete
