"""The one driver of the sans-IO session: what every peer (node, relay, simulated node) runs.

Theory of operation
-------------------
``protocol.session.Session`` decides what every message means and what to say; it does no I/O.
A ``SessionDriver`` is the I/O around it, as uvicorn's protocol classes are around h11: it
moves bytes between the transport, the session and the place the peer keeps its frames (its
``Holder``), and nothing else. Each role adds only what is its own, through a small ``Role``:
what its presence says, and what it does with what arrived once it is stored (the node wakes
its trainer, the relay bundles what it forwards, a simulated node counts).

    transport.on_message -> inbox (bounded) -> ingest: Session.receive -> events
        FrameAccepted, Retracted -> holder (durable, in order) -> role.received(batch)
        WantReceived             -> responder: holder.frames_for -> Session.answer -> transport
        VvRequested              -> Session.vv -> transport
        Dropped, PeerSeen, PeerGone -> the log
        ForeignRun               -> fetch that run's retained manifest (foreign.py) -> the
                                    settings that differ, in the log and in statistics
    every connect: the retained manifest (Session.manifest_message), then role.presence
    heartbeat: role.presence -> transport (when due, and every presence interval)
    sync tick: Session.tick -> events (as above); Session.subscriptions -> transport;
               Session.wants -> transport (gap filling)
    stop:      intake closed -> the batch in hand stored -> goodbye (presence, not alive)
               -> drain the outbox -> transport closed

``_dispatch`` is the only place events are acted on, and ``_ingest`` the only caller of
``Session.receive`` outside the tests: a new message type is a new case in one place.

Invariants:
  * What the session accepted is in the holder before the next message is read, and before
    the role hears of it (a node applies only durable records; a relay forwards only what it
    could store). Appends and retractions reach the holder in the order the session made them.
  * Nothing a peer sends can grow the driver without bound: the inbox holds at most ``INBOX``
    messages and ``INBOX_BYTES`` of payload (beyond that a message is dropped and counted as
    ``overload`` under its sender: gap filling recovers it), and at most ``WANTS`` wants wait
    for an answer (the oldest give way; the askers ask again).
  * ``stop`` never cuts a batch in half: it closes the intake, waits until the batch in hand is
    stored, and only then says goodbye. Nothing is published after the goodbye (a presence after
    it would bring the peer back to life, retained, in every other peer's view).
  * The driver creates its tasks in the role's task group (``start``), so a failure anywhere,
    such as a store that refuses a write, ends the whole peer.
  * Each connection begins with the run's manifest, retained, then the presence
    (docs/PROTOCOL.md §7), so a joiner that knows only the run id can fetch the manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import assert_never

from seedswarm.daemon.status.schema import ForeignRunStatus, InboxStatus
from seedswarm.daemon.store.log_store import Stored
from seedswarm.daemon.transport import Transport, TransportFactory, TransportSpec
from seedswarm.protocol.errors import DecodeError, ProtocolError
from seedswarm.protocol.events import (
    Dropped,
    Event,
    ForeignRun,
    FrameAccepted,
    Outgoing,
    PeerGone,
    PeerSeen,
    Retracted,
    VvRequested,
    WantReceived,
)
from seedswarm.protocol.retained import MANIFEST, manifest_subscription
from seedswarm.protocol.session import INVALID, Session
from seedswarm.protocol.topics import Subscription

from .foreign import ForeignRuns
from .given_back import GivenBack
from .roles import DriverConfig, Holder, Received, Role

__all__ = ["DriverConfig", "Holder", "Received", "Role", "SessionDriver"]

log = logging.getLogger("seedswarm.peer")

INBOX = 20_000  # messages waiting for the session; beyond this they are dropped (overload)
INBOX_BYTES = 64 << 20  # ... or beyond this many payload bytes (a flood of 1 MiB bundles)
INGEST_BATCH = 512  # messages the session reads before their frames are stored together
WANTS = 1000  # wants waiting for an answer; the oldest give way
SYNC_EVERY = 1.0  # seconds between two looks at what is missing (cheap: only open nodes)


@dataclass(slots=True)
class _Work:
    """What one batch's events ask of the holder and the role."""

    accepted: list[FrameAccepted] = field(default_factory=list)
    retracted: list[Retracted] = field(default_factory=list)
    writes: list[Stored | Retracted] = field(default_factory=list)  # in the session's order
    touched: set[str] = field(default_factory=set)
    answered: bool = False  # an answer to one of our wants moved a prefix


