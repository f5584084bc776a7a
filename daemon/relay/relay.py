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

A relay is a peer without a model: the session driver of every peer (daemon/peer/driver.py:
its session checks what it forwards exactly as a node checks what it takes; its store keeps
the log, so it answers wants like any holder: a third party's copy, taken by nodes only while
the author is away), plus a bundler (bundler.py), which is all that is its own. It never
listens to bundles (no relay loops) and never writes records.

It stops in a node's order: it stops reading (the batch in hand is stored: no frame it
accepted is lost), publishes what waits for the next bundle, says goodbye, and drains the
outbox for ``--drain-timeout`` seconds before it disconnects.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict
from pathlib import Path

from seedswarm.daemon.errors import ConfigError
from seedswarm.daemon.peer.driver import DriverConfig, Received, SessionDriver
from seedswarm.daemon.peer.identity import load_key, read_manifest
from seedswarm.daemon.peer.lifecycle import Lifecycle, Stages, Supervised
from seedswarm.daemon.settings import RelaySettings
from seedswarm.daemon.status.schema import RelayStatus
from seedswarm.daemon.status.server import StatusServer
from seedswarm.daemon.store.datadir import DataDir
from seedswarm.daemon.store.log_store import StoreThread
from seedswarm.daemon.transport import keepalive_for, transport_factory
from seedswarm.protocol.events import Outgoing
from seedswarm.protocol.log import OrderedLog
from seedswarm.protocol.session import Session, SessionConfig

from .bundler import Bundler

log = logging.getLogger("seedswarm.relay")


class Relay(Supervised):
    def __init__(self, settings: RelaySettings) -> None:
        self.s = settings
        self.me = settings.relay
        self.life = Lifecycle(
            f"relay {self.me}", Stages(shutdown=settings.shutdown_timeout or None)
        )
        self.http_url = ""

    # == the lifecycle (run, phase, error, request_stop: Supervised) ===========================

    async def startup(self) -> None:
        s = self.s
        self.manifest = await asyncio.to_thread(read_manifest, s.manifest)
        if self.me not in self.manifest.relays:
            named = ", ".join(self.manifest.relays) or "none"
            raise ConfigError(
                f"the run {self.manifest.name} does not name {self.me} among its relays "
                f"(it names {named}), so no node would follow it: create the run with "
                f"--relays {self.me} (docs/PROTOCOL.md §9)"
            )
        key = load_key(self.manifest, self.me, s.key_file)
        datadir = await asyncio.to_thread(lambda: DataDir(Path(s.data_dir).expanduser()))
        await asyncio.to_thread(datadir.write_manifest, self.manifest)
        self.store = StoreThread(
            await asyncio.to_thread(datadir.open_store, self.manifest), datadir.log_path
        )
        held_log = OrderedLog()  # read before the session is made from it
        await self.store.call(self.store.store.load_log, held_log)
        self.session = Session(
            self.manifest, self.me, prefix=s.mqtt.topic_prefix, key=key, relay=True,
            config=SessionConfig(peer_timeout=3 * s.presence_interval), log=held_log,
        )  # fmt: skip
        mqtt = s.mqtt
        self.driver = SessionDriver(
            self.session,
            transport_factory(
                mqtt.address(), version=mqtt.mqtt_version, ca_file=mqtt.ca_file,
                keepalive=keepalive_for(s.presence_interval),
            ),
            self.store,
            self,
            DriverConfig(presence_interval=s.presence_interval),
            client_id=f"seedswarm-{self.manifest.name}-{self.me}",
        )  # fmt: skip
        self.bundler = Bundler(self.driver, s.interval, lambda: self.presence(alive=True).payload)
        self.http = StatusServer(self)
        self.http_url = await self.http.start(s.http, advertise=s.advertise)
        self.session.http = self.http_url
        log.info(
            "%s: relaying run %s (%s) every %.2fs, status at %s", self.me,
            self.session.run_id.hex(), self.manifest.name, s.interval, self.http_url,
        )  # fmt: skip

    async def main(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self.driver.start(tg)
            bundles = tg.create_task(self.bundler.run(), name="bundler")
            await self.life.stop.wait()
            await self.driver.stop_reading()  # what it accepted is stored
            bundles.cancel()
            self.bundler.flush()  # what waits for the next bundle goes out before the goodbye
            await self.driver.stop(self.s.drain_timeout)

    async def teardown(self) -> None:
        http: StatusServer | None = getattr(self, "http", None)
        if http is not None:
            await http.stop()
        store: StoreThread | None = getattr(self, "store", None)
        if store is not None:
            await asyncio.to_thread(store.close)

    # == the Role of the driver =================================================================

    def presence(self, *, alive: bool) -> Outgoing:
        return self.session.presence(steps=0, loss=None, alive=alive)

    def received(self, batch: Received) -> None:
        self.bundler.take(batch)

    # == what the HTTP endpoint reads (StatusSource) ============================================

    @property
    def ready(self) -> bool:
        return self.phase == "running" and self.driver.connected.is_set()

    async def status(self, *, fresh: bool) -> RelayStatus:
        ss = self.session.statistics()
        b = self.bundler.statistics()
        return RelayStatus(
            relay=self.me,
            run_id=self.session.run_id.hex(),
            run=self.manifest.name,
            phase=self.phase,
            peers=self.session.live_peers(time.monotonic()),
            frames_forwarded=b.frames_forwarded,
            presences_forwarded=b.presences_forwarded,
            bundles_published=b.bundles_published,
            bytes_forwarded=b.bytes_forwarded,
            records_held=self.session.log.held_count(),
            dropped={r: dict(c) for r, c in ss.dropped.items()},
            dropped_overflow=b.overflow,
            repairs=ss.repairs,
            content_mismatches=ss.content_mismatches,
            broker=asdict(self.driver.transport.statistics()),
            inbox=self.driver.statistics(),
        )
