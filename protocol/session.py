"""One node's protocol session, sans-IO: messages in, events and messages out (like h11).

Theory of operation
-------------------
A ``Session`` is everything one node knows and decides about one run, without any I/O: the
ordered log (``OrderedLog``), the peer table built from presence, the gap-filling planner, the
de-duplication of wants, and the rules of its own frames (seq and clock). The daemon feeds it
what the broker delivers and sends what it returns:

    receive(topic, payload, now)  -> events: FrameAccepted, WantReceived, PeerSeen, PeerGone,
                                     ForeignRun, Dropped
    seal(qs)                      -> the node's next frames (log first, then the wire)
    presence(now, ...) / will()   -> the heartbeat and the message that marks the node gone
    wants(now)                    -> requests for what peers hold and this node lacks
    answer(want, bodies)          -> the stored frames that answer a peer's want
    tick(now)                     -> peers that fell silent (PeerGone)

Time comes in as ``now`` (monotonic seconds); nothing here reads a clock, opens a socket or a
file, or touches torch. What the events ask for (store a frame, look up frames for a want) is
the daemon's job.

Invariants:
  * ``receive`` never raises on input from the network. A message that breaks the protocol
    becomes exactly one ``Dropped`` event with its reason and the sender to blame: the node
    that the topic names as its publisher, or ``invalid`` when the topic names none.
  * A node is the only author of its own records. A frame of this node that arrives from the
    network never enters the log: an equal copy is its own echo (ignored), anything else is
    ``impersonation`` (dropped, loudly). So a stranger's message can never make a node doubt
    its own log.
  * ``seal`` is the only way own records enter the log: seqs continue the own prefix, and the
    clock is one above the largest clock seen, so own clocks never decrease.
  * A ``FrameAccepted`` carries the frame's bytes as received, so what is stored and served to
    peers later still verifies against its author's signature.
  * At most one request per node is in flight (``protocol.sync``); the same want within
    ``want_repeat`` seconds is answered once.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .codec import (
    MAX_FRAME_BYTES,
    MAX_MESSAGE_BYTES,
    encode_frame,
    frame_from_value,
    sign_frame,
    unpack_strict,
)
from .errors import ConflictError, DecodeError, ProtocolError, WrongRunError
from .ids import check_node_id
from .log import OrderedLog
from .manifest import Manifest
from .messages import Presence, Want, encode_presence, encode_want, message_from_value
from .records import Frame, q_to_byte
from .signing import NodeKey
from .sync import PeerView, SyncPlanner
from .topics import PRESENCE, RECORDS, SYNC, Topics

INVALID = "invalid"  # the sender of a message whose topic names no valid node


# == what goes out ==================================================================================


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message for the broker. ``kind``: frame, presence, want or answer."""

    topic: str
    payload: bytes
    kind: str
    retain: bool = False
    records: int = 0  # records the payload carries (own frames only)


@dataclass(frozen=True, slots=True)
class Sealed:
    """An own frame: store ``body`` durably first, then publish ``message``."""

    frame: Frame
    body: bytes
    message: Outgoing


# == events =========================================================================================


@dataclass(frozen=True, slots=True)
class FrameAccepted:
    """A frame with at least one record this node did not hold; ``body`` as received."""

    frame: Frame
    body: bytes
    sender: str
    new_records: int
    via_sync: bool  # an answer to one of our wants (not the author's own broadcast)


@dataclass(frozen=True, slots=True)
class WantReceived:
    """A peer asks for records: look them up in the store and ``answer`` it."""

    want: Want


@dataclass(frozen=True, slots=True)
class PeerSeen:
    """A peer announced itself alive (for the first time, or again after it was gone)."""

    node: str
    first: bool


@dataclass(frozen=True, slots=True)
class PeerGone:
    """A peer said goodbye (its will, or a clean stop) or fell silent."""

    node: str
    silent: bool  # True: no presence for longer than the peer timeout


@dataclass(frozen=True, slots=True)
class ForeignRun:
    """A live node under this run's name announces another run id (another manifest)."""

    sender: str
    run_id: bytes
    manifest: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class Dropped:
    """Input that was not used, the reason (docs/PROTOCOL.md §9) and whom to blame."""

    reason: str
    sender: str
    detail: str
    loud: bool = False  # worth an error in the log: equivocation, impersonation


