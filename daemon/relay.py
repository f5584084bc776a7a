"""``seedswarm relay``: every node's frames and presence, forwarded in one bundle per interval.

Theory of operation
-------------------
With N nodes each publishing to ``records/<node>`` and each subscribed to ``records/+``, the
broker makes N deliveries of every frame: N² per frame interval. A relay subscribes to every
node's frames and presence once, and publishes, every ``--interval`` seconds, bundles on
``bundles/<relay>`` carrying what came in, byte for byte (docs/PROTOCOL.md §7, §9). Nodes that
see a relay up listen to its bundles instead of to each other (Session.subscriptions), so the
broker makes about N deliveries in and N out per interval, whatever the frame rate. Several
relays may run; nodes drop the duplicates by ``(node, seq)``. When no relay's bundle has come
for ``relay_timeout`` seconds, nodes listen to each other again, and gap filling fetches what
fell between.

A relay is a node without a model, built from the same parts: the session (it checks what it
forwards exactly as a node checks what it takes), the store (it keeps the log, so it answers
wants like any holder: a third party's copy, taken by nodes only while the author is away) and
the transport.

Invariants:
  * A relay forwards only what its session took without a drop, each message as it came (a
    frame, or a presence: signatures still verify), in the order it came (so a new node's
    presence precedes its first frame).
  * Every interval it publishes at least one bundle (of its own presence when nothing came):
    the bundles are the heartbeat nodes watch. A bundle holds at most ``MAX_BUNDLE_BYTES``.
  * It never listens to bundles (no relay loops) and never writes records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from seedswarm.protocol.codec import encode_bundle
from seedswarm.protocol.errors import SeedswarmError
from seedswarm.protocol.manifest import Manifest
from seedswarm.protocol.session import (
    MAX_BUNDLE_BYTES,
    Dropped,
    FrameAccepted,
    Outgoing,
    Retracted,
    Session,
    SessionConfig,
    VvRequested,
    WantReceived,
)
from seedswarm.protocol.topics import PRESENCE, RECORDS

from .datadir import DataDir, read_manifest_file
from .errors import ConfigError
from .runspec import load_key
from .settings import RelaySettings, parse_listen
from .store import Stored, StoreThread
from .transport import MqttTransport, Transport, TransportSpec

log = logging.getLogger("seedswarm.relay")

MAX_PENDING_BYTES = 64 * 1024 * 1024  # forwarded bytes waiting for the next interval, at most
SYNC_EVERY = 1.0


@dataclass(frozen=True, slots=True)
class RelayStatus:
    relay: str
    run_id: str
    run: str
    phase: str
    peers: int
    frames_forwarded: int
    presences_forwarded: int
    bundles_published: int
    bytes_forwarded: int
    records_held: int
    dropped: dict[str, dict[str, int]]
    dropped_overflow: int  # entries not forwarded because the pending bundle was full
    broker: dict[str, Any]


def _manifest(given: str) -> Manifest:
    source = Path(given).expanduser()
    path = DataDir(source).manifest_path if source.is_dir() else source
    if not path.is_file():
        raise ConfigError(
            f"--manifest {given!r}: give the run's manifest.json (any node's data directory has it)"
        )
    return read_manifest_file(path)


class Relay:
    def __init__(self, settings: RelaySettings, transport: Any = None) -> None:
        self.s = settings
        self.me = settings.relay
        self.phase = "starting"
        self._make_transport = transport or self._mqtt
        self._pending: deque[tuple[str, bytes]] = deque()
        self._pending_bytes = 0
        self._stop = asyncio.Event()
        self._wants: deque[WantReceived] = deque(maxlen=1000)
        self._wake_responder = asyncio.Event()
        self._presence_due = asyncio.Event()
        self._writes: asyncio.Queue[Stored | Retracted] = asyncio.Queue()  # for the store, in order
        self.frames_forwarded = self.presences_forwarded = self.bundles_published = 0
        self.bytes_forwarded = self.overflow = 0
        self.error = ""

    def _mqtt(self, spec: TransportSpec) -> Transport:
        m = self.s.mqtt
        return MqttTransport(
            m.address(), spec, version=m.mqtt_version, ca_file=m.ca_file,
            keepalive=int(min(60.0, max(5.0, self.s.presence_interval))),
        )  # fmt: skip

    # == startup ===================================================================================

    async def startup(self) -> None:
        s = self.s
        self.manifest = await asyncio.to_thread(_manifest, s.manifest)
        key = load_key(self.manifest, self.me, s.key_file)
        self.session = Session(
            self.manifest, self.me, prefix=s.mqtt.topic_prefix, key=key, relay=True,
            config=SessionConfig(peer_timeout=3 * s.presence_interval),
        )  # fmt: skip
        datadir = await asyncio.to_thread(lambda: DataDir(Path(s.data_dir).expanduser()))
        await asyncio.to_thread(datadir.write_manifest, self.manifest)
        self.store = StoreThread(await asyncio.to_thread(datadir.open_store, self.manifest))
        await self.store.call(self.store.store.load_log, self.session.log)
        topics = self.session.topics
        self.transport = self._make_transport(
            TransportSpec(
                client_id=f"seedswarm-{self.manifest.name}-{self.me}",
                subscriptions=self.session.subscriptions(time.monotonic()),
                on_message=self._on_message,
                will=self.session.will(),
                aliases=(topics.bundles(self.me), topics.presence(self.me)),
                on_overflow=lambda topic: self.session.overloaded(topic, "incoming queue full"),
            )
        )
        self.http_url = await self._start_http(s.http)
        self.session.http = self.http_url
        self.phase = "running"
        log.info(
            "%s: relaying run %s (%s) every %.2fs, status at %s", self.me,
            self.session.run_id.hex(), self.manifest.name, s.interval, self.http_url,
        )  # fmt: skip

    async def _start_http(self, listen: str) -> str:
        app = web.Application()
        app.add_routes([web.get("/healthz", self._healthz), web.get("/status", self._status)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = parse_listen(listen)
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.s.advertise or f"http://{host}:{bound}"

    # == run =======================================================================================

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        code = 0
        try:
            await self.startup()
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(job(), name=name)
                    for name, job in (
                        ("forward", self._forward),
                        ("writer", self._writer),
                        ("responder", self._responder),
                        ("heartbeat", self._heartbeat),
                        ("sync", self._sync),
                    )
                ]
                transport = tg.create_task(self.transport.run(), name="transport")
                await self._stop.wait()
                self.phase = "stopping"
                for t in tasks:
                    t.cancel()
                if self.transport.connected.is_set():
                    self.transport.publish(self.session.presence(steps=0, loss=None, alive=False))
                    await self.transport.drain(5.0)
                self.transport.close()
                await transport
        except* ConfigError as eg:
            self.error, code = str(eg.exceptions[0]), 2
        except* SeedswarmError as eg:
            self.error, code = str(eg.exceptions[0]), 1
        finally:
            self.phase = "stopped"
            if hasattr(self, "_runner"):
                await self._runner.cleanup()
            if hasattr(self, "store"):
                await asyncio.to_thread(self.store.close)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        return code

    # -- inbound --------------------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        """The session checks everything; what it took without a drop is forwarded as it came,
        what it took into its log is stored."""
        now = time.monotonic()
        events = self.session.receive(topic, payload, now)
        dropped = False
        for e in events:
            if isinstance(e, Dropped):
                dropped = True
            elif isinstance(e, FrameAccepted | Retracted):
                # a retraction: its author is back, its copy replaces the provisional one
                self._writes.put_nowait(
                    Stored(e.frame, e.body, e.provisional) if isinstance(e, FrameAccepted) else e
                )
            elif isinstance(e, WantReceived):
                self._wants.append(e)
                self._wake_responder.set()
            elif isinstance(e, VvRequested):
                self.transport.publish(self.session.vv(e.requester))
        parts = topic.rsplit("/", 2)
        if dropped or len(parts) != 3 or parts[1] not in (RECORDS, PRESENCE) or not payload:
            return
        if self._pending_bytes + len(payload) > MAX_PENDING_BYTES:
            self.overflow += 1  # nodes' gap filling fetches it from its author
            return
        self._pending.append((parts[2], payload))
        self._pending_bytes += len(payload)
        if parts[1] == RECORDS:
            self.frames_forwarded += 1
        else:
            self.presences_forwarded += 1

    async def _writer(self) -> None:
        """The store gets frames and retractions in the order the session took them."""
        while True:
            batch = [await self._writes.get()]
            while not self._writes.empty():
                batch.append(self._writes.get_nowait())
            frames: list[Stored] = []
            for item in batch:
                if isinstance(item, Stored):
                    frames.append(item)
                    continue
                if frames:
                    await self.store.call(self.store.store.append, frames)
                    frames = []
                await self.store.call(self.store.store.retract, item.node, item.first_seq)
            if frames:
                await self.store.call(self.store.store.append, frames)

    # -- outbound -------------------------------------------------------------------------------

    async def _forward(self) -> None:
        """Every interval, what came in, in bundles; its own presence when nothing did."""
        topic = self.session.topics.bundles(self.me)
        while True:
            await asyncio.sleep(self.s.interval)
            if not self.transport.connected.is_set():
                continue
            for bundle in self._bundles():
                self.transport.publish(Outgoing(topic, bundle, "bundle"))
                self.bundles_published += 1
                self.bytes_forwarded += len(bundle)

    def _bundles(self) -> list[bytes]:
        out: list[bytes] = []
        entries: list[tuple[str, bytes]] = []
        size = 1
        while self._pending:
            node, payload = self._pending[0]
            cost = 1 + len(node) + 3 + len(payload)
            if entries and size + cost > MAX_BUNDLE_BYTES:
                out.append(encode_bundle(entries))
                entries, size = [], 1
            self._pending.popleft()
            self._pending_bytes -= len(payload)
            entries.append((node, payload))
            size += cost
        if not entries and not out:
            # nothing came: its own presence, the heartbeat nodes watch (bundles have entries)
            entries = [(self.me, self.session.presence(steps=0, loss=None).payload)]
        if entries:
            out.append(encode_bundle(entries))
        return out

    async def _responder(self) -> None:
        while True:
            if not self._wants:
                self._wake_responder.clear()
                await self._wake_responder.wait()
                continue
            want = self._wants.popleft().want
            bodies = await self.store.call(
                self.store.store.frames_for, want.node, want.first, want.count
            )
            for m in self.session.answer(want, bodies):
                self.transport.publish(m)

    async def _heartbeat(self) -> None:
        while True:
            self._presence_due.clear()
            if self.transport.connected.is_set():
                self.transport.publish(self.session.presence(steps=0, loss=None))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.s.presence_interval):
                    await self._presence_due.wait()

    async def _sync(self) -> None:
        """Keep its own log whole (it answers wants from it), notice silent peers."""
        await self.transport.connected.wait()
        self._presence_due.set()
        while True:
            now = time.monotonic()
            self.session.tick(now)
            if self.transport.connected.is_set():
                for m in self.session.wants(now):
                    self.transport.publish(m)
            await asyncio.sleep(SYNC_EVERY)

    # -- status ---------------------------------------------------------------------------------

    def status(self) -> RelayStatus:
        ss = self.session.statistics()
        tr = self.transport.statistics()
        return RelayStatus(
            relay=self.me,
            run_id=self.session.run_id.hex(),
            run=self.manifest.name,
            phase=self.phase,
            peers=self.session.live_peers(time.monotonic()),
            frames_forwarded=self.frames_forwarded,
            presences_forwarded=self.presences_forwarded,
            bundles_published=self.bundles_published,
            bytes_forwarded=self.bytes_forwarded,
            records_held=self.session.log.held_count(),
            dropped={r: dict(c) for r, c in ss.dropped.items()},
            dropped_overflow=self.overflow,
            broker=asdict(tr),
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "phase": self.phase})

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(asdict(self.status()))
