"""The node daemon: train with peers through an MQTT broker, keep the log, serve status.

Phases, as in uvicorn: ``startup`` (open the store, load the model and the log, restore the
newest snapshot, catch up, start HTTP), ``run`` (one task group owns every task), ``shutdown``
(stop stepping, flush and publish what is written, say goodbye, disconnect, close the store).

Data flow, one direction each way:

    broker -> transport -> ingest: decode + verify (protocol) -> OrderedLog -> store (durable)
           -> trainer: apply contiguous records, take a ZO step (model thread)
           -> own byte -> flusher: frame, sign -> store (durable) -> outbox -> transport -> broker

One owner per resource: the task group owns the tasks, ``ModelThread`` owns the model,
``StoreThread`` owns the SQLite connection, and the event loop owns everything else
(the OrderedLog, the peer table, the counters), so no locks are needed.

Invariants worth knowing:
  * An own record is applied on the model thread in the same pass as its step, and written to
    the store by the flusher a moment later; it is published, and a snapshot that contains it
    is saved, only after that write. A crash in between loses a record nobody has seen, so its
    seq may be taken again with another byte without equivocation.
  * Snapshot files are written by a worker thread of the loop's default executor (disk I/O
    only, on tensors the model thread copied out), so a slow disk never stalls the model.
  * SIGINT/SIGTERM stop the node; SIGUSR2 only ends its stepping (the swarm launcher uses it
    to let nodes settle); SIGUSR1 prints every thread's stack (daemon/cli.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from seedswarm.model.data import sample_batch, shard_indices
from seedswarm.model.engine import Engine, StepResult
from seedswarm.model.tasks import Examples, prepare
from seedswarm.protocol.codec import (
    MAX_FRAME_BYTES,
    MAX_MESSAGE_BYTES,
    encode_frame,
    frame_from_value,
    sign_frame,
    unpack_strict,
)
from seedswarm.protocol.errors import ConflictError, DecodeError, ProtocolError, SeedswarmError
from seedswarm.protocol.ids import check_node_id
from seedswarm.protocol.log import OrderedLog
from seedswarm.protocol.manifest import Manifest
from seedswarm.protocol.messages import (
    Presence,
    Want,
    encode_presence,
    encode_want,
    message_from_value,
)
from seedswarm.protocol.records import Frame, Record, q_to_byte
from seedswarm.protocol.signing import NodeKey
from seedswarm.protocol.sync import PeerView, SyncPlanner
from seedswarm.protocol.vv import digest

from . import snapshots
from .errors import ConfigError, JoinRefused
from .http_status import parse_listen
from .replica import advance, catch_up, restore_snapshot
from .runspec import RunPlan, open_engine, plan_run
from .single import LOG, SNAPSHOTS, parse_shard, resolve_device, write_manifest
from .store import LogStore, StoreThread
from .topics import Topics
from .transport import BrokerAddress, Outgoing, Transport
from .worker import ModelThread

log = logging.getLogger("seedswarm.node")

INGEST_BATCH = 512
PROGRESS_EVERY = 10.0  # seconds between progress lines in the log
PARENT_ENV = "SEEDSWARM_PARENT_PID"  # set by `seedswarm swarm`: stop if that process dies
APPLY_BATCH = 4096
RATE_WINDOW_S = 30.0  # /status rates (steps.per_s, records_per_s) are over this window


@dataclass(slots=True)
class PeerInfo:
    presence: Presence
    last_seen: float  # monotonic


@dataclass(slots=True)
class Stats:
    started: float = field(default_factory=time.monotonic)
    steps: int = 0
    applied_peer_records: int = 0
    duplicates: int = 0
    frames_accepted: int = 0
    dropped: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    losses: deque[float] = field(default_factory=lambda: deque(maxlen=50))
    step_times: deque[float] = field(default_factory=lambda: deque(maxlen=50))  # durations
    # (monotonic end, records applied, own step taken) of each pass in the last RATE_WINDOW_S
    passes: deque[tuple[float, int, bool]] = field(default_factory=deque)
    first_loss: float | None = None
    wants_sent: int = 0
    wants_answered: int = 0
    snapshots: int = 0
    last_snapshot: str = ""
    restored_records: int = 0  # at start-up, from a snapshot
    replayed_records: int = 0  # at start-up, from the log past the snapshot
    headroom_bits: float | None = None
    headroom_tensor: str = ""

    def drop(self, reason: str, sender: str) -> None:
        self.dropped[reason][sender] += 1

    def record_pass(self, applied: int, stepped: bool) -> None:
        now = time.monotonic()
        self.passes.append((now, applied, stepped))
        while now - self.passes[0][0] > RATE_WINDOW_S:
            self.passes.popleft()

    def rates(self, now: float) -> tuple[float, float]:
        """(own steps, records applied) per second over the last RATE_WINDOW_S (or since start):
        they fall to 0 once the node stops stepping."""
        span = max(min(RATE_WINDOW_S, now - self.started), 1e-3)
        recent = [(n, stepped) for t, n, stepped in self.passes if now - t <= span]
        return sum(st for _, st in recent) / span, sum(n for n, _ in recent) / span


class Node:
    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.me: str = values["node"]
        self.data_dir = Path(values["data_dir"]).expanduser()
        self.max_steps: int = values["steps"]
        self.stats = Stats()
        self.log = OrderedLog()
        self.applied: dict[str, int] = {}
        self.durable: dict[str, int] = {}  # peer records durable in the store, per node
        self.unflushed: list[int] = []  # own bytes applied but not yet durable
        self.peers: dict[str, PeerInfo] = {}
        self.ready = False
        self.joined = asyncio.Event()
        self.phase = "starting"
        self.fingerprint_cache: tuple[str, str] = ("", "")  # (vv digest, fingerprint)
        self._stop = asyncio.Event()
        self._finish_requested = False  # SIGUSR2: take no more own steps
        self._closing = asyncio.Event()
        self._trainer_done = asyncio.Event()
        self._flusher_done = asyncio.Event()
        self._records_ready = asyncio.Event()
        self._flush_now = asyncio.Event()
        self._own_durable = asyncio.Event()
        self._inbox: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue(maxsize=20000)
        self._wants: asyncio.Queue[Want] = asyncio.Queue(maxsize=1000)
        self._key: NodeKey | None = None
        self._conflicts: dict[str, dict[str, Any]] = {}
        self._conflict_seen = asyncio.Event()  # ends the join wait at once
        self._model_vv: dict[str, int] = {}  # applied records, as the model thread sees them
        self._since_snapshot = 0
        self.http_url = ""
        self.exit_code = 0
        self.error = ""

    # == startup ===================================================================================

    async def startup(self) -> None:
        v = self.values
        # settings first: a typo should cost one line, not a model load
        check_node_id_setting(self.me)
        address = BrokerAddress.parse(v["broker"], username=v["username"], password=v["password"])
        parse_listen(v["http"])
        parse_shard(v["shard"])
        device = resolve_device(v["device"])
        self.model = ModelThread(torch_threads=v["torch_threads"])
        plan: RunPlan = plan_run(v)
        self.engine: Engine = await self.model.run(
            open_engine, plan, v, device=device, kernel=v["kernel"]
        )
        self.engine.task_model.amp_dtype = torch.bfloat16 if v["amp"] and device != "cpu" else None
        self.manifest: Manifest = self.engine.manifest
        self.run_id = self.manifest.run_id()
        self._load_key()
        self.topics = Topics(v["topic_prefix"], self.manifest.name)
        write_manifest(self.data_dir, self.manifest)
        self.store = StoreThread(await asyncio.to_thread(LogStore, self.data_dir / LOG))
        await self.store.call(self.store.store.bind, self.manifest)
        await self.store.call(self.store.store.load_log, self.log)
        held = self.log.held()
        self.durable = {n: s for n, s in held.items() if n != self.me}
        self.applied = await self.model.run(
            restore_snapshot, self.engine, self.data_dir / SNAPSHOTS, held
        )
        restored = sum(self.applied.values())
        caught = await self.model.run(catch_up, self.engine, self.log, self.applied)
        self.stats.restored_records, self.stats.replayed_records = restored, caught
        self._model_vv = dict(self.applied)
        log.info(
            "%s: restored %d records from a snapshot, replayed %d from the log",
            self.me,
            restored,
            caught,
        )
        self.examples: Examples = await self.model.run(self._examples, plan)
        self.planner = SyncPlanner(self.me)
        self.transport = Transport(
            address,
            client_id=f"seedswarm-{self.manifest.name}-{self.me}",
            subscriptions=self.topics.subscriptions(self.me),
            on_message=self._on_message,
            will_topic=self.topics.presence(self.me),
            will_payload=encode_presence(Presence(self.me, self.run_id, alive=False)),
            ca_file=v["ca_file"],
        )
        from .http_status import StatusServer

        self.http = StatusServer(self)
        self.http_url = await self.http.start(v["http"], advertise=v["advertise"])
        self.phase = "running"
        log.info(
            "%s: run %s (%s), status at %s",
            self.me,
            self.run_id.hex(),
            self.manifest.name,
            self.http_url,
        )

    def _examples(self, plan: RunPlan) -> Examples:
        ex = prepare(plan.raw, self.manifest.task, self.engine.task_model.tokenizer)
        return ex.subset(shard_indices(len(ex), parse_shard(self.values["shard"])))

    def _load_key(self) -> None:
        keys = dict(self.manifest.keys)
        key_file = self.values["key_file"]
        if not keys:
            if key_file:
                log.warning(
                    "the run is in open mode (no keys in the manifest); --key-file is unused"
                )
            return
        if self.me not in keys:
            raise ConfigError(f"node {self.me} is not one of the run's writers ({', '.join(keys)})")
        if not key_file:
            raise ConfigError("this run is signed: give this node's private key with --key-file")
        try:
            text = Path(key_file).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--key-file {key_file}: {exc.strerror}") from exc
        key = NodeKey.from_hex(text)
        if key.public_hex() != keys[self.me]:
            raise ConfigError(f"--key-file {key_file} is not the key the run lists for {self.me}")
        self._key = key

    # == run =======================================================================================

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGUSR2, self.request_finish)
        try:
            await self.startup()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.transport.run(), name="transport")
                tg.create_task(self.transport.publisher(), name="publisher")
                tg.create_task(self._ingest(), name="ingest")
                tg.create_task(self._join(), name="join")
                tg.create_task(self._trainer(), name="trainer")
                tg.create_task(self._flusher(), name="flusher")
                tg.create_task(self._heartbeat(), name="heartbeat")
                tg.create_task(self._responder(), name="responder")
                tg.create_task(self._shutdown(), name="shutdown")
        except* (JoinRefused, ConfigError) as eg:
            self.error = str(eg.exceptions[0])
            self.exit_code = 2  # the user can fix this: another manifest, a bad setting
        except* SeedswarmError as eg:
            self.error = str(eg.exceptions[0])  # e.g. the disk refused a write
            self.exit_code = 1
        finally:
            await self._teardown()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
                loop.remove_signal_handler(sig)
        return self.exit_code

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("%s: stopping", self.me)
        self._stop.set()
        self._records_ready.set()

    def request_finish(self) -> None:
        """SIGUSR2: take no more own steps, as if --steps had been reached; keep applying
        peers' records and serving. The swarm launcher uses it to stop in agreement."""
        self._finish_requested = True
        self._records_ready.set()

    # -- inbound ---------------------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        """Called by the transport for every message: route it, never raise."""
        parsed = self.topics.parse(topic)
        if parsed is None:
            self.stats.drop("bad_topic", "?")
            return
        kind, sender = parsed
        if kind == "presence":
            self._on_presence(sender, payload)
            return
        try:
            self._inbox.put_nowait((kind, sender, payload))
        except asyncio.QueueFull:
            self.stats.drop("overload", sender)  # gap filling recovers what is dropped here

    def _on_presence(self, sender: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained message
        try:
            msg = message_from_value(
                unpack_strict(payload, max_bytes=MAX_MESSAGE_BYTES), run_id=self.run_id
            )
        except ProtocolError as exc:
            if exc.reason == "wrong_run":
                self._foreign_presence(sender, payload)
            self.stats.drop(exc.reason, sender)
            return
        if not isinstance(msg, Presence) or msg.node != sender:
            self.stats.drop("topic_mismatch", sender)
            return
        if sender == self.me:
            return
        self.peers[sender] = PeerInfo(msg, time.monotonic())

    def _foreign_presence(self, sender: str, payload: bytes) -> None:
        """A node under our run name with another manifest: remember it for the join check."""
        try:
            raw = unpack_strict(payload, max_bytes=MAX_MESSAGE_BYTES)
        except ProtocolError:
            return
        if isinstance(raw, dict) and raw.get("alive") and sender != self.me:
            theirs = raw.get("manifest")
            self._conflicts[sender] = theirs if isinstance(theirs, dict) else {}
            self._conflict_seen.set()

    async def _ingest(self) -> None:
        """Decode, verify and store incoming frames and wants, in batches."""
        keys = self.manifest.public_keys() or None
        while not self._closing.is_set():
            try:
                async with asyncio.timeout(0.5):
                    first = await self._inbox.get()
            except TimeoutError:
                continue
            batch = [first]
            while len(batch) < INGEST_BATCH and not self._inbox.empty():
                batch.append(self._inbox.get_nowait())
            accepted: list[Frame] = []
            for kind, sender, payload in batch:
                try:
                    value = unpack_strict(payload, max_bytes=MAX_FRAME_BYTES)
                    if isinstance(value, dict):
                        if kind != "sync":
                            raise DecodeError("a map on a records topic", reason="bad_type")
                        msg = message_from_value(value, run_id=self.run_id)
                        if not isinstance(msg, Want):
                            raise DecodeError("presence on a sync topic", reason="bad_type")
                        self._queue_want(msg)
                        continue
                    frame = frame_from_value(value, run_id=self.run_id, keys=keys)
                    if kind == "records" and frame.node != sender:
                        raise DecodeError(
                            f"{sender} published a frame of {frame.node}", reason="topic_mismatch"
                        )
                    offered = self.log.offer(frame)
                except ConflictError as exc:
                    self.stats.drop(exc.reason, sender)
                    log.error("%s: rejected a frame from %s: %s", self.me, sender, exc)
                    continue
                except ProtocolError as exc:
                    self.stats.drop(exc.reason, sender)
                    log.debug("%s: dropped a message from %s: %s", self.me, sender, exc)
                    continue
                self.stats.duplicates += offered.duplicates
                if offered.new:
                    accepted.append(frame)
                    self.stats.frames_accepted += 1
                    self._note_frame(frame)
            if accepted:
                held = self.log.held()
                await self.store.call(self.store.store.append, accepted)
                self.durable = {n: s for n, s in held.items() if n != self.me}
                self._records_ready.set()
                if any(kind == "sync" for kind, _, _ in batch):
                    # an answer to a want moved a prefix: ask for the next range right away,
                    # so a late joiner catches up at round-trip speed, not heartbeat speed
                    self._plan_sync()

    def _queue_want(self, want: Want) -> None:
        try:
            self._wants.put_nowait(want)
        except asyncio.QueueFull:
            self.stats.drop("overload", want.requester)

    def _note_frame(self, frame: Frame) -> None:
        """A frame tells us its author holds at least up to its end: a hint for gap filling."""
        info = self.peers.get(frame.node)
        if info is not None and frame.end_seq > info.presence.held.get(frame.node, 0):
            held = dict(info.presence.held)
            held[frame.node] = frame.end_seq
            p = info.presence
            self.peers[frame.node] = PeerInfo(
                Presence(p.node, p.run_id, p.alive, held, p.http, p.steps, p.loss, p.manifest),
                info.last_seen,
            )

    # -- joining ---------------------------------------------------------------------------------

    async def _join(self) -> None:
        """After the first connection, listen for peers' presence; refuse a foreign manifest.

        A stop request ends the wait: a node told to stop before it ever reached the broker
        (broker down, Ctrl+C during start-up) must not hang here.
        """
        if not await self._until(self.transport.connected):
            return  # stopped before the first connection
        # Listen for peers' presence a moment. A foreign manifest ends the wait at once, so a
        # generous --join-wait costs nothing when there is a conflict to find.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.values["join_wait"]):
                if not await self._until(self._conflict_seen):
                    return  # stopped while listening
        if self._conflicts:
            sender, theirs = next(iter(sorted(self._conflicts.items())))
            detail = ""
            try:
                other = Manifest.from_dict(theirs)
                fields = ", ".join(self.manifest.differences(other))
                detail = f" (differs in: {fields}"
                if other.base_hash != self.manifest.base_hash:
                    detail += (
                        f"; their base {other.base_hash[:16]}, ours {self.manifest.base_hash[:16]}"
                    )
                detail += ")"
            except Exception:  # their manifest may be anything; the refusal stands regardless
                detail = ""
            raise JoinRefused(
                f"node {sender} in run {self.manifest.name!r} runs another manifest{detail}; "
                f"refusing to join with run id {self.run_id.hex()}"
            )
        self.joined.set()
        self.ready = True

    async def _until(self, event: asyncio.Event) -> bool:
        """Wait until ``event`` is set (True) or a stop request comes first (False)."""
        while not event.is_set():
            if self._stop.is_set():
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await event.wait()
        return True

    # -- training --------------------------------------------------------------------------------

    def _may_step(self) -> bool:
        return self.joined.is_set() and (
            self.max_steps < 0 or self.applied.get(self.me, 0) < self.max_steps
        )

    def _ready_records(self) -> list[Record]:
        out: list[Record] = []
        for node, end in self.durable.items():
            start = self.applied.get(node, 0)
            if start < end:
                out.extend(self.log.records(node, start, min(end, start + APPLY_BATCH - len(out))))
                if len(out) >= APPLY_BATCH:
                    break
        return out

    def _step_job(self, seq: int, batch_size: int, pending: list[Record]) -> StepResult:
        """Model thread: apply ``pending`` and take own step ``seq``."""
        seed = self.engine.seed_of(self.me, seq)
        idx = sample_batch(seed, len(self.examples), batch_size)
        batch = self.engine.task_model.make_batch(self.examples.subset(idx))
        result = self.engine.step([seed], batch, pending)
        advance(self._model_vv, pending)
        self._model_vv[self.me] = seq + 1
        return result

    def _apply_job(self, records: list[Record]) -> None:
        """Model thread: apply peer records."""
        self.engine.apply(records)
        advance(self._model_vv, records)

    def _fingerprint_job(self) -> tuple[dict[str, int], str]:
        """Model thread: the weights' hash and the version vector it belongs to, together."""
        return dict(self._model_vv), self.engine.fingerprint()

    async def _trainer(self) -> None:
        try:
            while not self._stop.is_set():
                if self._finish_requested:  # read here, between steps, so no step is in flight
                    self._finish_requested = False
                    taken = self.applied.get(self.me, 0)
                    if self.max_steps < 0 or self.max_steps > taken:
                        self.max_steps = taken
                        log.info("%s: finishing: no more own steps after %d", self.me, taken)
                ready = self._ready_records()
                if self._may_step():
                    seq = self.applied.get(self.me, 0)
                    t0 = time.monotonic()
                    result = await self.model.run(
                        self._step_job, seq, self.values["batch_size"], ready
                    )
                    t1 = time.monotonic()
                    self.stats.step_times.append(t1 - t0)
                    self.applied[self.me] = seq + 1
                    self.unflushed.extend(result.qs)
                    self.stats.steps += 1
                    self.stats.losses.append(result.loss)
                    if self.stats.first_loss is None:
                        self.stats.first_loss = result.loss
                    if len(self.unflushed) >= self.values["frame_records"]:
                        self._flush_now.set()
                    applied_now, stepped = len(ready) + 1, True
                elif ready:
                    await self.model.run(self._apply_job, ready)
                    applied_now, stepped = len(ready), False
                else:
                    self._records_ready.clear()
                    try:
                        async with asyncio.timeout(0.5):
                            await self._records_ready.wait()
                    except TimeoutError:
                        pass
                    continue
                advance(self.applied, ready)
                self.stats.applied_peer_records += len(ready)
                self.stats.record_pass(applied_now, stepped)
                self._since_snapshot += applied_now
                if self._since_snapshot >= self.values["snapshot_every"]:
                    await self._snapshot()
        finally:
            self._trainer_done.set()
            self._flush_now.set()

    async def _snapshot(self) -> None:
        vv, state, fingerprint, headroom = await self.model.run(self._capture)
        self.fingerprint_cache = (digest(vv), fingerprint)
        self.stats.headroom_bits, self.stats.headroom_tensor = headroom
        if headroom[0] < 0:
            log.error(
                "%s: tensor %s left its exact grid range: replicas may diverge",
                self.me,
                headroom[1],
            )
        await self._until_own_durable(vv.get(self.me, 0))
        info = await asyncio.to_thread(
            snapshots.save,
            self.data_dir / SNAPSHOTS,
            state,
            run_id=self.run_id.hex(),
            version_vector=vv,
            fingerprint=fingerprint,
        )
        self.stats.snapshots += 1
        self.stats.last_snapshot = info.path.name
        self._since_snapshot = 0

    def _capture(self) -> tuple[dict[str, int], dict[str, torch.Tensor], str, tuple[float, str]]:
        """Model thread: everything a snapshot needs, at one instant."""
        e = self.engine
        return dict(self._model_vv), e.trainable_state(), e.fingerprint(), e.headroom()

    async def _until_own_durable(self, end: int) -> None:
        while self.log.next_seq(self.me) < end:
            self._flush_now.set()
            self._own_durable.clear()
            await self._own_durable.wait()

    # -- own records out -------------------------------------------------------------------------

    async def _flusher(self) -> None:
        window = self.values["frame_window"]
        per_frame = self.values["frame_records"]
        while True:
            self._flush_now.clear()
            if not self.unflushed:
                if self._trainer_done.is_set():
                    break
                try:
                    async with asyncio.timeout(window if self.unflushed else 0.5):
                        await self._flush_now.wait()
                except TimeoutError:
                    pass
                if not self.unflushed:
                    continue
            if len(self.unflushed) < per_frame and not self._trainer_done.is_set():
                try:  # give the batch its window to fill up
                    async with asyncio.timeout(window):
                        await self._flush_now.wait()
                except TimeoutError:
                    pass
            await self._flush(per_frame)
        self._flusher_done.set()

    async def _flush(self, per_frame: int) -> None:
        frames: list[Frame] = []
        clock = self.log.max_clock + 1
        while self.unflushed:
            part, self.unflushed = self.unflushed[:per_frame], self.unflushed[per_frame:]
            frame = Frame(
                self.run_id,
                self.me,
                self.log.next_seq(self.me),
                clock,
                bytes(q_to_byte(q) for q in part),
            )
            if self._key is not None:
                frame = sign_frame(frame, self._key)
            try:
                self.log.offer(frame)
            except ConflictError as exc:
                raise JoinRefused(
                    f"another writer published records as {self.me} ({exc}); two nodes must "
                    "never share a node id (a signed run prevents this)"
                ) from exc
            frames.append(frame)
        await self.store.call(self.store.store.append, frames)
        self._own_durable.set()
        for frame in frames:
            self.transport.publish(
                Outgoing(self.topics.records(self.me), encode_frame(frame), records=frame.count)
            )

    # -- presence and gap filling ----------------------------------------------------------------

    def presence(self, alive: bool = True) -> Presence:
        held = dict(self.durable)
        own = self.log.next_seq(self.me)
        if own:
            held[self.me] = own
        recent = list(self.stats.losses)[-10:]
        return Presence(
            node=self.me,
            run_id=self.run_id,
            alive=alive,
            held=held,
            http=self.http_url,
            steps=self.applied.get(self.me, 0),
            loss=sum(recent) / len(recent) if recent else None,
            manifest=self.manifest.to_dict(),
        )

    def _publish_presence(self, alive: bool = True) -> None:
        topic = self.topics.presence(self.me)
        # keep at most one presence message queued: only the newest matters
        stale = [
            m
            for m in self.transport.outbox
            if m.topic == topic and m is not self.transport.outbox[0]
        ]
        for m in stale:
            self.transport.outbox.remove(m)
        self.transport.publish(Outgoing(topic, encode_presence(self.presence(alive)), retain=True))

    async def _heartbeat(self) -> None:
        interval = self.values["presence_interval"]
        last_report = 0.0
        parent = os.environ.get(PARENT_ENV)
        while not self._closing.is_set():
            if self.transport.connected.is_set():
                self._publish_presence()
                self._plan_sync()
            now = time.monotonic()
            if now - last_report >= PROGRESS_EVERY:
                last_report = now
                self._report_progress()
            if parent and not self._stop.is_set() and os.getppid() != int(parent):
                log.warning("%s: the process that started this node is gone; stopping", self.me)
                self.request_stop()
            try:
                async with asyncio.timeout(interval):
                    await self._closing.wait()
            except TimeoutError:
                pass

    def _report_progress(self) -> None:
        recent = list(self.stats.losses)[-20:]
        loss = f"{sum(recent) / len(recent):.4f}" if recent else "-"
        limit = f"/{self.max_steps}" if self.max_steps >= 0 else ""
        alive = sum(1 for info in self.peers.values() if info.presence.alive)
        log.info(
            "%s: steps %d%s, loss %s, records applied %d, pending %d, peers %d, broker %s",
            self.me, self.applied.get(self.me, 0), limit, loss, sum(self.applied.values()),
            self.log.pending_count() + sum(
                max(s - self.applied.get(n, 0), 0) for n, s in self.durable.items()
            ),
            alive, self.transport.state,
        )  # fmt: skip

    def _plan_sync(self) -> None:
        """Ask peers for what their presence says they hold and we lack (protocol/sync.py)."""
        now = time.monotonic()
        horizon = 6 * self.values["presence_interval"]
        views = {
            name: PeerView(name, info.presence.alive and now - info.last_seen < horizon,
                           info.presence.held)
            for name, info in self.peers.items()
        }  # fmt: skip
        for req in self.planner.plan(dict(self.durable), views, now):
            want = Want(self.me, self.run_id, req.node, req.first, req.count)
            self.transport.publish(Outgoing(self.topics.sync(req.target), encode_want(want)))
            self.stats.wants_sent += 1

    async def _responder(self) -> None:
        recent: dict[tuple[str, str, int], float] = {}
        while not self._closing.is_set():
            try:
                async with asyncio.timeout(0.5):
                    want = await self._wants.get()
            except TimeoutError:
                continue
            key = (want.requester, want.node, want.first)
            now = time.monotonic()
            if now - recent.get(key, -1e9) < 1.0:
                continue  # the same want again within a second: already answered
            recent[key] = now
            if len(recent) > 10000:
                recent.clear()
            bodies = await self.store.call(
                self.store.store.frames_for, want.node, want.first, want.count
            )
            for body in bodies:
                self.transport.publish(Outgoing(self.topics.sync(want.requester), body))
            self.stats.wants_answered += 1

    # == shutdown ==================================================================================

    async def _shutdown(self) -> None:
        """Wait for a stop request, then wind down in order: step, flush, publish, disconnect."""
        await self._stop.wait()
        self.phase = "stopping"
        self.ready = False
        self._records_ready.set()
        await self._trainer_done.wait()
        self._flush_now.set()
        await self._flusher_done.wait()
        if self._since_snapshot:
            await self._snapshot()  # restart from here instead of replaying the tail
        if self.transport.connected.is_set():
            self._publish_presence(alive=False)
            drained = await self.transport.drain(self.values["drain_timeout"])
            if not drained:
                log.warning(
                    "%s: %d messages not acknowledged before shutdown; peers will ask for "
                    "them later",
                    self.me,
                    len(self.transport.outbox),
                )
        self._closing.set()
        self.transport.close()

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

    # == status ====================================================================================

    async def fingerprint(self, *, fresh: bool) -> tuple[str, str, bool]:
        """(fingerprint, digest of the version vector it belongs to, stale?)."""
        vv_digest = digest(self.applied)
        cached_digest, cached = self.fingerprint_cache
        if cached_digest == vv_digest:
            return cached, vv_digest, False
        if fresh or not self.model.busy:
            vv, fp = await self.model.run(self._fingerprint_job)
            self.fingerprint_cache = (digest(vv), fp)
            return fp, digest(vv), False
        return cached, cached_digest, True


def check_node_id_setting(node: str) -> None:
    try:
        check_node_id(node)
    except DecodeError as exc:
        raise ConfigError(f"--node: {exc}") from exc
