"""MQTT transport: one connection loop with jittered backoff, a persistent session, an outbox.

* aiomqtt 2.x, MQTT 3.1.1, QoS 1, ``clean_session=False`` and a stable client id: while the
  node is away the broker queues what its subscriptions match, and delivers it on reconnect.
* Every connection attempt gets a fresh ``aiomqtt.Client``. aiomqtt 2.x cannot be re-entered
  after an unexpected disconnection: its CONNACK future stays resolved, so the next ``async
  with`` reports "connected" as soon as TCP connects, before (or without) the broker accepting
  (aiomqtt issues #288, #369). Nothing lives in the old client that we need: the broker keeps
  the session, and the outbox re-sends whatever the broker had not acknowledged.
* Exactly one loop reconnects (``run``), with exponential backoff and full jitter.
* The outbox is a deque that lives as long as the node: a message leaves it only when the
  broker acknowledged it (PUBACK), so a reconnect loses nothing. Publishing runs in its own
  task (``publisher``), which waits for the connection instead of reconnecting itself; when a
  connection ends, a publish still waiting on it is aborted at once and re-sent on the next.
  Delivery is at least once: a frame whose PUBACK was lost is sent again, and receivers
  drop the duplicate by ``(node, seq)``.
* Presence is retained, and the will (``alive = False``, retained) marks the node gone if the
  connection dies without a goodbye.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import aiomqtt

from .errors import ConfigError

log = logging.getLogger("seedswarm.transport")


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str, *, username: str = "", password: str = "") -> BrokerAddress:
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ConfigError(f"--broker {url!r}: use mqtt://host:port or mqtts://host:port")
        if not parts.hostname:
            raise ConfigError(f"--broker {url!r} names no host")
        try:
            port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError:
            raise ConfigError(f"--broker {url!r}: the port is not a number") from None
        user = username or (unquote(parts.username) if parts.username else None)
        pw = password or (unquote(parts.password) if parts.password else None)
        return cls(parts.hostname, port, parts.scheme == "mqtts", user or None, pw or None)

    def display(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


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


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    payload: bytes
    retain: bool = False
    records: int = 0  # how many records the payload carries (for the bytes-per-record figure)


class Transport:
    def __init__(
        self,
        address: BrokerAddress,
        *,
        client_id: str,
        subscriptions: list[str],
        on_message: Callable[[str, bytes], None],
        will_topic: str,
        will_payload: bytes,
        ca_file: str = "",
        keepalive: int = 15,
    ) -> None:
        self.address = address
        self.client_id = client_id
        self.subscriptions = subscriptions
        self.on_message = on_message
        self.will = aiomqtt.Will(will_topic, will_payload, qos=1, retain=True)
        self.ca_file = ca_file
        self.keepalive = keepalive
        self.outbox: collections.deque[Outgoing] = collections.deque()
        self._outbox_changed = asyncio.Event()
        self.connected = asyncio.Event()
        self.state = "starting"
        self.connects = 0
        self.last_error = ""
        self.bytes_published = 0
        self.records_published = 0
        self.frame_bytes_published = 0  # payload bytes of own record frames only
        self.messages_published = 0
        self.messages_received = 0
        self._client: aiomqtt.Client | None = None
        self._inflight: asyncio.Timeout | None = None  # the publish awaiting its PUBACK
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # -- public --------------------------------------------------------------------------------

    def publish(self, item: Outgoing) -> None:
        """Queue a message; it is sent (and re-sent across reconnects) until acknowledged."""
        self.outbox.append(item)
        self._outbox_changed.set()

    async def drain(self, seconds: float) -> bool:
        """Wait until the outbox is empty (True) or ``seconds`` pass (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while self.outbox:
            left = deadline - loop.time()
            if left <= 0 or not self.connected.is_set():
                return not self.outbox
            await asyncio.sleep(min(0.02, left))
        return True

    def close(self) -> None:
        """End the connection loop (cleanly disconnecting) and the publisher."""
        self._closing = True
        self._outbox_changed.set()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    # -- the connection loop ---------------------------------------------------------------------

    def _make_client(self) -> aiomqtt.Client:
        tls = None
        if self.address.tls:
            tls = aiomqtt.TLSParameters(ca_certs=self.ca_file or None, cert_reqs=ssl.CERT_REQUIRED)
        return aiomqtt.Client(
            self.address.host,
            self.address.port,
            identifier=self.client_id,
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

    async def run(self) -> None:
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
                        await client.subscribe([(t, 1) for t in self.subscriptions])
                        self.connected.set()
                        self._outbox_changed.set()  # wake the publisher
                        log.info("connected to %s as %s", self.address.display(), self.client_id)
                        async for message in client.messages:
                            payload = message.payload
                            if isinstance(payload, bytes | bytearray):
                                self.messages_received += 1
                                self.on_message(message.topic.value, bytes(payload))
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

    def _abort_inflight(self) -> None:
        """End a publish that waits on a connection that is gone (the outbox keeps the item)."""
        scope = self._inflight
        if scope is not None and not scope.expired():
            scope.reschedule(asyncio.get_running_loop().time())

    async def publisher(self) -> None:
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
            if self.outbox and self.outbox[0] is item:
                self.outbox.popleft()
            self.messages_published += 1
            self.bytes_published += len(item.payload)
            if item.records:
                self.records_published += item.records
                self.frame_bytes_published += len(item.payload)