Event = FrameAccepted | WantReceived | PeerSeen | PeerGone | ForeignRun | Dropped


# == state shown to people ==========================================================================


@dataclass(frozen=True, slots=True)
class PeerInfo:
    node: str
    alive: bool  # it said so, and it spoke within the peer timeout
    last_seen_s: float
    held: Mapping[str, int]
    steps: int
    loss: float | None
    http: str


@dataclass(frozen=True, slots=True)
class SessionStatistics:
    frames_accepted: int
    duplicates: int
    echoes: int
    wants_sent: int
    wants_received: int
    wants_repeated: int
    wants_answered: int
    dropped: Mapping[str, Mapping[str, int]]  # reason -> sender -> count

    @property
    def dropped_total(self) -> int:
        return sum(sum(c.values()) for c in self.dropped.values())


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionConfig:
    frame_records: int = 256  # most records in one own frame
    peer_timeout: float = 12.0  # seconds of silence after which a peer counts as gone
    max_request: int = 4096  # most records one want asks for
    retry_after: float = 3.0  # seconds before an unanswered want is repeated elsewhere
    want_repeat: float = 1.0  # the same want again within this many seconds: answered once


@dataclass(slots=True)
class _Peer:
    presence: Presence
    last_seen: float
    silent: bool = False  # reported gone by tick()

    def alive(self, now: float, timeout: float) -> bool:
        return self.presence.alive and not self.silent and now - self.last_seen < timeout


@dataclass(slots=True)
class _Counters:
    frames_accepted: int = 0
    duplicates: int = 0
    echoes: int = 0
    wants_sent: int = 0
    wants_received: int = 0
    wants_repeated: int = 0
    wants_answered: int = 0
    dropped: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))


# == the session ====================================================================================


