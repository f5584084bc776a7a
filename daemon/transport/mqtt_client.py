"""The pieces of MQTT below the transport's loops (mqtt.py): aiomqtt's client with a bounded
queue of incoming messages and the CONNACK kept, what a queued message costs in memory, the
reconnection backoff, and how to tell a broker that does not speak MQTT 5."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import aiomqtt
from paho.mqtt.properties import Properties

INCOMING_BYTES = 32 << 20  # bytes of incoming messages not yet taken (``cost``: each >= 4 kB)


class Backoff:
    """Exponential backoff with full jitter: sleep uniform(0, min(cap, base * 2**n))."""

    def __init__(
        self, base: float = 0.25, cap: float = 15.0, rng: random.Random | None = None
    ) -> None:
        self.base, self.cap, self.attempt = base, cap, 0
        self._rng = rng or random.Random()

    def reset(self) -> None:
        self.attempt = 0

    def next_delay(self) -> float:
        delay = self._rng.uniform(0, min(self.cap, self.base * 2**self.attempt))
        self.attempt = min(self.attempt + 1, 30)
        return max(delay, 0.05)


class Client(aiomqtt.Client):
    """aiomqtt's client, keeping the CONNACK's properties (aiomqtt drops them), from which
    the broker's topic alias maximum is read, and bounding its queue of incoming messages.

    paho reads every packet the socket holds before the reader gets a turn, so a flood (30,000
    wants in a second) would sit in aiomqtt's queue as 30,000 message objects (~4 kB each with
    their MQTT 5 properties: 128 MB), and as many large bundles as the flood holds. The queue
    holds ``INCOMING_QUEUE`` messages and ``INCOMING_BYTES``; what does not fit is handed to
    ``on_overflow`` (its topic, for the node to count under the sender) instead of aiomqtt's
    one warning per discarded message. Gap filling recovers a dropped frame.
    """

    connack: Properties | None = None
    on_overflow: Callable[[str], object] | None = None
    queued_bytes = 0  # of the messages in aiomqtt's queue (``cost``), less what was taken

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        size = cost(message.payload)
        if self._queue.full() or self.queued_bytes + size > INCOMING_BYTES:
            if self.on_overflow is not None:
                self.on_overflow(str(message.topic))
            return
        self.queued_bytes += size
        super()._on_message(client, userdata, message)

    def _on_connect(
        self,
        client: Any,
        userdata: Any,
        flags: Any,
        reason_code: Any,
        properties: Properties | None = None,
    ) -> None:
        self.connack = properties
        super()._on_connect(client, userdata, flags, reason_code, properties)


def cost(payload: Any) -> int:
    """What a queued message holds in memory: its payload, and at least 4 kB of objects (paho's
    message and its MQTT 5 properties, aiomqtt's message: measured ~4 kB)."""
    return max(4096, len(payload)) if isinstance(payload, bytes | bytearray) else 4096


def refuses_v5(exc: aiomqtt.MqttError) -> bool:
    """The broker took the TCP connection but would not answer, or refused, an MQTT 5
    CONNECT (amqtt does not answer at all; others refuse with "unsupported protocol")."""
    if isinstance(exc, aiomqtt.MqttCodeError):
        return exc.rc in (1, 132)
    return "timed out" in str(exc).lower()
