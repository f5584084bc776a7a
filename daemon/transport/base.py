"""The transport seam: the whole surface a peer uses of its broker connection.

A ``Transport`` takes ``Outgoing`` messages into an outbox and sends them until the broker
has them, delivers what comes in to ``TransportSpec.on_message``, follows the subscriptions it
is given, drains, closes, and reports its ``statistics()``. Two implementations stand behind it:
``MqttTransport`` (mqtt.py, the real broker through aiomqtt) and ``MemoryTransport`` (memory.py,
an in-process bus for several peers in one process). Which one a peer gets is decided by the
broker URL's scheme, in one place (choose.py); nothing else constructs either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from seedswarm.protocol.events import Outgoing
from seedswarm.protocol.topics import Subscription

OnMessage = Callable[[str, bytes], None]
INCOMING_QUEUE = 4096  # messages read from the socket, not yet taken by the peer (mqtt._Client)


@dataclass(frozen=True, slots=True)
class TransportStatistics:
    url: str
    protocol: str  # "5" or "3.1.1" (what the broker spoke last), "" before the first connection
    state: str  # starting, connecting, connected, disconnected, closed
    connected: bool
    connects: int
    last_error: str
    outbox: int
    dropped_answers: int  # answers that did not fit the outbox
    messages_published: int
    messages_received: int
    bytes_published: int
    bytes_received: int
    records_published: int
    frame_bytes_published: int  # payload bytes of own record frames only


@dataclass(frozen=True, slots=True)
class TransportSpec:
    """What a node asks of its transport: who it is, what it listens to, its will."""

    client_id: str
    subscriptions: list[Subscription]
    on_message: OnMessage
    will: Outgoing
    aliases: tuple[str, ...] = ()  # own topics worth a topic alias (MQTT 5)
    on_drop: Callable[[Outgoing], None] | None = None  # an answer that did not fit
    on_overflow: Callable[[str], object] | None = None  # (the topic of) a message not read
    incoming_queue: int = INCOMING_QUEUE  # messages read, not yet taken (see _Client)
    # called on every connection, once subscribed: what a peer says each time it connects
    # (the retained manifest, then its presence), queued in that order
    on_connect: Callable[[], None] | None = None


class Transport(Protocol):
    """The whole surface of the broker connection, as a peer (node, relay, simulated node)
    uses it."""

    connected: asyncio.Event

    def publish(self, item: Outgoing) -> None:
        """Queue a message; it is sent (and re-sent across reconnects) until acknowledged."""
        ...

    async def run(self) -> None:
        """Connect, subscribe, deliver messages to ``on_message`` and send the outbox, until
        ``close()``."""
        ...

    def set_subscriptions(self, subscriptions: list[Subscription]) -> None:
        """Listen to these from now on (and on every later connection): new ones are
        subscribed before old ones are dropped, so nothing falls between them."""
        ...

    async def drain(self, seconds: float) -> bool:
        """Wait until the outbox is empty (True) or ``seconds`` pass (False)."""
        ...

    def close(self) -> None: ...

    def statistics(self) -> TransportStatistics: ...


TransportFactory = Callable[[TransportSpec], Transport]