class Session:
    """The protocol state of node ``me`` in the run ``manifest`` describes."""

    def __init__(
        self,
        manifest: Manifest,
        me: str,
        *,
        prefix: str = "seedswarm",
        key: NodeKey | None = None,
        config: SessionConfig | None = None,
        log: OrderedLog | None = None,
    ) -> None:
        self.manifest = manifest
        self.me = check_node_id(me)
        self.run_id = manifest.run_id()
        self.topics = Topics(prefix, manifest.name)
        self.config = config or SessionConfig()
        self.log = log if log is not None else OrderedLog()
        self.http = ""  # the status URL announced in presence
        self._keys = manifest.public_keys() or None
        self._key = key
        self._planner = SyncPlanner(
            self.me, max_request=self.config.max_request, retry_after=self.config.retry_after
        )
        self._peers: dict[str, _Peer] = {}
        self._hints: dict[str, int] = {}  # end of the newest frame seen from each author
        self._answered: dict[tuple[str, str, int], float] = {}
        self._n = _Counters()

    # -- input -------------------------------------------------------------------------------

    def receive(self, topic: str, payload: bytes, now: float) -> list[Event]:
        """Everything a message means; never raises on what a peer can send."""
        try:
            route = self.topics.parse(topic)
        except DecodeError as exc:
            return [self.drop(exc.reason, INVALID, str(exc))]
        if route is None:
            return [self.drop("bad_topic", INVALID, f"topic {topic[:120]!r} is not of this run")]
        if route.kind == PRESENCE:
            return self._on_presence(route.sender, payload, now)
        if route.kind == SYNC and route.to != self.me:
            return [self.drop("bad_topic", route.sender, f"a sync message for {route.to}")]
        try:
            value = unpack_strict(payload, max_bytes=MAX_FRAME_BYTES)
            if isinstance(value, dict):
                return self._on_map(route.kind, route.sender, value, now)
            frame = frame_from_value(value, run_id=self.run_id, keys=self._keys)
            if route.kind == RECORDS and frame.node != route.sender:
                raise DecodeError(
                    f"{route.sender} published a frame of {frame.node}", reason="topic_mismatch"
                )
            if frame.node == self.me:
                return self._on_own_frame(frame, route.sender)
            offered = self.log.offer(frame)
        except ConflictError as exc:
            return [self.drop(exc.reason, route.sender, str(exc), loud=True)]
        except ProtocolError as exc:
            return [self.drop(exc.reason, route.sender, str(exc))]
        self._n.duplicates += offered.duplicates
        if frame.end_seq > self._hints.get(frame.node, 0):
            self._hints[frame.node] = frame.end_seq
        if not offered.new:
            return []
        self._n.frames_accepted += 1
        return [
            FrameAccepted(frame, bytes(payload), route.sender, len(offered.new), route.kind == SYNC)
        ]

    def _on_map(self, kind: str, sender: str, value: dict[Any, Any], now: float) -> list[Event]:
        if kind != SYNC:
            raise DecodeError("a map on a records topic", reason="bad_type")
        msg = message_from_value(value, run_id=self.run_id)
        if not isinstance(msg, Want):
            raise DecodeError("presence on a sync topic", reason="bad_type")
        if msg.requester != sender:
            raise DecodeError(f"{sender} sent a want of {msg.requester}", reason="topic_mismatch")
        self._n.wants_received += 1
        key = (msg.requester, msg.node, msg.first)
        if now - self._answered.get(key, -1e18) < self.config.want_repeat:
            self._n.wants_repeated += 1
            return []  # the same want again at once: the answer is already on its way
        if len(self._answered) >= 10_000:
            horizon = now - self.config.want_repeat
            self._answered = {k: t for k, t in self._answered.items() if t > horizon}
        self._answered[key] = now
        return [WantReceived(msg)]

    def _on_own_frame(self, frame: Frame, sender: str) -> list[Event]:
        """A frame in this node's name: its own echo, or somebody impersonating it."""
        held = self.log.records(self.me, frame.first_seq, frame.end_seq)
        if len(held) == frame.count and all(
            q_to_byte(r.q) == b and r.clock == frame.clock
            for r, b in zip(held, frame.qs, strict=True)
        ):
            self._n.echoes += 1
            return []
        return [
            self.drop(
                "impersonation",
                sender,
                f"a frame in this node's name ({self.me} seq {frame.first_seq}..{frame.end_seq - 1}) "
                "that it never wrote",
                loud=True,
            )
        ]

    def _on_presence(self, sender: str, payload: bytes, now: float) -> list[Event]:
        if not payload:
            return []  # a retained message being cleared
        try:
            raw = unpack_strict(payload, max_bytes=MAX_MESSAGE_BYTES)
            msg = message_from_value(raw, run_id=self.run_id)
        except WrongRunError as exc:
            events: list[Event] = [self.drop(exc.reason, sender, str(exc))]
            if isinstance(raw, dict) and raw.get("alive") is True and sender != self.me:
                theirs = raw.get("manifest")
                rid = raw.get("run")
                events.append(
                    ForeignRun(
                        sender,
                        rid if isinstance(rid, bytes) else b"",
                        theirs if isinstance(theirs, dict) else None,
                    )
                )
            return events
        except ProtocolError as exc:
            return [self.drop(exc.reason, sender, str(exc))]
        if not isinstance(msg, Presence) or msg.node != sender:
            return [self.drop("topic_mismatch", sender, "presence of another node")]
        if sender == self.me:
            return []  # our own retained presence, back from the broker
        before = self._peers.get(sender)
        was_alive = before is not None and before.presence.alive and not before.silent
        self._peers[sender] = _Peer(msg, now)
        if msg.alive and not was_alive:
            return [PeerSeen(sender, first=before is None)]
        if not msg.alive and was_alive:
            return [PeerGone(sender, silent=False)]
        return []

    def drop(self, reason: str, sender: str, detail: str, *, loud: bool = False) -> Dropped:
        """Count input that is not used (also for the daemon's own drops, e.g. ``overload``)."""
        self._n.dropped[reason][sender] += 1
        return Dropped(reason, sender, detail, loud)

    # -- own records -------------------------------------------------------------------------

    def seal(self, qs: Sequence[int]) -> list[Sealed]:
        """The next own frames for ``qs`` (the bytes of the own steps, in seq order).

        The records are in the log when this returns; the caller stores ``body`` durably and
        only then publishes ``message``.
        """
        if self._keys is not None and self._key is None:
            raise ValueError("a signed run: this session has no key to sign frames with")
        out: list[Sealed] = []
        clock = self.log.max_clock + 1
        per = self.config.frame_records
        for i in range(0, len(qs), per):
            frame = Frame(
                self.run_id,
                self.me,
                self.log.next_seq(self.me),
                clock,
                bytes(q_to_byte(q) for q in qs[i : i + per]),
            )
            if self._key is not None:
                frame = sign_frame(frame, self._key)
            self.log.add_own(frame)
            body = encode_frame(frame)
            out.append(
                Sealed(
                    frame,
                    body,
                    Outgoing(self.topics.records(self.me), body, "frame", records=frame.count),
                )
            )
        return out

    # -- control messages --------------------------------------------------------------------

    def presence(self, *, steps: int, loss: float | None, alive: bool = True) -> Outgoing:
        """The retained heartbeat: what this node holds and can serve."""
        p = Presence(
            node=self.me,
            run_id=self.run_id,
            alive=alive,
            held=self.log.held(),
            http=self.http,
            steps=steps,
            loss=loss,
            manifest=self.manifest.to_dict(),
        )
        return Outgoing(self.topics.presence(self.me), encode_presence(p), "presence", retain=True)

    def will(self) -> Outgoing:
        """What the broker publishes if this node's connection dies without a goodbye."""
        p = Presence(self.me, self.run_id, alive=False)
        return Outgoing(self.topics.presence(self.me), encode_presence(p), "presence", retain=True)

    def wants(self, now: float) -> list[Outgoing]:
        """Ask live peers for what their presence (or their frames) say they hold and we lack."""
        views = {}
        timeout = self.config.peer_timeout
        for name, peer in self._peers.items():
            held = peer.presence.held
            hint = self._hints.get(name, 0)
            if hint > held.get(name, 0):
                held = {**held, name: hint}  # its newest frame says it holds at least this
            views[name] = PeerView(name, peer.alive(now, timeout), held)
        out = []
        for req in self._planner.plan(self.log.held(), views, now):
            want = Want(self.me, self.run_id, req.node, req.first, req.count)
            out.append(Outgoing(self.topics.sync(req.target, self.me), encode_want(want), "want"))
        self._n.wants_sent += len(out)
        return out

    def answer(self, want: Want, bodies: Sequence[bytes]) -> list[Outgoing]:
        """The stored frames ``bodies`` (byte for byte) as an answer to ``want``."""
        self._n.wants_answered += 1
        topic = self.topics.sync(want.requester, self.me)
        return [Outgoing(topic, body, "answer") for body in bodies]

    def tick(self, now: float) -> list[Event]:
        """Peers that said they were alive but have been silent past the timeout."""
        out: list[Event] = []
        for name, peer in self._peers.items():
            silent = now - peer.last_seen >= self.config.peer_timeout
            if peer.presence.alive and not peer.silent and silent:
                peer.silent = True
                out.append(PeerGone(name, silent=True))
        return out

    # -- state -------------------------------------------------------------------------------

    def peers(self, now: float) -> list[PeerInfo]:
        timeout = self.config.peer_timeout
        return [
            PeerInfo(
                node=name,
                alive=p.alive(now, timeout),
                last_seen_s=now - p.last_seen,
                held=dict(p.presence.held),
                steps=p.presence.steps,
                loss=p.presence.loss,
                http=p.presence.http,
            )
            for name, p in sorted(self._peers.items())
        ]

    def live_peers(self, now: float) -> int:
        return sum(1 for p in self._peers.values() if p.alive(now, self.config.peer_timeout))

    def statistics(self) -> SessionStatistics:
        n = self._n
        return SessionStatistics(
            frames_accepted=n.frames_accepted,
            duplicates=n.duplicates,
            echoes=n.echoes,
            wants_sent=n.wants_sent,
            wants_received=n.wants_received,
            wants_repeated=n.wants_repeated,
            wants_answered=n.wants_answered,
            dropped={r: dict(sorted(c.items())) for r, c in sorted(n.dropped.items())},
        )
