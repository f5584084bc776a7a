"""The node daemon: train with peers through a broker, keep the log, serve status.

A node is a session driver (daemon/peer/driver.py) plus what is its own:

    driver: transport -> inbox -> Session.receive -> events -> store (durable) -> Node.received
    Node.received -> trainer: replica.apply / replica.step on the model thread (node/trainer.py)
    trainer: own bytes -> flusher: Session.seal -> store (durable) -> transport (node/flusher.py)
    trainer: now and then a snapshot (node/snapshotter.py), served to joiners (node/join.py)
    trainer: the curves of its steps and evaluations, as TensorBoard files (node/curves.py)
    join: after the first connection, a peer's snapshot when that beats replaying the log

The node only moves bytes between its parts; what a message means is decided by the sans-IO
session (protocol/session.py), and everything torch does happens in the replica
(model/replica.py) on the model thread.

Phases (daemon/peer/lifecycle.py): ``startup`` (settings, model, store, log, snapshot, catch-up,
HTTP), ``main`` (one task group owns every task, the driver's included), then, once stopped, the
node's order: stop stepping, flush and publish what is written, snapshot, say goodbye, drain,
disconnect; ``teardown`` closes HTTP, the store and the model thread.

One owner per resource: the task group owns the tasks, ``ModelThread`` the model,
``StoreThread`` the SQLite connection, and the event loop everything else (session, counters),
so no locks are needed. Tasks wait on events, never on polls.

Invariants worth knowing:
  * Peer records reach the model only once they are durable (the trainer's ``durable``: what
    the store has acknowledged). An own record is applied in the pass of its step and written
    by the flusher a moment later; it is published, and a snapshot that contains it saved, only
    after that write. A crash in between loses records nobody has seen, so their seqs may be
    taken again.
  * SIGINT/SIGTERM stop the node; SIGUSR2 only ends its stepping (the swarm launcher uses it
    to let nodes settle); SIGUSR1 prints every thread's stack (daemon/cli/main.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Sequence
from typing import Any

import torch

from seedswarm.daemon.peer.driver import DriverConfig, Received, SessionDriver
from seedswarm.daemon.peer.identity import load_key
from seedswarm.daemon.peer.lifecycle import Lifecycle, Stages, Supervised
from seedswarm.daemon.settings import NodeSettings
from seedswarm.daemon.status.node_routes import LogPage, NodeRoutes
from seedswarm.daemon.status.schema import NodeStatus
from seedswarm.daemon.status.server import StatusServer
from seedswarm.daemon.store import snapshots
from seedswarm.daemon.store.datadir import DataDir, NodeInputs
from seedswarm.daemon.store.log_store import SqliteLogStore, Stored, StoreThread
from seedswarm.daemon.store.snapshots import SnapshotLayout
from seedswarm.daemon.transport import keepalive_for, transport_factory
from seedswarm.daemon.transport.trouble import probe
from seedswarm.model.replica import Replica
from seedswarm.protocol.events import Outgoing
from seedswarm.protocol.log import OrderedLog, OrderKey
from seedswarm.protocol.session import Session, SessionConfig

from .curves import Curves
from .download import sweep
from .evaluation import EVALS, EvalHistory
from .flusher import Flusher
from .join import INCOMING, JoinProgress, SnapshotJoin, snapshot_routes
from .model_thread import ModelThread
from .report import NodeReport, SessionReport, compose, pending
from .snapshotter import Snapshotter
from .startup import (
    batch_size_for,
    check_batch_growth,
    held_out_examples,
    open_engine,
    plan_run,
    resolve_device,
    say_resuming,
    training_examples,
)
from .trainer import Trainer

log = logging.getLogger("seedswarm.node")

PROGRESS_EVERY = 10.0  # seconds between progress lines in the log
WATCH_EVERY = 1.0  # seconds between two looks at the parent process
PARENT_ENV = "SEEDSWARM_PARENT_PID"  # set by `seedswarm swarm`: stop if that process dies


class Node(Supervised):
    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self.me = settings.node
        self.datadir = DataDir(settings.data_path)
        self.life = Lifecycle(
            f"node {self.me}",
            Stages(shutdown=settings.shutdown_timeout or None),
            extra_signals={signal.SIGUSR2: self.request_finish},
        )
        self.join = JoinProgress(settings.join)
        self.http_url = ""
        self._stored = asyncio.Event()  # frames reached the store (the join waits on it)
        self._finish_early = False  # SIGUSR2 before the trainer exists

    # == the lifecycle (run, phase, error, request_stop: Supervised) ===========================

    def request_finish(self) -> None:
        """SIGUSR2: take no more own steps, as if --steps had been reached; keep applying
        peers' records and serving. The swarm launcher uses it to stop in agreement."""
        trainer: Trainer | None = getattr(self, "trainer", None)
        if trainer is None:
            self._finish_early = True
        else:
            trainer.request_finish()

    async def startup(self) -> None:
        s = self.settings
        device = resolve_device(s.local.device)
        self.model = ModelThread(torch_threads=s.torch_threads)
        plan = plan_run(s.run)
        # while the model loads, a look at the broker: a wrong URL shows in seconds, not after
        # the model (the transport keeps trying, and says why, once it starts)
        engine, _ = await asyncio.gather(
            self.model.run(
                open_engine, plan, s.run, device=device, kernel=s.local.kernel,
                kernel_threads=s.torch_threads,
            ),
            self._look_at_broker(),
        )  # fmt: skip
        engine.task_model.amp_dtype = torch.bfloat16 if s.local.amp and device != "cpu" else None
        self.manifest = engine.manifest
        check_batch_growth(s.local.batch_growth, self.manifest)
        key = load_key(self.manifest, self.me, s.key_file)
        if key is None and s.key_file:
            log.warning("the run is in open mode (no keys in the manifest); --key-file is unused")
        await asyncio.to_thread(self.datadir.write_manifest, self.manifest)
        inputs = NodeInputs(
            self.me, NodeInputs.path_of(s.run.data), NodeInputs.path_of(s.eval), s.eval_limit
        )
        await asyncio.to_thread(self.datadir.write_inputs, inputs)
        self.curves = await asyncio.to_thread(Curves, self.datadir.root)  # TensorBoard files
        self.store = StoreThread(
            await asyncio.to_thread(SqliteLogStore, self.datadir.log_path), self.datadir.log_path
        )
        await self.store.call(self.store.store.bind, self.manifest)
        config = SessionConfig(
            frame_records=s.frame_records,
            peer_timeout=3 * s.presence_interval,
            use_relays=s.follow_relays == "auto",
        )
        # the log first: the session counts the own records it holds as stored (own_stored)
        held_log = OrderedLog()
        await self.store.call(self.store.store.load_log, held_log)
        self.session = session = Session(
            self.manifest, self.me, prefix=s.mqtt.topic_prefix, key=key, config=config, log=held_log
        )
        held = session.log.held()
        examples = await self.model.run(training_examples, plan, engine, s.local.shard_pair)
        self.replica = Replica(
            engine,
            self.me,
            examples,
            batch_size=batch_size_for(s.local.batch_size, self.manifest),
            batch_growth=s.local.batch_growth,
        )
        restored = await self.model.run(
            snapshots.restore, self.replica, self.datadir.snapshots, held
        )
        caught = await self.model.run(self.replica.catch_up, session.log)
        self.snapshots = Snapshotter(self.me, self.datadir, session.run_id)
        await self.snapshots.find_newest()
        # what a join left: only the partial download a join resumes stays, and only if
        # this node may join by a snapshot (the join empties the folder when it ends)
        swept = await asyncio.to_thread(
            sweep, self.datadir.root / INCOMING, keep_part=s.join != "replay"
        )
        if swept:
            log.info("%s: deleted %d files a join left in %s/", self.me, swept, INCOMING)
        evals, eval_examples = None, None
        if s.eval:
            eval_examples = await self.model.run(held_out_examples, s.eval, engine, s.eval_limit)
            evals = await asyncio.to_thread(EvalHistory, self.datadir.root / EVALS, s.eval_every)
        log.info("%s: restored %d records from a snapshot, replayed %d", self.me, restored, caught)
        say_resuming(
            self.me, self.datadir, held.get(self.me, 0) // engine.records_per_step, s.steps
        )
        mqtt = s.mqtt
        self.driver = SessionDriver(
            session,
            transport_factory(
                mqtt.address(), version=mqtt.mqtt_version, ca_file=mqtt.ca_file,
                keepalive=keepalive_for(s.presence_interval),
            ),
            _Holder(self),
            self,
            DriverConfig(presence_interval=s.presence_interval),
            client_id=f"seedswarm-{self.manifest.name}-{self.me}",
        )  # fmt: skip
        self.flusher = Flusher(
            session, self.store, self.driver.publish, frame_records=s.frame_records,
            max_latency=s.max_latency,
        )  # fmt: skip
        self.trainer = Trainer(
            s, self.replica, self.model, session.log, self.flusher, self.snapshots,
            presence_due=self.driver.presence_due, evals=evals, eval_examples=eval_examples,
            curves=self.curves,
        )  # fmt: skip
        self.trainer.durable = {n: e for n, e in held.items() if n != self.me}
        self.trainer.stats.restored_records, self.trainer.stats.replayed_records = restored, caught
        if self._finish_early:
            self.trainer.request_finish()
        routes = [*NodeRoutes(self).routes(), *snapshot_routes(self.snapshots)]
        self.http = StatusServer(self, routes=routes)
        self.http_url = await self.http.start(s.http, advertise=s.advertise)
        session.http = self.http_url
        log.info(
            "%s: run %s (%s), status at %s", self.me, session.run_id.hex(), self.manifest.name,
            self.http_url,
        )  # fmt: skip

    async def _look_at_broker(self) -> None:
        problem = await probe(self.settings.mqtt.address())
        if problem is not None:
            log.warning("%s: broker: %s", self.me, problem)

    async def main(self) -> None:
        """Every task in one group; once stopped, wind down in order: step, flush, snapshot,
        goodbye, drain, disconnect."""
        async with asyncio.TaskGroup() as tg:
            self.driver.start(tg)
            own = [
                tg.create_task(self._join(), name="join"),
                tg.create_task(self.trainer.run(), name="trainer"),
                tg.create_task(self.flusher.run(), name="flusher"),
                tg.create_task(self._watch(), name="watch"),
            ]
            await self.life.stop.wait()
            self.trainer.request_stop()
            await self.trainer.done.wait()
            await self.flusher.done.wait()
            if self.trainer.since_snapshot:
                await self.trainer.snapshot()  # restart from here instead of replaying the tail
            await self.driver.stop(self.settings.drain_timeout)
            for task in own:
                task.cancel()

    async def teardown(self) -> None:
        http: StatusServer | None = getattr(self, "http", None)
        if http is not None:
            await http.stop()
        store: StoreThread | None = getattr(self, "store", None)
        if store is not None:
            await asyncio.to_thread(store.close)
        curves: Curves | None = getattr(self, "curves", None)
        if curves is not None:
            await asyncio.to_thread(curves.close)
        model: ModelThread | None = getattr(self, "model", None)
        if model is not None:
            model.close()

    # == the Role of the driver =================================================================

    def presence(self, *, alive: bool) -> Outgoing:
        served = self.snapshots.served
        return self.session.presence(
            steps=self.trainer.own_steps,
            loss=self.trainer.stats.recent_loss(10),
            alive=alive,
            snapshot=served.advert() if served is not None else None,
        )

    def received(self, batch: Received) -> None:
        if batch.accepted or batch.retracted:
            self.trainer.stored(batch.ends, list(batch.retracted))
            self._stored.set()

    # == joining and watching ===================================================================

    async def _join(self) -> None:
        """After the first connection, listen a moment (the retained presence of every peer
        comes at once), catch up by a peer's snapshot when that is much faster than replaying
        (node/join.py), then take the first step. Nothing a peer says stops a node joining."""
        await self.driver.connected.wait()
        self.driver.presence_due()
        self.join.began = time.monotonic()
        await asyncio.sleep(self.settings.join_wait)
        try:
            if self.settings.join != "replay":
                await self._join_by_snapshot()
            else:
                self.join.reason = "--join replay"
        except Exception as exc:
            # a join only saves replay time: whatever goes wrong in it, the node replays
            log.exception("%s: the join failed; catching up by replay", self.me)
            self.join.reason = f"the join failed ({type(exc).__name__}: {exc}); replaying"
        finally:
            self.join.state = "done" if self.join.state == "done" else "replay"
            self.join.ended = time.monotonic()
            self.trainer.joined.set()
        self.trainer.wake()

    async def _join_by_snapshot(self) -> None:
        if self.settings.join == "auto":
            rate = await self.model.run(self.replica.apply_rate)
            # replaying costs a pass over the weights per record batch; a snapshot costs its
            # size once: take one when replay would take a minute more than that
            min_records = int(rate * 60)
        else:
            min_records = 1
        layout = await self.model.run(_layout, self.replica)
        joiner = SnapshotJoin(
            replica=self.replica, model=self.model, session=self.session,
            datadir=self.datadir, progress=self.join, audit_blocks=self.settings.audit_blocks,
            quorum=self.settings.snapshot_quorum, stored=self._stored, layout=layout,
            retractions=self.trainer, snapshots=self.snapshots,
        )  # fmt: skip
        snap = await joiner.run(min_records)
        if snap is None:
            log.info("%s: catching up by replay (%s)", self.me, self.join.reason)
            return
        self.trainer.applied = self.replica.vv
        self.trainer.stats.restored_records = snap.records
        self.driver.presence_due()
        log.info(
            "%s: %s; %d records from it, the rest replayed", self.me, self.join.reason, snap.records
        )

    async def before_given_back(self, node: str, first: int) -> None:
        """Before the store gives back records: the snapshots that hold them go."""
        if await self.snapshots.invalidate(node, first):
            self.driver.presence_due()  # it no longer serves the one it advertised

    async def _watch(self) -> None:
        """Report progress in the log; stop when the process that started the node is gone."""
        parent = os.environ.get(PARENT_ENV)
        last_report = 0.0
        while True:
            now = time.monotonic()
            if now - last_report >= PROGRESS_EVERY:
                last_report = now
                self._report_progress()
            if parent and not self.life.stop.is_set() and os.getppid() != int(parent):
                log.warning("%s: the process that started this node is gone; stopping", self.me)
                self.request_stop()
            await asyncio.sleep(WATCH_EVERY)

    def _report_progress(self) -> None:
        t = self.trainer
        loss = t.stats.recent_loss()
        limit = f"/{t.max_steps}" if t.max_steps >= 0 else ""
        log.info(
            "%s: steps %d%s, loss %s, records applied %d, pending %d, peers %d, broker %s",
            self.me, t.own_steps, limit, "-" if loss is None else f"{loss:.4f}",
            sum(t.applied.values()), pending(self.session.log.held(), t.applied),
            self.session.live_peers(time.monotonic()), self.driver.transport.statistics().state,
        )  # fmt: skip
        if not t.joined.is_set() and self.join.state != "waiting":
            log.info("%s: joining: %s", self.me, self.join.line())

    # == what the HTTP endpoint reads (StatusSource, NodeSource) ================================

    @property
    def ready(self) -> bool:
        return (
            self.phase == "running"
            and self.trainer.joined.is_set()
            and self.driver.connected.is_set()
        )

    async def status(self, *, fresh: bool) -> NodeStatus:
        engine = self.replica.engine
        fingerprint = await self.trainer.fingerprint(fresh=fresh)
        evals = self.trainer.evals
        return compose(
            NodeReport(
                node=self.me,
                run=self.manifest.name,
                run_id=self.session.run_id.hex(),
                mode="open" if self.manifest.open_mode else "signed",
                phase=self.phase,
                ready=self.ready,
                device=str(engine.device),
                kernel=engine.backend.name,
                http=self.http_url,
                http_refused=self.http.refused,
                fingerprint=fingerprint,
                session=SessionReport.of(self.session, time.monotonic()),
                transport=self.driver.transport.statistics(),
                trainer=self.trainer.statistics(),
                flusher=self.flusher.statistics(),
                snapshots=self.snapshots.statistics(),
                join=self.join.statistics(),
                store=self.store.statistics(),
                inbox=self.driver.statistics(),
                evals=evals.statistics() if evals is not None else None,
                foreign_runs=self.driver.foreign_runs(),
                started_by="swarm" if os.environ.get(PARENT_ENV) else "node",
            )
        )

    def history(self, since: float) -> dict[str, Any]:
        """The dashboard's curves after ``since`` (unix time): own steps (unix time, own
        records, loss, records applied) and evaluations."""
        steps = [list(h) for h in self.trainer.stats.history if h[0] > since]
        points = self.trainer.evals.points if self.trainer.evals else []
        evals = [dataclasses.asdict(p) for p in points if p.unix_time > since]
        return {"steps": steps, "evals": evals}

    def log_page(self, after: OrderKey | None, limit: int) -> LogPage:
        records = []
        for r in self.session.log.ordered(after):
            records.append({"clock": r.clock, "node": r.node, "seq": r.seq, "q": r.q})
            if len(records) >= limit:
                break
        last = records[-1] if len(records) == limit else None
        cursor = f"{last['clock']}:{last['node']}:{last['seq']}" if last else None
        return LogPage(records, cursor, self.session.log.held_count())


def _layout(replica: Replica) -> SnapshotLayout:
    """Model thread: what a snapshot of this run is (its tensors' names and shapes)."""
    return SnapshotLayout.of((name, p.shape) for name, p in replica.engine.trainable)


class _Holder:
    """The node's store as the driver keeps frames in it (daemon/peer/driver.py ``Holder``),
    and one duty more: before records are given back, the snapshots holding them are deleted
    (node/snapshotter.py), so no restart trusts, and no joiner is served, a state with records
    the log no longer holds."""

    def __init__(self, node: Node) -> None:
        self._node = node

    async def append(self, frames: Sequence[Stored]) -> None:
        await self._node.store.append(frames)

    async def retract(self, node: str, first: int) -> None:
        await self._node.before_given_back(node, first)
        await self._node.store.retract(node, first)

    async def frames_for(self, node: str, first: int, count: int) -> list[bytes]:
        return await self._node.store.frames_for(node, first, count)
