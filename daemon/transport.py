"""The broker connection: a ``Transport`` seam, and MQTT behind it (aiomqtt).

``Transport`` is the whole surface the node uses: publish into an outbox, run the connection,
drain, close, and statistics. ``MqttTransport`` is the real one; tests that only exercise the
node's logic may pass an in-memory bus instead (tests/unit/daemon/memory_bus.py, a fake).

MQTT details:
* aiomqtt 2.x, MQTT 3.1.1, QoS 1, ``clean_session=False`` and a stable client id: while the
  node is away the broker queues what its subscriptions match, and delivers it on reconnect.
* Every connection attempt gets a fresh ``aiomqtt.Client``. aiomqtt 2.x cannot be re-entered
  after an unexpected disconnection: its CONNACK future stays resolved, so the next ``async
  with`` reports "connected" as soon as TCP connects, before (or without) the broker accepting
  (aiomqtt issues #288, #369). Nothing lives in the old client that we need: the broker keeps
  the session, and the outbox re-sends whatever the broker had not acknowledged.
* Exactly one loop reconnects, with exponential backoff and full jitter.
* The outbox is a deque that lives as long as the node: a message leaves it only when the
  broker acknowledged it (PUBACK), so a reconnect loses nothing. Publishing runs in its own
  task, which waits for the connection instead of reconnecting itself; when a connection
  ends, a publish still waiting on it is aborted at once and re-sent on the next. Delivery is
  at least once: a frame whose PUBACK was lost is sent again, and receivers drop the duplicate
  by ``(node, seq)``. Of retained messages on one topic (presence) only the newest waits.
* The will (``alive = False``, retained) marks the node gone if the connection dies without a
  goodbye.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import aiomqtt

from seedswarm.protocol.session import Outgoing

from .settings import BrokerAddress

log = logging.getLogger("seedswarm.transport")

OnMessage = Callable[[str, bytes], None]


@dataclass(frozen=True, slots=True)
class TransportStatistics:
    url: str
    state: str  # starting, connecting, connected, disconnected, closed
    connected: bool
    connects: int
    last_error: str
    outbox: int
    messages_published: int
    messages_received: int
    bytes_published: int
    records_published: int
    frame_bytes_published: int  # payload bytes of own record frames only


@dataclass(frozen=True, slots=True)
class TransportSpec:
    """What a node asks of its transport: who it is, what it listens to, its will."""

    client_id: str
    subscriptions: list[str]
    on_message: OnMessage
    will: Outgoing


class Transport(Protocol):
    """The whole surface of the broker connection, as the node uses it."""

    connected: asyncio.Event

    def publish(self, item: Outgoing) -> None:
        """Queue a message; it is sent (and re-sent across reconnects) until acknowledged."""
        ...

    async def run(self) -> None:
        """Connect, subscribe, deliver messages to ``on_message`` and send the outbox, until
        ``close()``."""
        ...

    async def drain(self, seconds: float) -> bool:
        """Wait until the outbox is empty (True) or ``seconds`` pass (False)."""
        ...

    def close(self) -> None: ...

    def statistics(self) -> TransportStatistics: ...


TransportFactory = Callable[[TransportSpec], Transport]


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


class MqttTransport:
    def __init__(
        self,
        address: BrokerAddress,
        spec: TransportSpec,
        *,
        ca_file: str = "",
        keepalive: int = 15,
    ) -> None:
        self.address = address
        self.spec = spec
        self.will = aiomqtt.Will(spec.will.topic, spec.will.payload, qos=1, retain=True)
        self.ca_file = ca_file
        self.keepalive = keepalive
        self.outbox: collections.deque[Outgoing] = collections.deque()
        self._outbox_changed = asyncio.Event()
        self._outbox_empty = asyncio.Event()
        self._outbox_empty.set()
        self.connected = asyncio.Event()
        self.state = "starting"
        self.connects = 0
        self.last_error = ""
        self.bytes_published = 0
        self.records_published = 0
        self.frame_bytes_published = 0
        self.messages_published = 0
        self.messages_received = 0
        self._client: aiomqtt.Client | None = None
        self._inflight: asyncio.Timeout | None = None  # the publish awaiting its PUBACK
        self._inflight_item: Outgoing | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # -- the Transport surface -----------------------------------------------------------------

    def publish(self, item: Outgoing) -> None:
        if item.retain:
            # only the newest retained message of a topic matters: drop a queued older one
            # (never the one being sent, which the publisher removes when it is acknowledged)
            stale = [
                m
                for m in self.outbox
                if m.retain and m.topic == item.topic and m is not self._inflight_item
            ]
            for m in stale:
                self.outbox.remove(m)
        self.outbox.append(item)
        self._outbox_empty.clear()
        self._outbox_changed.set()

    async def drain(self, seconds: float) -> bool:
        if not self.outbox:
            return True
        if not self.connected.is_set():
            return False
        try:
            async with asyncio.timeout(seconds):
                await self._outbox_empty.wait()
        except TimeoutError:
            return not self.outbox
        return True

    def close(self) -> None:
        """End the connection loop (cleanly disconnecting) and the publisher."""
        self._closing = True
        self._outbox_changed.set()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def statistics(self) -> TransportStatistics:
        return TransportStatistics(
            url=self.address.display(),
            state=self.state,
            connected=self.connected.is_set(),
            connects=self.connects,
            last_error=self.last_error,
            outbox=len(self.outbox),
            messages_published=self.messages_published,
            messages_received=self.messages_received,
            bytes_published=self.bytes_published,
            records_published=self.records_published,
            frame_bytes_published=self.frame_bytes_published,
        )

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._connection(), name="mqtt-connection")
            tg.create_task(self._publisher(), name="mqtt-publisher")

    # -- the connection loop ---------------------------------------------------------------------

    def _make_client(self) -> aiomqtt.Client:
        tls = None
        if self.address.tls:
            tls = aiomqtt.TLSParameters(ca_certs=self.ca_file or None, cert_reqs=ssl.CERT_REQUIRED)
        return aiomqtt.Client(
            self.address.host,
            self.address.port,
            identifier=self.spec.client_id,
            clean_session=False,
            protocol=aiomqtt.ProtocolVersion.V311,
            username=self.address.username,
            password=self.address.password,
            will=self.will,
            keepalive=self.keepalive,
            tls_params=tls,
            timeout=10,
            max_inflight_messages=64,
        )

    async def _connection(self) -> None:
        """Connect, subscribe, read; on any connection failure back off and do it again.

        ``close()`` ends it: the task is cancelled, which leaves ``async with client`` through
        aiomqtt's ``__aexit__`` (a clean DISCONNECT, so the broker does not send the will).
        """
        self._task = asyncio.current_task()
        backoff = Backoff()
        try:
            while not self._closing:
                self.state = "connecting"
                client = self._make_client()  # fresh per attempt: see the module docstring
                self._client = client
                try:
                    async with client:
                        self.connects += 1
                        self.state = "connected"
                        backoff.reset()
                        await client.subscribe([(t, 1) for t in self.spec.subscriptions])
                        self.connected.set()
                        self._outbox_changed.set()  # wake the publisher
                        log.info(
                            "connected to %s as %s", self.address.display(), self.spec.client_id
                        )
                        async for message in client.messages:
                            payload = message.payload
                            if isinstance(payload, bytes | bytearray):
                                self.messages_received += 1
                                self.spec.on_message(message.topic.value, bytes(payload))
                except aiomqtt.MqttError as exc:
                    self.last_error = str(exc) or type(exc).__name__
                    log.warning("broker %s: %s", self.address.display(), self.last_error)
                finally:
                    self.connected.clear()
                    self._abort_inflight()
                self.state = "disconnected"
                await asyncio.sleep(backoff.next_delay())
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._closing or task is None:
                raise
            task.uncancel()
        finally:
            self.state = "closed"
            self._outbox_changed.set()  # let the publisher see the end

    def _abort_inflight(self) -> None:
        """End a publish that waits on a connection that is gone (the outbox keeps the item)."""
        scope = self._inflight
        if scope is not None and not scope.expired():
            scope.reschedule(asyncio.get_running_loop().time())

    async def _publisher(self) -> None:
        """Send the outbox in order; an item leaves only once the broker acknowledged it."""
        while True:
            if self._closing and (not self.outbox or not self.connected.is_set()):
                return
            if not self.outbox or not self.connected.is_set():
                self._outbox_changed.clear()
                await self._outbox_changed.wait()
                continue
            client = self._client
            item = self.outbox[0]
            # No await between creating the scope and entering it, so an abort cannot be missed.
            scope = self._inflight = asyncio.timeout(None)
            self._inflight_item = item
            try:
                assert client is not None
                async with scope:
                    await client.publish(item.topic, item.payload, qos=1, retain=item.retain)
            except TimeoutError:
                continue  # aborted: its connection ended; the item goes out on the next one
            except aiomqtt.MqttError as exc:
                self.last_error = str(exc) or type(exc).__name__
                await asyncio.sleep(0.1)
                continue
            finally:
                self._inflight = None
                self._inflight_item = None
            if self.outbox and self.outbox[0] is item:
                self.outbox.popleft()
            if not self.outbox:
                self._outbox_empty.set()
            self.messages_published += 1
            self.bytes_published += len(item.payload)
            if item.records:
                self.records_published += item.records
                self.frame_bytes_published += len(item.payload)


def mqtt_factory(address: BrokerAddress, *, ca_file: str = "") -> TransportFactory:
    def make(spec: TransportSpec) -> Transport:
        return MqttTransport(address, spec, ca_file=ca_file)

    return make
