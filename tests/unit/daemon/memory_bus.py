"""A FAKE broker: an in-memory publish/subscribe bus for running several nodes in one process.

It stands in for MQTT only to test the node's logic fast: no sockets, no MQTT packets, no QoS
or sessions; it keeps retained messages, matches ``+``/``#`` subscriptions, delivers each
message on a later turn of the event loop (never inside ``publish``), and publishes a client's
will when the client ``crash``-es instead of closing. Everything that claims to work with a
real broker is tested with Mosquitto or amqtt (tests/integration), not with this.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from seedswarm.daemon.transport import Transport, TransportSpec, TransportStatistics
from seedswarm.protocol.session import Outgoing
from seedswarm.protocol.topics import Subscription


def matches(pattern: str, topic: str) -> bool:
    p, t = pattern.split("/"), topic.split("/")
    for i, level in enumerate(p):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(p) == len(t)


@dataclass
class MemoryBus:
    clients: list[MemoryTransport] = field(default_factory=list)
    retained: dict[str, bytes] = field(default_factory=dict)
    delivered: int = 0

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
    """``Transport`` over a ``MemoryBus`` (a fake; see the module docstring)."""

    def __init__(self, bus: MemoryBus, spec: TransportSpec) -> None:
        self.bus = bus
        self.spec = spec
        self.subscriptions = list(spec.subscriptions)
        self.connected = asyncio.Event()
        self._closed = asyncio.Event()
        self._queued: list[Outgoing] = []
        self.published = 0
        self.received = 0

    def publish(self, item: Outgoing) -> None:
        if self.connected.is_set():
            self.published += 1
            self.bus.publish(item.topic, item.payload, item.retain)
        else:
            self._queued.append(item)

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
            self.spec.on_message(topic, payload)

    async def run(self) -> None:
        self.bus.clients.append(self)
        self.connected.set()
        self._retained(self.subscriptions)
        queued, self._queued = self._queued, []
        for item in queued:
            self.publish(item)
        await self._closed.wait()

    async def drain(self, seconds: float) -> bool:
        return True

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
            url="memory://",
            protocol="memory",
            state="connected" if self.connected.is_set() else "closed",
            connected=self.connected.is_set(),
            connects=1,
            last_error="",
            outbox=len(self._queued),
            dropped_answers=0,
            messages_published=self.published,
            messages_received=self.received,
            bytes_published=0,
            bytes_received=0,
            records_published=0,
            frame_bytes_published=0,
        )
