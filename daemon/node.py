"""The node daemon: train with peers through a broker, keep the log, serve status.

The node only moves bytes between its parts; what a message means is decided by the sans-IO
session (protocol/session.py), and everything torch does happens in the replica
(model/replica.py) on the model thread:

    transport -> inbox -> session.receive -> events:
        FrameAccepted -> store (durable) -> trainer -> replica.step / replica.apply
        WantReceived  -> store lookup -> session.answer -> transport
    trainer: replica.step -> own bytes -> flusher: session.seal -> store (durable) -> transport
    heartbeat: session.presence / wants / tick -> transport

Phases, as in uvicorn: ``startup`` (settings, model, store, log, snapshot, catch-up, HTTP),
``run`` (one task group owns every task), ``shutdown`` (stop stepping, flush and publish what
is written, snapshot, say goodbye, disconnect; then the tasks end).

One owner per resource: the task group owns the tasks, ``ModelThread`` the model,
``StoreThread`` the SQLite connection, and the event loop everything else (session, counters),
so no locks are needed. Tasks wait on events, never on polls.

Invariants worth knowing:
  * Peer records reach the model only once they are durable (``_durable``: what the store has
    acknowledged). An own record is applied in the pass of its step and written by the flusher
    a moment later; it is published, and a snapshot that contains it saved, only after that
    write. A crash in between loses records nobody has seen, so their seqs may be taken again.
  * Snapshot files are written by a worker thread (disk I/O only, on tensors the model thread
    copied out), so a slow disk never stalls the model.
  * SIGINT/SIGTERM stop the node; SIGUSR2 only ends its stepping (the swarm launcher uses it
    to let nodes settle); SIGUSR1 prints every thread's stack (daemon/cli.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from seedswarm.model.replica import Replica, StepOutcome, pending_records
from seedswarm.protocol.errors import DecodeError, SeedswarmError
from seedswarm.protocol.log import OrderKey
from seedswarm.protocol.manifest import Manifest
from seedswarm.protocol.messages import SnapshotAdvert
from seedswarm.protocol.session import (
    Dropped,
    ForeignRun,
    FrameAccepted,
    Outgoing,
    PeerGone,
    PeerSeen,
    Retracted,
    Session,
    SessionConfig,
    VvRequested,
    WantReceived,
)
from seedswarm.protocol.topics import Route
from seedswarm.protocol.vv import digest

from . import snapshots
from .datadir import DataDir
from .errors import ConfigError, StoreError
from .evaluation import EVALS, EvalHistory, evaluate
from .http_status import LogPage, StatusServer
from .join import JoinProgress, SnapshotJoin, file_sha256, snapshot_routes
from .progress import Stats
from .report import compose_status, pending
from .runspec import (
    held_out_examples,
    load_key,
    open_engine,
    plan_run,
    resolve_device,
    training_examples,
)
from .settings import NodeSettings
from .status import NodeStatus
from .store import LogStore, SqliteLogStore, Stored, StoreThread
from .transport import Transport, TransportFactory, TransportSpec, mqtt_factory
from .worker import ModelThread

log = logging.getLogger("seedswarm.node")

INBOX = 20_000  # messages waiting for the session; beyond this they are dropped (overload)
INBOX_BYTES = 64 << 20  # ... or beyond this many payload bytes (a flood of 1 MiB bundles)
INGEST_BATCH = 512
APPLY_BATCH = 4096
PROGRESS_EVERY = 10.0  # seconds between progress lines in the log
SYNC_EVERY = 1.0  # seconds between two looks at what is missing (cheap: only open nodes)
PARENT_ENV = "SEEDSWARM_PARENT_PID"  # set by `seedswarm swarm`: stop if that process dies

StoreFactory = Callable[[Path], LogStore]


class Node:
    def __init__(
        self,
        settings: NodeSettings,
        *,
        transport: TransportFactory | None = None,
        store: StoreFactory | None = None,
    ) -> None:
        self.settings = settings
        self.me = settings.node
        self.datadir = DataDir(settings.data_path)
        self.max_steps = settings.steps
        self.stats = Stats()
        self.phase = "starting"
        self.joined = asyncio.Event()
        self.http_url = ""
        self.exit_code = 0
        self.error = ""
        self.applied: dict[str, int] = {}  # the replica's vv, as of its last pass (a copy)
        self.fingerprint_cache: tuple[str, str] = ("", "")  # (vv digest, fingerprint)
        self._make_transport = transport or mqtt_factory(
            settings.mqtt.address(),
            version=settings.mqtt.mqtt_version,
            ca_file=settings.mqtt.ca_file,
            keepalive=settings.keepalive,
        )
        self._make_store: StoreFactory = store or SqliteLogStore
        self._durable: dict[str, int] = {}  # peer records the store has acknowledged
        self._unsealed: list[int] = []  # own bytes applied but not yet sealed into frames
        self._oldest_unsealed = 0.0  # when the first of them was stepped
        self._next_step_at = 0.0  # --step-interval: not before this (monotonic)
        self.evals: EvalHistory | None = None  # --eval: the history, and when the next is due
        self._eval_due = 0
        self.join = JoinProgress(settings.join)
        self._join_done = asyncio.Event()  # the trainer applies nothing before the join decided
        self._stored = asyncio.Event()  # frames reached the store (the join waits on it)
        self._served: tuple[snapshots.SnapshotInfo, str] | None = None  # newest, its SHA-256
        self._since_snapshot = 0
        self._foreign: set[bytes] = set()  # run ids of other manifests seen under our run name
        self._retracted: list[Retracted] = []  # for the trainer to un-apply
        self._inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=INBOX)
        self._inbox_bytes = 0  # of the payloads in the inbox
        self._wants: deque[WantReceived] = deque(maxlen=1000)
        self._stop = asyncio.Event()
        self._finish_requested = False  # SIGUSR2: take no more own steps
        self._wake_trainer = asyncio.Event()
        self._wake_flusher = asyncio.Event()  # own bytes are waiting to be sealed
        self._frame_full = asyncio.Event()
        self._wake_responder = asyncio.Event()
        self._own_durable = asyncio.Event()
        self._presence_due = asyncio.Event()  # something presence tells changed
        self._trainer_done = asyncio.Event()
        self._flusher_done = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # == startup ===================================================================================

    async def startup(self) -> None:
        s = self.settings
        device = resolve_device(s.local.device)
        self.model = ModelThread(torch_threads=s.torch_threads)
        plan = plan_run(s.run)
        engine = await self.model.run(
            open_engine,
            plan,
            s.run,
            device=device,
            kernel=s.local.kernel,
            kernel_threads=s.torch_threads,
        )
        engine.task_model.amp_dtype = torch.bfloat16 if s.local.amp and device != "cpu" else None
        self.manifest: Manifest = engine.manifest
        key = load_key(self.manifest, self.me, s.key_file)
        if key is None and s.key_file:
            log.warning("the run is in open mode (no keys in the manifest); --key-file is unused")
        await asyncio.to_thread(self.datadir.write_manifest, self.manifest)
        store = await asyncio.to_thread(self._make_store, self.datadir.log_path)
        self.store = StoreThread(store)
        await self.store.call(store.bind, self.manifest)
        config = SessionConfig(
            frame_records=s.frame_records,
            peer_timeout=3 * s.presence_interval,
            use_relays=s.relays == "auto",
        )
        self.session = Session(
            self.manifest, self.me, prefix=s.mqtt.topic_prefix, key=key, config=config
        )
        await self.store.call(store.load_log, self.session.log)
        held = self.session.log.held()
        self._durable = {n: e for n, e in held.items() if n != self.me}
        examples = await self.model.run(training_examples, plan, engine, s.local.shard_pair)
        self.replica = Replica(engine, self.me, examples, batch_size=s.local.batch_size)
        restored = await self.model.run(
            snapshots.restore, self.replica, self.datadir.snapshots, held
        )
        caught = await self.model.run(self.replica.catch_up, self.session.log)
        self.applied = self.replica.vv
        self.stats.restored_records, self.stats.replayed_records = restored, caught
        newest = await asyncio.to_thread(self.datadir.latest_snapshot, self.session.run_id)
        if newest is not None:
            self._served = (newest, await asyncio.to_thread(file_sha256, newest.path))
        if s.eval:
            self._eval_examples = await self.model.run(
                held_out_examples, s.eval, engine, s.eval_limit
            )
            self.evals = await asyncio.to_thread(
                EvalHistory, self.datadir.root / EVALS, s.eval_every
            )
            self._eval_due = self.evals.next_due(sum(self.applied.values()))
        log.info("%s: restored %d records from a snapshot, replayed %d", self.me, restored, caught)
        topics = self.session.topics
        self.transport: Transport = self._make_transport(
            TransportSpec(
                client_id=f"seedswarm-{self.manifest.name}-{self.me}",
                subscriptions=self.session.subscriptions(time.monotonic()),
                on_message=self._on_message,
                will=self.session.will(),
                aliases=(topics.records(self.me), topics.presence(self.me)),
                on_drop=self._answer_dropped,
                on_overflow=lambda topic: self.session.overloaded(topic, "incoming queue full"),
            )
        )
        self.http = StatusServer(self, routes=snapshot_routes(self))
        self.http_url = await self.http.start(s.http, advertise=s.advertise)
        self.session.http = self.http_url
        self.phase = "running"
        log.info(
            "%s: run %s (%s), status at %s",
            self.me,
            self.session.run_id.hex(),
            self.manifest.name,
            self.http_url,
        )

    # == run =======================================================================================

    async def run(self, *, signals: bool = True) -> int:
        """Start up, run until stopped, shut down; returns the exit code. ``signals``: take
        SIGINT/SIGTERM (stop) and SIGUSR2 (finish) from the process (a daemon does)."""
        loop = asyncio.get_running_loop()
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2) if signals else ()
        for sig in handled:
            loop.add_signal_handler(
                sig, self.request_finish if sig == signal.SIGUSR2 else self.request_stop
            )
        try:
            await self.startup()
            async with asyncio.TaskGroup() as tg:
                for name, job in (
                    ("transport", self.transport.run),
                    ("ingest", self._ingest),
                    ("responder", self._responder),
                    ("join", self._join),
                    ("trainer", self._trainer),
                    ("flusher", self._flusher),
                    ("heartbeat", self._heartbeat),
                    ("sync", self._sync),
                ):
                    self._tasks.append(tg.create_task(job(), name=name))
                tg.create_task(self._shutdown(), name="shutdown")
        except* ConfigError as eg:
            self.error = str(eg.exceptions[0])
            self.exit_code = 2  # the user can fix this: a bad setting
        except* SeedswarmError as eg:
            self.error = str(eg.exceptions[0])  # e.g. the disk refused a write
            self.exit_code = 1
        finally:
            await self._teardown()
            for sig in handled:
                loop.remove_signal_handler(sig)
        return self.exit_code

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("%s: stopping", self.me)
        self._stop.set()
        self._join_done.set()  # a trainer still waiting for the join sees the stop
        self._wake_trainer.set()

    def request_finish(self) -> None:
        """SIGUSR2: take no more own steps, as if --steps had been reached; keep applying
        peers' records and serving. The swarm launcher uses it to stop in agreement."""
        self._finish_requested = True
        self._wake_trainer.set()

    # -- inbound ---------------------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        """Called by the transport for every message; the session reads it in ``_ingest``."""
        if self._inbox_bytes + len(payload) > INBOX_BYTES:
            self.session.overloaded(topic, "inbox full")
            return
        try:
            self._inbox.put_nowait((topic, payload))
        except asyncio.QueueFull:
            self.session.overloaded(topic, "inbox full")
            return
        self._inbox_bytes += len(payload)

    async def _ingest(self) -> None:
        """Feed the session; store what it accepted or retracted, in order; route the rest."""
        while True:
            batch = [await self._inbox.get()]
            while len(batch) < INGEST_BATCH and not self._inbox.empty():
                batch.append(self._inbox.get_nowait())
            self._inbox_bytes -= sum(len(p) for _, p in batch)
            now = time.monotonic()
            events = [e for t, p in batch for e in self.session.receive(t, p, now)]
            # the nodes whose prefix this batch moved: what the log holds of them is stored
            # once the batch is (per node, not the whole vector: O(frames), not O(swarm))
            touched: set[str] = set()
            stored: list[Stored] = []
            answered = False
            for event in events:
                if isinstance(event, FrameAccepted):
                    stored.append(Stored(event.frame, event.body, event.provisional))
                    touched.add(event.frame.node)
                    answered |= event.via_sync
                elif isinstance(event, Retracted):
                    await self._store(stored)
                    stored = []
                    await self.store.call(self.store.store.retract, event.node, event.first_seq)
                    self._retracted.append(event)
                    touched.add(event.node)
                else:
                    self._on_event(event)
            ends = {n: self.session.log.next_seq(n) for n in touched if n != self.me}
            await self._store(stored)
            if touched:
                for n, end in ends.items():
                    if end:
                        self._durable[n] = end
                    else:
                        self._durable.pop(n, None)
                self._wake_trainer.set()
                self._stored.set()
            if answered:
                # an answer to a want moved a prefix: ask for the next range right away, so a
                # late joiner catches up at round-trip speed, not heartbeat speed
                self._publish(self.session.wants(time.monotonic()))
            # a full inbox never awaits in get(): let the trainer and the transport have a turn
            await asyncio.sleep(0)

    async def _store(self, frames: list[Stored]) -> None:
        if frames:
            await self.store.call(self.store.store.append, frames)

    def _on_event(self, event: object) -> None:
        if isinstance(event, WantReceived):
            self._wants.append(event)
            self._wake_responder.set()
        elif isinstance(event, VvRequested):
            self.transport.publish(self.session.vv(event.requester))
        elif isinstance(event, Dropped):
            if event.loud:
                log.error("%s: rejected input from %s: %s", self.me, event.sender, event.detail)
            else:
                log.debug("%s: dropped from %s: %s", self.me, event.sender, event.detail)
        elif isinstance(event, ForeignRun):
            if event.run_id not in self._foreign and len(self._foreign) < 64:
                self._foreign.add(event.run_id)
                log.warning(
                    "%s: node %s under run name %r runs another manifest (run id %s, ours %s); "
                    "it is not in this run: check that every node has the same run settings",
                    self.me, event.sender, self.manifest.name, event.run_id.hex(),
                    self.session.run_id.hex(),
                )  # fmt: skip
        elif isinstance(event, PeerSeen):
            log.info("%s: peer %s is here", self.me, event.node)
        elif isinstance(event, PeerGone):
            log.info("%s: peer %s is gone%s", self.me, event.node, " (silent)" * event.silent)

    def _answer_dropped(self, item: Outgoing) -> None:
        route = _route(self.session, item.topic)
        self.session.drop("overload", route.to if route else "invalid", "the outbox is full")

    async def _responder(self) -> None:
        """Answer wants from the store, one at a time (the store has one thread anyway)."""
        while True:
            if not self._wants:
                self._wake_responder.clear()
                await self._wake_responder.wait()
                continue
            want = self._wants.popleft().want
            bodies = await self.store.call(
                self.store.store.frames_for, want.node, want.first, want.count
            )
            self._publish(self.session.answer(want, bodies))

    def _publish(self, messages: list[Outgoing]) -> None:
        for m in messages:
            self.transport.publish(m)

    # -- joining ---------------------------------------------------------------------------------

    async def _join(self) -> None:
        """After the first connection, listen a moment (the retained presence of every peer
        comes at once), catch up by a peer's snapshot when that is much faster than replaying
        (daemon/join.py), then take the first step. Nothing a peer says stops a node joining."""
        await self.transport.connected.wait()
        self._presence_due.set()
        await asyncio.sleep(self.settings.join_wait)
        try:
            if self.settings.join != "replay":
                await self._join_by_snapshot()
            else:
                self.join.reason = "--join replay"
        finally:
            self.join.state = "done" if self.join.state == "done" else "replay"
            self._join_done.set()
        self.joined.set()
        self._wake_trainer.set()

    async def _join_by_snapshot(self) -> None:
        if self.settings.join == "auto":
            rate = await self.model.run(self.replica.apply_rate)
            # replaying costs a pass over the weights per record batch; a snapshot costs its
            # size once: take one when replay would take a minute more than that
            min_records = int(rate * 60)
        else:
            min_records = 1
        joiner = SnapshotJoin(
            replica=self.replica, model=self.model, session=self.session,
            datadir=self.datadir, progress=self.join, audit_blocks=self.settings.audit_blocks,
            quorum=self.settings.snapshot_quorum, stored=self._stored,
            peer_timeout=self.session.config.peer_timeout,
        )  # fmt: skip
        snap = await joiner.run(min_records)
        if snap is None:
            log.info("%s: catching up by replay (%s)", self.me, self.join.reason)
            return
        self.applied = self.replica.vv
        self.stats.restored_records = snap.records
        self._served = (snap, await asyncio.to_thread(file_sha256, snap.path))
        self._presence_due.set()
        log.info(
            "%s: %s; %d records from it, the rest replayed", self.me, self.join.reason, snap.records
        )

    # -- training --------------------------------------------------------------------------------

    @property
    def own_steps(self) -> int:
        """Own steps taken: own records over the records a step makes (K for FZOO)."""
        return self.applied.get(self.me, 0) // self.replica.engine.records_per_step

    def _steps_left(self) -> bool:
        return self.joined.is_set() and (self.max_steps < 0 or self.own_steps < self.max_steps)

    async def _trainer(self) -> None:
        try:
            await self._join_done.wait()
            while not self._stop.is_set():
                # between passes, so nothing is in flight on the model thread:
                while self._retracted:
                    event = self._retracted.pop(0)
                    self.applied = dict(
                        await self.model.run(self.replica.retract, event.node, event.records)
                    )
                    log.warning(
                        "%s: gave back %d records of %s that a third party had sent while it "
                        "was away; asking %s for them", self.me, len(event.records), event.node,
                        event.node,
                    )  # fmt: skip
                if self._finish_requested:
                    self._finish_requested = False
                    taken = self.own_steps
                    if self.max_steps < 0 or self.max_steps > taken:
                        self.max_steps = taken
                        log.info("%s: finishing: no more own steps after %d", self.me, taken)
                limit = APPLY_BATCH
                if self.evals is not None:
                    await self._maybe_evaluate()
                now = time.monotonic()
                stepping = self._steps_left() and now >= self._next_step_at
                if self.evals is not None:
                    # end the pass at the next point, so that every node evaluates at it: the
                    # peer records of a pass and the records of its own step land on it together
                    room = self._eval_due - sum(self.applied.values())
                    if stepping:
                        room -= self.replica.engine.records_per_step
                    limit = max(0, min(limit, room))
                ready = (
                    pending_records(self.session.log, self.applied, limit, upto=self._durable)
                    if limit
                    else []
                )
                if stepping:
                    self._next_step_at = now + self.settings.step_interval
                    outcome: StepOutcome = await self.model.run(self.replica.step, ready)
                    self.applied = dict(outcome.vv)
                    self.stats.record_step(
                        outcome.loss,
                        outcome.seconds,
                        own=self.own_steps,
                        applied=sum(self.applied.values()),
                    )
                    if not self._unsealed:
                        self._oldest_unsealed = time.monotonic()
                    self._unsealed.extend(outcome.qs)
                    self._wake_flusher.set()
                    if len(self._unsealed) >= self.settings.frame_records:
                        self._frame_full.set()
                    if not self._steps_left():
                        self._frame_full.set()  # the last step: publish it now
                        self._presence_due.set()
                    done, stepped = len(ready) + len(outcome.qs), True
                elif ready:
                    self.applied = dict(await self.model.run(self.replica.apply, ready))
                    done, stepped = len(ready), False
                else:
                    self._wake_trainer.clear()
                    wait = self._next_step_at - now if self._steps_left() else None
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):  # the next step's time, or an event
                            await self._wake_trainer.wait()
                    continue
                self.stats.applied_peer_records += len(ready)
                self.stats.record_pass(done, stepped)
                self._since_snapshot += done
                if self._since_snapshot >= self.settings.snapshot_every:
                    await self._snapshot()
        finally:
            self._trainer_done.set()
            self._wake_flusher.set()

    async def _maybe_evaluate(self) -> None:
        """Between passes: evaluate once the records applied reach the next point."""
        assert self.evals is not None
        applied = sum(self.applied.values())
        if applied < self._eval_due:
            return
        point = await self.model.run(
            evaluate, self.replica, self._eval_examples, self.settings.local.batch_size * 4
        )
        point = dataclasses.replace(point, records=self._eval_due)  # the count nodes share
        await asyncio.to_thread(self.evals.add, point)
        acc = "" if point.accuracy is None else f", accuracy {point.accuracy:.4f}"
        log.info("%s: eval at %d records: loss %.4f%s", self.me, point.records, point.loss, acc)
        self._eval_due = self.evals.next_due(applied + 1)

    async def _snapshot(self) -> None:
        cap = await self.model.run(self.replica.capture)
        self.fingerprint_cache = (digest(cap.vv), cap.fingerprint)
        self.stats.headroom_bits, self.stats.headroom_tensor = (
            cap.headroom_bits,
            cap.headroom_tensor,
        )
        if cap.headroom_bits < 0:
            log.error(
                "%s: tensor %s left its exact grid range: replicas may diverge",
                self.me,
                cap.headroom_tensor,
            )
        while self.session.log.next_seq(self.me) < cap.vv.get(self.me, 0):  # own records stored
            self._frame_full.set()
            self._own_durable.clear()
            await self._own_durable.wait()
        self._since_snapshot = 0
        try:
            info = await asyncio.to_thread(
                snapshots.save,
                self.datadir.snapshots,
                cap.state,
                run_id=self.session.run_id.hex(),
                version_vector=dict(cap.vv),
                fingerprint=cap.fingerprint,
            )
        except StoreError as exc:
            # a snapshot only saves replay time: the log is the truth, and it is still written
            self.stats.snapshot_failures += 1
            self.stats.snapshot_error = str(exc)
            log.error("%s: %s; training goes on, the next snapshot will try again", self.me, exc)
            return
        self.stats.snapshots += 1
        self.stats.last_snapshot = info.path.name
        self.stats.snapshot_error = ""
        self._served = (info, await asyncio.to_thread(file_sha256, info.path))
        self._presence_due.set()

    # -- own records out -------------------------------------------------------------------------

    async def _flusher(self) -> None:
        """Seal own bytes into frames once a frame is full or its oldest record has waited
        ``--max-latency`` seconds: few, full frames where steps are fast, a bound on the delay
        where they are slow."""
        while True:
            if not self._unsealed:
                if self._trainer_done.is_set():
                    break
                self._wake_flusher.clear()
                await self._wake_flusher.wait()
                continue
            due = self._oldest_unsealed + self.settings.max_latency - time.monotonic()
            if due > 0 and not self._trainer_done.is_set():
                self._frame_full.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(due):
                        await self._frame_full.wait()
            await self._flush()
        self._flusher_done.set()

    async def _flush(self) -> None:
        qs, self._unsealed = self._unsealed, []
        sealed = self.session.seal(qs)
        await self.store.call(self.store.store.append, [Stored(s.frame, s.body) for s in sealed])
        self.session.stored(sealed)
        self._own_durable.set()
        self._publish([s.message for s in sealed])

    # -- presence and gap filling ----------------------------------------------------------------

    async def _heartbeat(self) -> None:
        """Presence when something it says changed, and as a slow heartbeat; liveness comes
        from the broker (the will, keep-alives) and from every message a peer sends."""
        interval = self.settings.presence_interval
        while True:
            self._presence_due.clear()
            if self.transport.connected.is_set() and self.phase != "stopping":
                # stopping: the goodbye is the last word (a presence after it would bring
                # the node back to life in every peer's view, retained)
                self.transport.publish(self._presence())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._presence_due.wait()

    async def _sync(self) -> None:
        """Ask for what is missing, notice silent peers, report progress, watch the parent."""
        last_report = 0.0
        parent = os.environ.get(PARENT_ENV)
        listening = self.session.subscriptions(time.monotonic())
        while True:
            now = time.monotonic()
            for event in self.session.tick(now):
                self._on_event(event)
            if (subs := self.session.subscriptions(now)) != listening:
                listening = subs
                self.transport.set_subscriptions(subs)
                relays = self.session.relays(now)
                how = f"through relay {', '.join(relays)}" if relays else "directly (no relay up)"
                log.info("%s: listening to the swarm %s", self.me, how)
            if self.transport.connected.is_set():
                self._publish(self.session.wants(now))
            if now - last_report >= PROGRESS_EVERY:
                last_report = now
                self._report_progress()
            if parent and not self._stop.is_set() and os.getppid() != int(parent):
                log.warning("%s: the process that started this node is gone; stopping", self.me)
                self.request_stop()
            await asyncio.sleep(SYNC_EVERY)

    def _presence(self, alive: bool = True) -> Outgoing:
        advert = None
        if self._served is not None:
            snap = self._served[0]
            digest_ = bytes.fromhex(digest(snap.version_vector))
            advert = SnapshotAdvert(digest_, bytes.fromhex(snap.fingerprint), snap.records)
        return self.session.presence(
            steps=self.own_steps,
            loss=self.stats.recent_loss(10),
            alive=alive,
            snapshot=advert,
        )

    def served_snapshot(self) -> tuple[snapshots.SnapshotInfo, str] | None:
        return self._served

    def _report_progress(self) -> None:
        loss = self.stats.recent_loss()
        limit = f"/{self.max_steps}" if self.max_steps >= 0 else ""
        log.info(
            "%s: steps %d%s, loss %s, records applied %d, pending %d, peers %d, broker %s",
            self.me, self.own_steps, limit, "-" if loss is None else f"{loss:.4f}",
            sum(self.applied.values()), pending(self.session, self.applied),
            self.session.live_peers(time.monotonic()), self.transport.statistics().state,
        )  # fmt: skip
        if not self._join_done.is_set() and self.join.state != "waiting":
            log.info("%s: joining: %s", self.me, self.join.line())

    # == shutdown ==================================================================================

    async def _shutdown(self) -> None:
        """Wait for a stop request, then wind down in order: step, flush, publish, disconnect."""
        await self._stop.wait()
        self.phase = "stopping"
        self._wake_trainer.set()
        await self._trainer_done.wait()
        await self._flusher_done.wait()
        if self._since_snapshot:
            await self._snapshot()  # restart from here instead of replaying the tail
        if self.transport.connected.is_set():
            self.transport.publish(self._presence(alive=False))
            if not await self.transport.drain(self.settings.drain_timeout):
                log.warning(
                    "%s: %d messages not acknowledged before shutdown; peers will ask for them",
                    self.me,
                    self.transport.statistics().outbox,
                )
        self.transport.close()
        for task in self._tasks:
            if task.get_name() != "transport":
                task.cancel()

    async def _teardown(self) -> None:
        self.phase = "stopped"
        http = getattr(self, "http", None)
        if http is not None:
            await http.stop()
        store = getattr(self, "store", None)
        if store is not None:
            await asyncio.to_thread(store.close)
        model = getattr(self, "model", None)
        if model is not None:
            model.close()

    # == the StatusSource of the HTTP endpoint ====================================================

    @property
    def ready(self) -> bool:
        return (
            self.phase == "running" and self.joined.is_set() and self.transport.connected.is_set()
        )

    async def status(self, *, fresh: bool) -> NodeStatus:
        return compose_status(
            me=self.me,
            manifest=self.manifest,
            phase=self.phase,
            ready=self.ready,
            applied=self.applied,
            fingerprint=await self.fingerprint(fresh=fresh),
            session=self.session,
            stats=self.stats,
            transport=self.transport.statistics(),
            max_steps=self.max_steps,
            unsealed=len(self._unsealed),
            model_busy=self.model.busy,
            engine=self.replica.engine,
            http=self.http_url,
            http_refused=self.http.refused,
            join=self.join,
            served=self._served,
            evals=self.evals,
        )

    def history(self, since: float) -> dict[str, Any]:
        """The dashboard's curves after ``since`` (unix time): own steps (unix time, own
        records, loss, records applied) and evaluations."""
        steps = [list(h) for h in self.stats.history if h[0] > since]
        points = self.evals.points if self.evals else []
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

    async def fingerprint(self, *, fresh: bool) -> tuple[str, str, bool]:
        """(fingerprint, digest of the version vector it belongs to, stale?)."""
        vv_digest = digest(self.applied)
        cached_digest, cached = self.fingerprint_cache
        if cached_digest == vv_digest:
            return cached, vv_digest, False
        if fresh or not self.model.busy:
            vv, fp = await self.model.run(self.replica.fingerprint)
            self.fingerprint_cache = (digest(vv), fp)
            return fp, digest(vv), False
        return cached, cached_digest, True


def _route(session: Session, topic: str) -> Route | None:
    try:
        return session.topics.parse(topic)
    except DecodeError:
        return None
