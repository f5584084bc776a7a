"""Simulated nodes for load and wire benchmarks: the real session on the real wire, no model.

A ``SimNode`` is a node without a model or a disk: the protocol session (protocol/session.py)
and the MQTT transport (transport.py) of a real node, with records of random bytes at a fixed
rate instead of ZO steps, frames sealed under the same latency bound, presence, wants answered
from memory. Many of them share one process and one event loop, so a machine can stand in for
hundreds of hosts; each is a real MQTT client of a real broker, and real ``seedswarm node``
processes can join the same run.

A simulated node listens as a real one does (daemon/node.py): what it subscribes to follows
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

from seedswarm.protocol.codec import encode_bundle
from seedswarm.protocol.manifest import Manifest
from seedswarm.protocol.records import Frame
from seedswarm.protocol.session import (
    FrameAccepted,
    Outgoing,
    Session,
    SessionConfig,
    VvRequested,
    WantReceived,
)
from seedswarm.protocol.signing import NodeKey
from seedswarm.protocol.topics import BUNDLES, RECORDS, Subscription

from .settings import BrokerAddress
from .transport import INCOMING_QUEUE, MqttTransport, TransportSpec


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


class SimNode:
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
        self.listening: list[Subscription] = self.session.subscriptions(time.monotonic())
        self.transport = MqttTransport(
            address,
            TransportSpec(
                client_id=f"seedswarm-{manifest.name}-{name}",
                subscriptions=self.listening,
                on_message=self._on_message,
                will=self.session.will(),
                aliases=(topics.records(name), topics.presence(name)),
                # a light node reads little of what it gets: a short queue, or a thousand of
                # them on one machine hold 4,096 messages each (~20 GB) when they fall behind
                incoming_queue=INCOMING_QUEUE if settings.full else 256,
            ),
            version=settings.mqtt_version,
            keepalive=int(min(60.0, max(5.0, settings.presence_interval))),
        )
        self._rng = random.Random(seed)
        # frames held, by author and first seq: (records, body as received)
        self._frames: defaultdict[str, dict[int, tuple[int, bytes]]] = defaultdict(dict)
        self._unsealed: list[int] = []
        self._oldest = 0.0
        self._origin: float | None = None  # when the rate's schedule starts (None: at once)
        self._go = asyncio.Event()
        self.produced = 0
        self.delivered = 0  # peers' records accepted
        self.via_relay = False  # listening to a relay's bundles (as of the last sync tick)
        self.switches = 0  # changes of subscriptions
        self._stop = asyncio.Event()

    def _on_message(self, topic: str, payload: bytes) -> None:
        if not self.s.full:
            if topic.startswith(self._records_topics):
                return  # counted by the transport, not read
            if topic.startswith(self._bundles_topics):
                payload = self._beat
        for event in self.session.receive(topic, payload, time.monotonic()):
            if isinstance(event, FrameAccepted):
                f = event.frame
                self._frames[f.node][f.first_seq] = (f.count, event.body)
                self.delivered += event.new_records
                self.clock.got(f)
            elif isinstance(event, WantReceived):
                w = event.want
                held = self._frames.get(w.node, {})
                bodies = [
                    body
                    for first, (count, body) in sorted(held.items())
                    if first < w.first + w.count and first + count > w.first
                ]
                self._publish(self.session.answer(w, bodies))
            elif isinstance(event, VvRequested):
                self.transport.publish(self.session.vv(event.requester))

    def _publish(self, messages: Sequence[Outgoing]) -> None:
        for m in messages:
            self.transport.publish(m)

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
            tg.create_task(self.transport.run(), name=f"{self.name}-transport")
            waits = [
                tg.create_task(self.transport.connected.wait(), name=f"{self.name}-connect"),
                tg.create_task(self._stop.wait(), name=f"{self.name}-stop"),
            ]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            if not self.transport.connected.is_set():
                self.transport.close()  # stopped before it ever connected
                return
            self._publish([self._presence()])
            jobs = [
                tg.create_task(self._steps(steps), name=f"{self.name}-steps"),
                tg.create_task(self._beats(), name=f"{self.name}-presence"),
                tg.create_task(self._sync(), name=f"{self.name}-sync"),
            ]
            await self._stop.wait()
            for job in jobs:
                job.cancel()
            self._flush()
            self._publish([self._presence(alive=False)])
            await self.transport.drain(10.0)
            self.transport.close()

    def _presence(self, alive: bool = True) -> Outgoing:
        return self.session.presence(steps=self.produced, loss=None, alive=alive)

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
        self._publish([self._presence()])

    def _flush(self) -> None:
        if not self._unsealed:
            return
        qs, self._unsealed = self._unsealed, []
        sealed = self.session.seal(qs)
        for x in sealed:
            self._frames[x.frame.node][x.frame.first_seq] = (x.frame.count, x.body)
        self.session.stored(sealed)
        for x in sealed:
            self.clock.sent(x.frame)
            self.transport.publish(x.message)

    async def _beats(self) -> None:
        while True:
            await asyncio.sleep(self.s.presence_interval)
            self._publish([self._presence()])

    async def _sync(self) -> None:
        """As a node's sync loop: gap filling (full nodes), and what to listen to."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if self.s.full:
                self.session.tick(now)
                if self.transport.connected.is_set():
                    self._publish(self.session.wants(now))
            self.via_relay = bool(self.session.relays(now))
            if (subs := self.session.subscriptions(now)) != self.listening:
                self.listening = subs
                self.transport.set_subscriptions(subs)
                self.switches += 1
            if self._unsealed and now - self._oldest >= self.s.max_latency:
                self._flush()


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
