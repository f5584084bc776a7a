"""Simulated nodes for load and wire benchmarks: the real session on the real wire, no model.

A ``SimNode`` is a node without a model or a disk: the protocol session (protocol/session.py)
and the MQTT transport (transport.py) of a real node, with records of random bytes at a fixed
rate instead of ZO steps, frames sealed under the same latency bound, presence, wants answered
from memory. Many of them share one process and one event loop, so a machine can stand in for
hundreds of hosts; each is a real MQTT client of a real broker, and real ``seedswarm node``
processes can join the same run.

``Clock`` gives every frame's publication time to the receivers in the same process, which is
how the end-to-end lag (publish to receipt) is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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

from .settings import BrokerAddress
from .transport import MqttTransport, TransportSpec


@dataclass(slots=True)
class Clock:
    """When each frame was published, for the receivers' lag (shared within a process)."""

    published: dict[tuple[str, int], float] = field(default_factory=dict)
    lags: list[float] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # a record made or received

    def sent(self, frame: Frame) -> None:
        self.published[(frame.node, frame.first_seq)] = time.monotonic()

    def got(self, frame: Frame) -> None:
        at = self.published.get((frame.node, frame.first_seq))
        if at is not None:
            self.lags.append(time.monotonic() - at)
        self.changed.set()


@dataclass(frozen=True, slots=True)
class SimSettings:
    rate: float  # own records per second
    max_latency: float  # seconds an own record may wait before its frame goes out
    presence_interval: float = 60.0
    frame_records: int = 1024
    records: bool = True  # subscribe to records/+ (False: to relays' bundles only)
    bundles: bool = False
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
                frame_records=settings.frame_records, peer_timeout=3 * settings.presence_interval
            ),
        )
        topics = self.session.topics
        self.transport = MqttTransport(
            address,
            TransportSpec(
                client_id=f"seedswarm-{manifest.name}-{name}",
                subscriptions=topics.subscriptions(
                    name, records=settings.records, bundles=settings.bundles
                ),
                on_message=self._on_message,
                will=self.session.will(),
                aliases=(topics.records(name), topics.presence(name)),
            ),
            version=settings.mqtt_version,
            keepalive=int(min(60.0, max(5.0, settings.presence_interval))),
        )
        self._rng = random.Random(seed)
        self._store: dict[tuple[str, int, int], bytes] = {}
        self._unsealed: list[int] = []
        self._oldest = 0.0
        self.produced = 0
        self.delivered = 0  # peers' records accepted
        self._stop = asyncio.Event()

    def _on_message(self, topic: str, payload: bytes) -> None:
        for event in self.session.receive(topic, payload, time.monotonic()):
            if isinstance(event, FrameAccepted):
                f = event.frame
                self._store[(f.node, f.first_seq, f.count)] = event.body
                self.delivered += event.new_records
                self.clock.got(f)
            elif isinstance(event, WantReceived):
                w = event.want
                bodies = [
                    b
                    for (n, first, count), b in sorted(self._store.items())
                    if n == w.node and first < w.first + w.count and first + count > w.first
                ]
                self._publish(self.session.answer(w, bodies))
            elif isinstance(event, VvRequested):
                self.transport.publish(self.session.vv(event.requester))

    def _publish(self, messages: Sequence[Outgoing]) -> None:
        for m in messages:
            self.transport.publish(m)

    def stop(self) -> None:
        self._stop.set()

    async def run(self, *, steps: int) -> None:
        """Write ``steps`` records at the rate, then keep listening until ``stop()``."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.transport.run(), name=f"{self.name}-transport")
            await self.transport.connected.wait()
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
        start = time.monotonic()
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
            self._store[(x.frame.node, x.frame.first_seq, x.frame.count)] = x.body
        self.session.stored(sealed)
        for x in sealed:
            self.clock.sent(x.frame)
            self.transport.publish(x.message)

    async def _beats(self) -> None:
        while True:
            await asyncio.sleep(self.s.presence_interval)
            self._publish([self._presence()])

    async def _sync(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            self.session.tick(now)
            self._publish(self.session.wants(now))
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
