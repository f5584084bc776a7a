"""An in-process publish/subscribe bus: the ``Transport`` for ``memory://NAME`` broker URLs.

It stands in for a broker where several peers share one process: the in-process tests of the
node, the relay and the driver (tests/unit/daemon), and anything else that wants peers without
sockets. It is deliberately small, and NOT a model of MQTT: no packets, no QoS, no sessions, no
outbox limits. What it does keep is what the peers' logic relies on:

  * retained messages (a peer that subscribes gets every retained message that matches, as a
    broker sends them on subscribe), and ``+``/``#`` subscriptions;
  * delivery on a later turn of the event loop, never inside ``publish`` (as over a socket);
  * the will, published when a client ``crash``-es instead of closing.

Buses are named: every ``memory://NAME`` URL in one process reaches the bus ``NAME`` (created
on first use). Everything that claims to work with a real broker is tested with Mosquitto or
amqtt (tests/integration), not with this.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import ClassVar

from seedswarm.protocol.events import Outgoing
from seedswarm.protocol.topics import Subscription

from .base import Transport, TransportSpec, TransportStatistics


def matches(pattern: str, topic: str) -> bool:
    """MQTT topic matching: ``+`` is one level, a final ``#`` any number of them."""
    p, t = pattern.split("/"), topic.split("/")
    for i, level in enumerate(p):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(p) == len(t)


@dataclass
class MemoryBus:
    name: str = ""
    clients: list[MemoryTransport] = field(default_factory=list)
    retained: dict[str, bytes] = field(default_factory=dict)

    _named: ClassVar[dict[str, MemoryBus]] = {}

    @classmethod
    def named(cls, name: str) -> MemoryBus:
        """The process's bus called ``name`` (``memory://name``), made on first use."""
        bus = cls._named.get(name)
        if bus is None:
            bus = cls._named[name] = MemoryBus(name)
        return bus

    def publish(self, topic: str, payload: bytes, retain: bool) -> None:
        if retain:
            self.retained[topic] = payload
        loop = asyncio.get_running_loop()
        for client in list(self.clients):
            if any(matches(s.topic, topic) for s in client.subscriptions):
                loop.call_soon(client.deliver, topic, payload)

    def factory(self, spec: TransportSpec) -> Transport:
        return MemoryTransport(self, spec)


class MemoryTransport:
    """``Transport`` over a ``MemoryBus`` (see the module docstring for what it is not)."""

    def __init__(self, bus: MemoryBus, spec: TransportSpec) -> None:
        self.bus = bus
        self.spec = spec
        self.subscriptions = list(spec.subscriptions)
        self.connected = asyncio.Event()
        self._closed = asyncio.Event()
        self._queued: list[Outgoing] = []
        self.connects = 0
        self.published = 0
        self.received = 0
        self.bytes_published = 0
        self.bytes_received = 0
        self.records_published = 0
        self.frame_bytes_published = 0

    def publish(self, item: Outgoing) -> None:
        if not self.connected.is_set():
            self._queued.append(item)
            return
        self.published += 1
        self.bytes_published += len(item.payload)
        if item.records:
            self.records_published += item.records
            self.frame_bytes_published += len(item.payload)
        self.bus.publish(item.topic, item.payload, item.retain)

    def set_subscriptions(self, subscriptions: list[Subscription]) -> None:
        new = [s for s in subscriptions if s not in self.subscriptions]
        self.subscriptions = list(subscriptions)
        if self.connected.is_set():
            self._retained(new)  # as a broker does on subscribe

    def _retained(self, subs: list[Subscription]) -> None:
        for topic, payload in list(self.bus.retained.items()):
            if any(matches(s.topic, topic) for s in subs):
                asyncio.get_running_loop().call_soon(self.deliver, topic, payload)

    def deliver(self, topic: str, payload: bytes) -> None:
        if self.connected.is_set():
            self.received += 1
            self.bytes_received += len(payload)
            self.spec.on_message(topic, payload)

    async def run(self) -> None:
        self.bus.clients.append(self)
        self.connects += 1
        self.connected.set()
        self._retained(self.subscriptions)
        if self.spec.on_connect is not None:
            self.spec.on_connect()
        queued, self._queued = self._queued, []
        for item in queued:
            self.publish(item)
        await self._closed.wait()

    async def drain(self, seconds: float) -> bool:
        return True  # what is published is on the bus at once

    def close(self) -> None:
        self._leave()

    def crash(self) -> None:
        """The connection dies without a goodbye: the bus publishes the will."""
        self._leave()
        w = self.spec.will
        self.bus.publish(w.topic, w.payload, w.retain)

    def _leave(self) -> None:
        self.connected.clear()
        if self in self.bus.clients:
            self.bus.clients.remove(self)
        self._closed.set()

    def statistics(self) -> TransportStatistics:
        return TransportStatistics(
            url=f"memory://{self.bus.name}",
            protocol="memory",
            state="connected" if self.connected.is_set() else "closed",
            connected=self.connected.is_set(),
            connects=self.connects,
            last_error="",
            outbox=len(self._queued),
            dropped_answers=0,
            messages_published=self.published,
            messages_received=self.received,
            bytes_published=self.bytes_published,
            bytes_received=self.bytes_received,
            records_published=self.records_published,
            frame_bytes_published=self.frame_bytes_published,
        )