class SessionDriver:
    """The I/O around one ``Session`` (see the module docstring)."""

    def __init__(
        self,
        session: Session,
        transport: TransportFactory,
        holder: Holder,
        role: Role,
        config: DriverConfig,
        *,
        client_id: str,
    ) -> None:
        self.session = session
        self.holder = holder
        self.role = role
        self.config = config
        self.me = session.me
        topics = session.topics
        own = topics.bundles(self.me) if session.relay else topics.records(self.me)
        self.transport: Transport = transport(
            TransportSpec(
                client_id=client_id,
                subscriptions=session.subscriptions(time.monotonic()),
                on_message=self._on_message,
                will=session.will(),
                aliases=(own, topics.presence(self.me)),
                on_drop=self._answer_dropped,
                on_overflow=lambda topic: session.overloaded(topic, "incoming queue full"),
                incoming_queue=config.incoming_queue,
                on_connect=self._on_connect,
            )
        )
        self.relays: tuple[str, ...] = ()
        self._inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=INBOX)
        self._inbox_bytes = 0
        self._intake = True  # False once stopping: what comes after is not read
        self._idle = asyncio.Event()  # no batch in hand
        self._idle.set()
        self._storing = asyncio.Lock()
        self._wants: deque[WantReceived] = deque(maxlen=WANTS)
        self._wake_responder = asyncio.Event()
        self._presence_due = asyncio.Event()
        self.foreign = ForeignRuns(session.manifest, topics.prefix)
        self._manifest_head = f"{topics.prefix}/"  # + run name + /manifest/ + run id
        self._goodbye = False  # said: nothing more may be published
        self._tasks: list[asyncio.Task[None]] = []
        self._batches = self._messages = self._listening_changes = 0
        self._listening = session.subscriptions(time.monotonic())  # what the transport follows
        self._given_back = GivenBack(self.me)

    # -- the surface a role uses -------------------------------------------------------------

    @property
    def connected(self) -> asyncio.Event:
        return self.transport.connected

    def start(self, tg: asyncio.TaskGroup) -> None:
        """Create the driver's tasks in the role's task group."""
        for name, job in (
            ("transport", self.transport.run),
            ("ingest", self._ingest),
            ("responder", self._responder),
            ("heartbeat", self._heartbeat),
            ("sync", self._sync),
        ):
            self._tasks.append(tg.create_task(job(), name=name))

    def publish(self, messages: Iterable[Outgoing]) -> None:
        for m in messages:
            self.transport.publish(m)

    def presence_due(self) -> None:
        """Something the presence tells changed: send it now, not at the next heartbeat."""
        self._presence_due.set()

    async def stop_reading(self) -> None:
        """Close the intake and let the batch in hand be stored: from now on nothing more is
        read (what waits in the inbox is left unread: not accepted, so not lost), and every
        task but the transport ends. The outbox still goes out."""
        self._intake = False
        await self._idle.wait()
        async with self._storing:  # nor a tick's write in flight
            for task in self._tasks:
                if task.get_name() != "transport":  # it ends when closed (stop)
                    task.cancel()

    async def stop(self, drain: float) -> None:
        """Stop reading (if not yet), say goodbye, wait up to ``drain`` seconds for the broker
        to take the outbox, and close the transport."""
        await self.stop_reading()
        self._goodbye = True
        if self.transport.connected.is_set():
            self.transport.publish(self.role.presence(alive=False))
            if not await self.transport.drain(drain):
                log.warning(
                    "%s: %d messages not acknowledged before shutdown; peers will ask for them",
                    self.me,
                    self.transport.statistics().outbox,
                )
        self.transport.close()

    def foreign_runs(self) -> list[ForeignRunStatus]:
        """Other manifests met under this run's name, and how they differ from ours."""
        return self.foreign.statistics()

    def statistics(self) -> InboxStatus:
        """What waits for the session and what it read, as /status shows it."""
        return InboxStatus(
            waiting=self._inbox.qsize(),
            bytes=self._inbox_bytes,
            wants_waiting=len(self._wants),
            batches=self._batches,
            messages=self._messages,
            listening_changes=self._listening_changes,
            records_given_back=self._given_back.records,
        )

    # -- inbound ---------------------------------------------------------------------------------

    def _on_connect(self) -> None:
        """What every connection begins with: the manifest, retained on its hash, then the
        presence (the transport sends them in this order)."""
        if self._goodbye:
            return
        self.transport.publish(self.session.manifest_message())
        self.transport.publish(self.role.presence(alive=True))

    def _on_message(self, topic: str, payload: bytes) -> None:
        """Called by the transport for every message; the session reads it in ``_ingest``."""
        if not self._intake:
            return
        if topic.startswith(self._manifest_head) and topic.split("/")[-2:-1] == [MANIFEST]:
            self._on_manifest(topic, payload)
            return
        if self.config.admit is not None:
            admitted = self.config.admit(topic, payload)
            if admitted is None:
                return
            payload = admitted
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
        """Feed the session; store what it accepted or retracted, in order; act on the rest."""
        while True:
            batch = [await self._inbox.get()]
            if not self._intake:
                return  # stopped while waiting: left unread, like the rest of the inbox
            self._idle.clear()
            try:
                while len(batch) < INGEST_BATCH and not self._inbox.empty():
                    batch.append(self._inbox.get_nowait())
                await self._read(batch)
            finally:
                self._idle.set()
            # a full inbox never awaits in get(): let the other tasks and the transport run
            await asyncio.sleep(0)

    async def _read(self, batch: list[tuple[str, bytes]]) -> None:
        self._inbox_bytes -= sum(len(p) for _, p in batch)
        self._batches += 1
        self._messages += len(batch)
        now = time.monotonic()
        receive = self.session.receive
        await self._act([(t, p, receive(t, p, now)) for t, p in batch])

    async def _act(
        self, messages: Sequence[tuple[str, bytes, Sequence[Event]]], ticked: Sequence[Event] = ()
    ) -> None:
        """Act on the events of ``messages`` (and of a tick), store what they brought, then
        tell the role."""
        work = _Work()
        for _, _, events in messages:
            for event in events:
                self._dispatch(event, work)
        for event in ticked:
            self._dispatch(event, work)
        if not messages and not work.writes:
            return
        # the nodes whose prefix this batch moved: what the log holds of them is stored once
        # the batch is (per node, not the whole vector: O(frames), not O(swarm))
        async with self._storing:  # the ingest's batches and the tick's events, in turn
            log_ = self.session.log
            ends = {n: log_.next_seq(n) for n in work.touched if n != self.me}
            await self._store(work.writes)
            if work.retracted:
                self._given_back.report(work.retracted, self.session.statistics())
            self.role.received(Received(messages, work.accepted, work.retracted, ends))
        if work.answered and self.config.fill_gaps and self.transport.connected.is_set():
            # an answer to a want moved a prefix: ask for the next range right away, so a
            # late joiner catches up at round-trip speed, not heartbeat speed
            self.publish(self.session.wants(time.monotonic()))

    def _dispatch(self, event: Event, work: _Work) -> None:
        """The one place events are acted on: frames and retractions are queued for the
        holder (``work``), the rest answered or logged here."""
        if isinstance(event, FrameAccepted):
            work.accepted.append(event)
            work.writes.append(Stored(event.frame, event.body, event.provisional))
            work.touched.add(event.frame.node)
            work.answered |= event.via_sync
        elif isinstance(event, Retracted):
            work.retracted.append(event)
            work.writes.append(event)
            work.touched.add(event.node)
        elif isinstance(event, WantReceived):
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
            if self.foreign.seen(event.run_id, event.sender):
                log.warning(
                    "%s: node %s under run name %r runs another manifest (run id %s, ours %s); "
                    "fetching it to name what differs",
                    self.me, event.sender, self.session.manifest.name, event.run_id.hex(),
                    self.session.run_id.hex(),
                )  # fmt: skip
                self._listen(time.monotonic())
        elif isinstance(event, PeerSeen):
            log.info("%s: peer %s is here", self.me, event.node)
        elif isinstance(event, PeerGone):
            log.info("%s: peer %s is gone%s", self.me, event.node, " (silent)" * event.silent)
        else:
            assert_never(event)

    def _on_manifest(self, topic: str, payload: bytes) -> None:
        """A retained manifest we asked for (another run under our name): name what differs."""
        try:
            got = self.foreign.offer(topic, payload)
        except ProtocolError as exc:  # the topic names no node: counted under `invalid`
            self.session.drop(exc.reason, INVALID, str(exc))
            return
        if got is None:
            return
        run_id, what = got
        info = next(r for r in self.foreign.statistics() if r.run_id == run_id.hex())
        log.error(
            "%s: %s under run name %r %s another manifest (run id %s): %s; %s not in this run: "
            "give every node the same run settings (or the same --manifest)",
            self.me, ", ".join(info.nodes), self.session.manifest.name,
            "runs" if len(info.nodes) == 1 else "run", run_id.hex(), what,
            "it is" if len(info.nodes) == 1 else "they are",
        )  # fmt: skip
        self._listen(time.monotonic())  # that one is known: stop listening for it

    def _wanted(self, now: float) -> list[Subscription]:
        """The session's subscriptions, and the manifests of other runs still to fetch."""
        subs = self.session.subscriptions(now)
        prefix = self.session.topics.prefix
        return subs + [manifest_subscription(prefix, rid) for rid in self.foreign.pending()]

    def _listen(self, now: float) -> None:
        subs = self._wanted(now)
        if subs != self._listening:
            self._listening = subs
            self.transport.set_subscriptions(subs)

    async def _store(self, writes: list[Stored | Retracted]) -> None:
        """Appends in batches, each retraction in its place among them."""
        frames: list[Stored] = []
        for item in writes:
            if isinstance(item, Stored):
                frames.append(item)
                continue
            if frames:
                await self.holder.append(frames)
                frames = []
            await self.holder.retract(item.node, item.first_seq)
        if frames:
            await self.holder.append(frames)

    # -- outbound --------------------------------------------------------------------------------

    def _answer_dropped(self, item: Outgoing) -> None:
        """The transport had no room for an answer: counted as ``overload`` under the asker."""
        try:
            route = self.session.topics.parse(item.topic)
        except DecodeError:
            route = None
        self.session.drop("overload", route.to if route else "invalid", "the outbox is full")

    async def _responder(self) -> None:
        """Answer wants from the holder, one at a time (the store has one thread anyway)."""
        while True:
            if not self._wants:
                self._wake_responder.clear()
                await self._wake_responder.wait()
                continue
            want = self._wants.popleft().want
            bodies = await self.holder.frames_for(want.node, want.first, want.count)
            self.publish(self.session.answer(want, bodies))

    async def _heartbeat(self) -> None:
        """Presence when something it says changed, and as a slow heartbeat (each connection
        begins with one: ``_on_connect``); liveness comes from the broker (the will,
        keep-alives) and from every message."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.presence_interval):
                    await self._presence_due.wait()
            self._presence_due.clear()
            if self.transport.connected.is_set():
                self.transport.publish(self.role.presence(alive=True))

    async def _sync(self) -> None:
        """Notice silent peers, follow the relays, ask for what is missing."""
        session = self.session
        listening = session.subscriptions(time.monotonic())
        while True:
            now = time.monotonic()
            if self.config.fill_gaps:
                await self._act([], session.tick(now))
            self.relays = tuple(session.relays(now))
            self._listen(now)
            if (subs := session.subscriptions(now)) != listening:
                listening = subs
                self._listening_changes += 1
                relays = self.relays
                how = f"through relay {', '.join(relays)}" if relays else "directly (no relay up)"
                log.info("%s: listening to the swarm %s", self.me, how)
            if self.config.fill_gaps and self.transport.connected.is_set():
                self.publish(session.wants(now))
            await asyncio.sleep(SYNC_EVERY)
