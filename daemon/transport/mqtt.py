"""The broker connection over MQTT (aiomqtt): ``MqttTransport``, the real ``Transport``
(base.py). choose.py builds it for ``mqtt://`` and ``mqtts://`` URLs; nothing else does.

MQTT details:
* MQTT 5 where the broker speaks it (Mosquitto 2 does), 3.1.1 otherwise (amqtt): ``auto``
  tries 5 first, with a short wait for the CONNACK, and stays with what worked. MQTT 5 gives
  No Local (a node does not get its own frames back), topic aliases (after the first frame, a
  node's own frames name their topic in 3 bytes) and a session expiry.
* A stable client id and a persistent session (``clean_start`` off): while the node is away
  the broker keeps its subscriptions and what it had not yet acknowledged. Frames, presence and
  bundles are received at QoS 0 (no acknowledgement per message: gap filling recovers what is
  lost); what a node publishes, and the sync topic it is asked on, use QoS 1.
* Every connection attempt gets a fresh ``aiomqtt.Client``. aiomqtt 2.x cannot be re-entered
  after an unexpected disconnection: its CONNACK future stays resolved, so the next ``async
  with`` reports "connected" as soon as TCP connects, before (or without) the broker accepting
  (aiomqtt issues #288, #369). Nothing lives in the old client that we need: the broker keeps
  the session, and the outbox re-sends whatever the broker had not acknowledged.
* Exactly one loop reconnects, with exponential backoff and full jitter.
* The outbox lives as long as the node, in two lanes: own messages (frames, presence, wants)
  first, then answers to peers. A message leaves only once the broker acknowledged it, so a
  reconnect loses nothing; when a connection ends, a publish still waiting on it is aborted at
  once and re-sent on the next (at least once: receivers drop duplicates by ``(node, seq)``).
  Of retained messages on one topic (presence) only the newest waits. The answers lane is
  bounded: a flood of wants can fill it, never the memory; what does not fit is dropped and
  counted, and the asker asks again.
* The will (``alive = False``, retained) marks the node gone if the connection dies without a
  goodbye.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
import time
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from seedswarm.daemon.settings import BrokerAddress
from seedswarm.protocol.codec import MAX_MESSAGE_BYTES
from seedswarm.protocol.events import Lane, Outgoing
from seedswarm.protocol.topics import Subscription

from .base import TransportSpec, TransportStatistics
from .mqtt_client import Backoff, Client, cost, refuses_v5
from .trouble import explain

log = logging.getLogger("seedswarm.transport")

MAX_PEER_LANE = 2048  # messages; beyond this answers are dropped (the asker asks again)
# MQTT 5: the broker sends this client nothing larger (the codec refuses more than 1 MiB anyway)
MAX_PACKET_BYTES = MAX_MESSAGE_BYTES + (64 << 10)
SESSION_EXPIRY_S = 3600  # how long the broker keeps a node's session while it is away
V5_CONNACK_WAIT_S = 3.0  # `auto`: how long a first MQTT 5 attempt waits for the broker
CONNACK_WAIT_S = 10.0  # how long any other attempt waits for the broker's answer
REPEAT_WARNING_S = 60.0  # the same connection failure is logged again after this long


class MqttTransport:
    def __init__(
        self,
        address: BrokerAddress,
        spec: TransportSpec,
        *,
        version: str = "auto",
        ca_file: str = "",
        keepalive: int = 60,
    ) -> None:
        if version not in ("auto", "5", "3.1.1"):
            raise ValueError(f"MQTT version {version!r}: auto, 5 or 3.1.1")
        self.address = address
        self.spec = spec
        self.version = version
        self.ca_file = ca_file
        self.keepalive = keepalive
        self.own: collections.deque[Outgoing] = collections.deque()  # frames, presence, wants
        self.peer: collections.deque[Outgoing] = collections.deque()  # answers to peers
        self._outbox_changed = asyncio.Event()
        self._outbox_empty = asyncio.Event()
        self._outbox_empty.set()
        self.connected = asyncio.Event()
        self.protocol = ""
        self.state = "starting"
        self.connects = 0
        self.last_error = ""
        self.dropped_answers = 0
        self.bytes_published = 0
        self.bytes_received = 0
        self.records_published = 0
        self.frame_bytes_published = 0
        self.messages_published = 0
        self.messages_received = 0
        self._v5 = version != "3.1.1"
        self._aliases: dict[str, int] = {}  # own topic -> alias on this connection
        self._aliased: set[str] = set()  # aliases the broker has learnt on this connection
        self._client: Client | None = None
        self._inflight: asyncio.Timeout | None = None  # the publish awaiting its PUBACK
        self._inflight_item: Outgoing | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._subs = list(spec.subscriptions)  # what to listen to
        self._active: set[str] = set()  # topics subscribed on this connection
        self._stale: set[str] = set()  # topics once subscribed, not wanted now
        self._subs_changed = asyncio.Event()
        self._warned = ("", 0.0)  # the last failure logged as a warning, and when

    # -- the Transport surface -----------------------------------------------------------------

    def publish(self, item: Outgoing) -> None:
        if item.lane is Lane.PEER:
            if len(self.peer) >= MAX_PEER_LANE:
                self.dropped_answers += 1
                if self.spec.on_drop is not None:
                    self.spec.on_drop(item)
                return
            self.peer.append(item)
        else:
            if item.retain:
                # only the newest retained message of a topic matters: drop a queued older one
                # (never the one being sent, which the publisher removes when it is acknowledged)
                for m in [m for m in self.own if m.retain and m.topic == item.topic]:
                    if m is not self._inflight_item:
                        self.own.remove(m)
            self.own.append(item)
        self._outbox_empty.clear()
        self._outbox_changed.set()

    def set_subscriptions(self, subscriptions: list[Subscription]) -> None:
        if subscriptions == self._subs:
            return
        wanted = {sub.topic for sub in subscriptions}
        self._stale |= {sub.topic for sub in self._subs} - wanted
        self._stale -= wanted
        self._subs = list(subscriptions)
        self._subs_changed.set()

    async def drain(self, seconds: float) -> bool:
        if not self.own and not self.peer:
            return True
        if not self.connected.is_set():
            return False
        try:
            async with asyncio.timeout(seconds):
                await self._outbox_empty.wait()
        except TimeoutError:
            return not self.own and not self.peer
        return True

    def close(self) -> None:
        """End the connection loop (cleanly disconnecting) and the publisher."""
        self._closing = True
        self._outbox_changed.set()
        self._subs_changed.set()  # let the subscriber see the end
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def statistics(self) -> TransportStatistics:
        return TransportStatistics(
            url=self.address.display(),
            protocol=self.protocol,
            state=self.state,
            connected=self.connected.is_set(),
            connects=self.connects,
            last_error=self.last_error,
            outbox=len(self.own) + len(self.peer),
            dropped_answers=self.dropped_answers,
            messages_published=self.messages_published,
            messages_received=self.messages_received,
            bytes_published=self.bytes_published,
            bytes_received=self.bytes_received,
            records_published=self.records_published,
            frame_bytes_published=self.frame_bytes_published,
        )

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._connection(), name="mqtt-connection")
            tg.create_task(self._publisher(), name="mqtt-publisher")
            tg.create_task(self._subscriber(), name="mqtt-subscriber")

    # -- the connection loop ---------------------------------------------------------------------

    def _make_client(self) -> Client:
        tls = None
        if self.address.tls:
            tls = aiomqtt.TLSParameters(ca_certs=self.ca_file or None, cert_reqs=ssl.CERT_REQUIRED)
        w = self.spec.will
        will = aiomqtt.Will(w.topic, w.payload, qos=1, retain=w.retain)
        common: dict[str, Any] = {
            "identifier": self.spec.client_id,
            "username": self.address.username,
            "password": self.address.password,
            "will": will,
            "keepalive": self.keepalive,
            "tls_params": tls,
            "max_inflight_messages": 64,
            "max_queued_incoming_messages": self.spec.incoming_queue,
        }
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            props.MaximumPacketSize = MAX_PACKET_BYTES
            first_try = self.version == "auto" and not self.protocol
            client = Client(
                self.address.host,
                self.address.port,
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=False,
                properties=props,
                timeout=V5_CONNACK_WAIT_S if first_try else CONNACK_WAIT_S,
                **common,
            )
            client.on_overflow = self.spec.on_overflow
            return client
        client = Client(
            self.address.host,
            self.address.port,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=False,
            timeout=CONNACK_WAIT_S,
            **common,
        )
        client.on_overflow = self.spec.on_overflow
        return client

    def _subscriptions(self, subs: list[Subscription]) -> list[tuple[str, Any]]:
        if self._v5:
            return [(s.topic, SubscribeOptions(qos=s.qos, noLocal=s.no_local)) for s in subs]
        return [(s.topic, s.qos) for s in subs]

    async def _resubscribe(self, client: Client) -> None:
        """Bring this connection's subscriptions to ``_subs``: the new ones first."""
        subs = list(self._subs)
        new = [sub for sub in subs if sub.topic not in self._active]
        if new:
            await client.subscribe(self._subscriptions(new))
        self._active |= {sub.topic for sub in new}
        # the broker keeps a persistent session's subscriptions: drop what is not wanted,
        # including what an earlier connection subscribed
        gone = sorted((self._active | self._stale) - {sub.topic for sub in subs})
        if gone:
            await client.unsubscribe(gone)
        self._active -= set(gone)
        self._stale -= set(gone)

    async def _subscriber(self) -> None:
        """Apply ``set_subscriptions`` to the live connection (a new one applies them itself)."""
        while not self._closing:
            await self._subs_changed.wait()
            self._subs_changed.clear()
            client = self._client
            if self._closing or client is None or not self.connected.is_set():
                continue
            try:
                await self._resubscribe(client)
            except aiomqtt.MqttError as exc:
                self.last_error = str(exc) or type(exc).__name__  # the next connection retries

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
                self._aliased.clear()
                try:
                    async with client:
                        self.connects += 1
                        self.protocol = "5" if self._v5 else "3.1.1"
                        self.state = "connected"
                        backoff.reset()
                        if self._warned[0]:
                            log.warning("broker %s: connected again", self.address.display())
                        self._warned = ("", 0.0)
                        self._set_aliases(client.connack)
                        self._active = set()
                        await self._resubscribe(client)
                        if self.spec.on_connect is not None:
                            self.spec.on_connect()  # what to say first on this connection
                        self.connected.set()
                        self._outbox_changed.set()  # wake the publisher
                        log.info(
                            "connected to %s as %s (MQTT %s)",
                            self.address.display(),
                            self.spec.client_id,
                            self.protocol,
                        )
                        async for message in client.messages:
                            payload = message.payload
                            client.queued_bytes -= cost(payload)
                            if isinstance(payload, bytes | bytearray):
                                self.messages_received += 1
                                self.bytes_received += len(payload)
                                self.spec.on_message(message.topic.value, bytes(payload))
                except aiomqtt.MqttError as exc:
                    self.last_error = str(exc) or type(exc).__name__
                    if self._first_try_v5(exc):
                        continue
                    self._warn(self.last_error)
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
            self._subs_changed.set()

    def _first_try_v5(self, exc: aiomqtt.MqttError) -> bool:
        """``auto``, no protocol agreed yet: True when the broker refused MQTT 5 or did not
        answer it, and 3.1.1 is to be tried at once (amqtt does not answer 5 at all)."""
        if not (self.version == "auto" and self._v5 and not self.protocol and refuses_v5(exc)):
            return False
        self._v5 = False
        url = self.address.display()
        if isinstance(exc, aiomqtt.MqttCodeError):
            log.info("broker %s does not speak MQTT 5 (%s); using 3.1.1", url, self.last_error)
        else:  # silence proves nothing about MQTT 5: say what happened, and what comes next
            log.warning(
                "broker %s accepted the connection but did not answer an MQTT 5 CONNECT within "
                "%g s; trying MQTT 3.1.1 (some brokers answer only that)",
                url, V5_CONNACK_WAIT_S,
            )  # fmt: skip
        return True

    def _warn(self, error: str) -> None:
        """The reason and the fix, once per kind of failure, and again every
        ``REPEAT_WARNING_S`` while it lasts (the loop keeps trying meanwhile)."""
        now = time.monotonic()
        if error == self._warned[0] and now - self._warned[1] < REPEAT_WARNING_S:
            log.debug("broker %s: %s", self.address.display(), error)
            return
        again = " (still)" if error == self._warned[0] else ""
        self._warned = (error, now)
        wait = V5_CONNACK_WAIT_S if self._v5 and not self.protocol else CONNACK_WAIT_S
        log.warning("broker%s: %s", again, explain(self.address, error, timeout_s=wait))

    def _set_aliases(self, connack: Properties | None) -> None:
        most = int(getattr(connack, "TopicAliasMaximum", 0) or 0) if self._v5 else 0
        self._aliases = {t: i + 1 for i, t in enumerate(self.spec.aliases[:most])}

    def _abort_inflight(self) -> None:
        """End a publish that waits on a connection that is gone (the outbox keeps the item)."""
        scope = self._inflight
        if scope is None or scope.expired():
            return
        # RuntimeError: the publish finished in the same tick, so there is nothing to abort.
        with contextlib.suppress(RuntimeError):
            scope.reschedule(asyncio.get_running_loop().time())

    def _next(self) -> collections.deque[Outgoing] | None:
        if self.own:
            return self.own
        if self.peer:
            return self.peer
        return None

    async def _publisher(self) -> None:
        """Send the outbox, own lane first; an item leaves only once the broker acknowledged
        it."""
        while True:
            lane = self._next()
            if self._closing and (lane is None or not self.connected.is_set()):
                return
            if lane is None or not self.connected.is_set():
                self._outbox_changed.clear()
                await self._outbox_changed.wait()
                continue
            client = self._client
            item = lane[0]
            topic, props = item.topic, None
            alias = self._aliases.get(item.topic)
            if alias is not None:
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.TopicAlias = alias
                if item.topic in self._aliased:
                    topic = ""  # the broker knows the alias: 3 bytes instead of the topic
            # No await between creating the scope and entering it, so an abort cannot be missed,
            # and none between leaving it and forgetting it, so an abort cannot hit a scope
            # that is already done.
            scope = self._inflight = asyncio.timeout(None)
            self._inflight_item = item
            failed = ""
            try:
                assert client is not None
                async with scope:
                    await client.publish(
                        topic, item.payload, qos=1, retain=item.retain, properties=props
                    )
            except TimeoutError:
                failed = "aborted"  # its connection ended; the item goes out on the next one
            except aiomqtt.MqttError as exc:
                failed = str(exc) or type(exc).__name__
            finally:
                self._inflight = None
                self._inflight_item = None
            if failed:
                if failed != "aborted":
                    self.last_error = failed
                    await asyncio.sleep(0.1)
                continue
            if alias is not None:
                self._aliased.add(item.topic)
            if lane and lane[0] is item:
                lane.popleft()
            if not self.own and not self.peer:
                self._outbox_empty.set()
            self.messages_published += 1
            self.bytes_published += len(item.payload)
            if item.records:
                self.records_published += item.records
                self.frame_bytes_published += len(item.payload)
