"""One node's protocol session, sans-IO: messages in, events and messages out (like h11).

Theory of operation
-------------------
A ``Session`` is everything one node knows and decides about one run, without any I/O: the
ordered log (``OrderedLog``), the peer table built from presence, the gap-filling planner,
the budgets of what peers may ask of it, and the rules of its own frames (seq and clock). The
daemon feeds it what the broker delivers and sends what it returns (the types it speaks,
events and outgoing messages, are in protocol/events.py):

    receive(topic, payload, now)  -> events: FrameAccepted, WantReceived, VvRequested,
                                     PeerSeen, PeerGone, Retracted, ForeignRun, Dropped
    seal(qs) / stored(sealed)     -> the node's next frames (log first, then the store, then
                                     the wire)
    presence(...) / will()        -> the heartbeat and the message that marks the node gone
    manifest_message()            -> the retained manifest, published on every connect
    wants(now)                    -> requests for what peers hold and this node lacks
    answer(want, bodies) / vv(..) -> the stored frames that answer a want; our version vector
    tick(now)                     -> peers that fell silent, and the table pruned

Whether to follow a relay (named by the run, not caught dropping or altering) is decided by
``RelayWatch`` (protocol/relay_watch.py); the session feeds it and reports its verdicts.

Time comes in as ``now`` (monotonic seconds); nothing here reads a clock, opens a socket or a
file, or touches torch. What the events ask for (store a frame, look up frames for a want,
un-apply retracted records) is the daemon's job.

Who may say what (docs/PROTOCOL.md §9):
  * In a signed run every message is signed by the node that sends it (frames by their
    author), so any copy of a record with a valid signature is its author's.
  * In an open run only the topic says who published (an ACL'd broker can make that true):
    records of N are N's when they come on ``records/N``, from N on ``sync/<me>/N``, or in a
    relay's bundle; a third party's copy is taken only while N is away and only if N once
    announced itself, and then only *provisionally* (``OrderedLog``): when N is back, the copy
    is retracted and asked for again from N.

Invariants:
  * ``receive`` never raises on input from the network. A message that breaks the protocol
    becomes exactly one ``Dropped`` event (per frame, in a bundle) with its reason and the
    sender to blame: the node that the topic names as its publisher, or ``invalid`` when the
    topic names none. At most ``MAX_BLAMED`` senders are counted per reason, then ``other``.
  * A node is the only author of its own records. A frame in its name that arrives from the
    network never enters the log: an equal copy is its own echo (ignored), anything else is
    ``impersonation`` (dropped, loudly). A stranger's message never makes a node doubt its log.
  * ``seal`` is the only way own records enter the log: seqs continue the own prefix, and the
    clock is one above the largest clock seen, so own clocks never decrease.
  * A ``FrameAccepted`` carries the frame's bytes as received, so what is stored and served to
    peers later still verifies against its author's signature.
  * Everything a peer can make this node keep or do is bounded: the peer table
    (``max_peers``), the wants and vv requests it answers per requester (a token bucket), and
    the wants one message can cause (one claim per presence, ``limit`` per plan).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from .codec import (
    BUNDLE_V2,
    FRAME_V2,
    decode_bundle,
    decode_frame,
    encode_bundle,
    encode_frame,
    sign_frame,
)
from .errors import ConflictError, DecodeError, ProtocolError, WrongRunError
from .events import (
    Dropped,
    Event,
    ForeignRun,
    FrameAccepted,
    Kind,
    Outgoing,
    PeerGone,
    PeerInfo,
    PeerSeen,
    Retracted,
    Sealed,
    SessionStatistics,
    VvRequested,
    WantReceived,
)
from .ids import check_node_id
from .log import OrderedLog
from .manifest import Manifest
from .messages import (
    Presence,
    SnapshotAdvert,
    Vv,
    VvRequest,
    Want,
    decode_control,
    encode_presence,
    encode_vv,
    encode_vv_request,
    encode_want,
)
from .peers import Budgets, Peer, spread
from .records import Frame, q_to_byte
from .relay_watch import RelayWatch
from .repair import ContentRepair, Verdict
from .retained import manifest_payload
from .signing import NodeKey
from .sync import SyncPlanner
from .topics import BUNDLES, PRESENCE, RECORDS, Subscription, Topics
from .vv import held_digest

INVALID = "invalid"  # the sender of a message whose topic names no valid node
OTHER = "other"  # senders beyond MAX_BLAMED for one drop reason
MAX_BLAMED = 256
MAX_BUNDLE_BYTES = 256 * 1024  # answers are split into bundles of at most this

AUTHOR, RELAY, THIRD_PARTY = "author", "relay", "third party"


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionConfig:
    frame_records: int = 1024  # most records in one own frame
    peer_timeout: float = 180.0  # seconds of silence after which a peer counts as gone
    max_request: int = 4096  # most records one want asks for
    retry_after: float = 3.0  # seconds before an unanswered want is repeated elsewhere
    want_repeat: float = 1.0  # the same want again within this many seconds: answered once
    budget_rate: float = 20.0  # wants and vv requests answered per second and requester...
    budget_burst: float = 100.0  # ... with bursts of up to this many
    max_peers: int = 8192  # peers remembered; the longest gone are forgotten first
    forget_after: float = 3600.0  # a peer gone this long is forgotten
    vv_every: float = 5.0  # seconds between two requests for a peer's version vector
    wants_per_plan: int = 64  # most wants one plan sends
    use_relays: bool = True  # listen to relays' bundles instead of every node, when one is up
    relay_timeout: float = 10.0  # seconds without a relay's bundle before listening directly
    relay_echo: float = 5.0  # seconds an own frame may take to come back in a followed relay's
    # bundles before the relay counts as not forwarding and is no longer followed
    distrust_for: float = 600.0  # seconds a relay caught dropping or altering is not followed


@dataclass(slots=True)
class _Counters:
    frames_accepted: int = 0
    duplicates: int = 0
    echoes: int = 0
    beyond_gap: int = 0
    provisional: int = 0
    retracted: int = 0
    wants_sent: int = 0
    wants_received: int = 0
    wants_answered: int = 0
    vv_requests_sent: int = 0
    vv_requests_answered: int = 0
    repairs: int = 0
    content_mismatches: int = 0
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
        relay: bool = False,
    ) -> None:
        self.manifest = manifest
        self.relay = relay  # this session is a relay's: it says so, and listens directly
        self.me = check_node_id(me)
        self.run_id = manifest.run_id()
        self.topics = Topics(prefix, manifest.name)
        self.config = config or SessionConfig()
        self.log = log if log is not None else OrderedLog()
        self.http = ""  # the status URL announced in presence
        # own records durable in the store: a restarting node passes the log its store holds
        # (a log filled after this would leave them counted as unstored)
        self.own_stored = self.log.next_seq(me)
        self._keys = manifest.public_keys() or None
        self._key = key
        self._planner = SyncPlanner(
            self.me, max_request=self.config.max_request, retry_after=self.config.retry_after
        )
        self._peers: dict[str, Peer] = {}
        self._budgets = Budgets(
            self.config.budget_rate, self.config.budget_burst, self.config.max_peers
        )
        self._answered: dict[tuple[str, str, int], float] = {}
        self._relays = RelayWatch(
            manifest.relays,
            relay_timeout=self.config.relay_timeout,
            relay_echo=self.config.relay_echo,
            distrust_for=self.config.distrust_for,
        )
        self._content = ContentRepair(
            self.me,
            vv_every=self.config.vv_every,
            peer_timeout=self.config.peer_timeout,
            max_words=self.config.max_peers,
        )
        self._n = _Counters()

    @property
    def signed(self) -> bool:
        return self._keys is not None

    # -- input -------------------------------------------------------------------------------

    def receive(self, topic: str, payload: bytes, now: float) -> list[Event]:
        """Everything a message means; never raises on what a peer can send."""
        try:
            route = self.topics.parse(topic)
        except DecodeError as exc:
            return [self.drop(exc.reason, INVALID, str(exc))]
        if route is None:
            return [self.drop("bad_topic", INVALID, f"topic {topic[:120]!r} is not of this run")]
        sender = route.sender
        if route.kind == PRESENCE:
            return self._on_presence(sender, payload, now)
        if route.kind == RECORDS:
            return self._on_frame_bytes(sender, sender, payload, now, AUTHOR)
        if route.kind == BUNDLES:
            # only a relay the run names, caught neither dropping nor altering, is trusted like
            # the broker; any other client's bundle is a third party's copy (docs §9)
            source = RELAY if self._relays.trusted(sender, now) else THIRD_PARTY
            return self._on_bundle(sender, payload, now, source, relayed=True)
        if route.to != self.me:
            return [self.drop("bad_topic", sender, f"a sync message for {route.to}")]
        if payload[:1] == bytes([BUNDLE_V2]):
            return self._on_bundle(sender, payload, now, THIRD_PARTY)
        return self._on_control(sender, payload, now)

    def _on_bundle(
        self, sender: str, payload: bytes, now: float, source: str, *, relayed: bool = False
    ) -> list[Event]:
        try:
            entries = decode_bundle(payload)
        except ProtocolError as exc:
            return [self.drop(exc.reason, sender, str(exc))]
        events: list[Event] = []
        if relayed:
            if source == RELAY:
                self._relay_spoke(sender, now)
            for node, data in entries:
                # a relay forwards frames and presence of many nodes: one bad entry is one drop
                if data[:1] == bytes([FRAME_V2]):
                    events += self._on_frame_bytes(sender, node, data, now, source, relay=sender)
                elif not data:
                    # not a cleared retained presence (a relay forwards none): a cut entry
                    events.append(self.drop("truncated", sender, f"an empty entry of {node}"))
                else:
                    # a presence says who sent it by its signature (signed) or by the relay's
                    # word (a relay of the run); a stranger speaks only for itself
                    trusted = source == RELAY or self.signed or node == sender
                    events += self._on_presence(node, data, now, blame=sender, trusted=trusted)
            return events
        for node, data in entries:
            # a frame in a sync answer is its author's word when its author sent it
            src = AUTHOR if node == sender else source
            got = self._on_frame_bytes(sender, node, data, now, src, via_sync=True)
            events += got
            if any(isinstance(e, Dropped) for e in got):
                break  # a sender of bad frames: the rest of its bundle is not worth reading
        return events

    def _relay_spoke(self, relay: str, now: float) -> None:
        peer = self._peers.get(relay)
        if peer is None or not peer.presence.relay:
            return  # bundles of a node that never said it relays: read, not listened to
        self._relays.bundle_came(relay, now)
        self._heard(relay, now)

    def relays(self, now: float) -> list[str]:
        """The relays this node can listen to now: the run names them, they said so, their
        bundles come, and none was caught dropping or altering what it forwards."""
        timeout = self.config.peer_timeout

        def alive(relay: str) -> bool:
            peer = self._peers.get(relay)
            return peer is not None and peer.alive(now, timeout)

        return self._relays.up(now, alive)

    def _distrust(self, relay: str, now: float, reason: str, detail: str) -> Dropped:
        """Stop following ``relay`` for a while; one loud drop names it and why."""
        self._relays.distrust(relay, now, reason)
        return self.drop(reason, relay, detail, loud=True)

    def subscriptions(self, now: float) -> list[Subscription]:
        """What to listen to now: every node's frames and presence directly, or, while a relay
        is up (and this is no relay), its bundles, which carry both (docs/PROTOCOL.md §9)."""
        direct = self.relay or not self.config.use_relays or not self.relays(now)
        subs = self.topics.subscriptions(self.me, records=direct, presence=direct, bundles=True)
        if self.relay:
            subs = [s for s in subs if BUNDLES not in s.topic]  # relays don't listen to relays
        return subs

    def _on_frame_bytes(
        self,
        sender: str,
        node: str,
        data: bytes,
        now: float,
        source: str,
        *,
        via_sync: bool = False,
        relay: str = "",
    ) -> list[Event]:
        try:
            frame = decode_frame(data, run_id=self.run_id, node=node, keys=self._keys)
        except ProtocolError as exc:
            return [self.drop(exc.reason, sender, str(exc))]
        return self._offer(frame, data, sender, now, source, via_sync, relay)

    def _offer(
        self,
        frame: Frame,
        data: bytes,
        sender: str,
        now: float,
        source: str,
        via_sync: bool,
        relay: str = "",
    ) -> list[Event]:
        if frame.node == self.me:
            return self._on_own_frame(frame, sender, now, relay=relay, trusted=source == RELAY)
        if not self.signed and frame.node not in self._peers and not self.log.next_seq(frame.node):
            # an open run: frames name no run, so a node's are taken once its presence said
            # it is in this run (a node of another manifest under our run name never did)
            return [self.drop("unannounced", sender, f"{frame.node} never announced itself")]
        provisional = False
        if not self.signed and source == THIRD_PARTY:
            author = self._peers.get(frame.node)
            if author is None or author.alive(now, self.config.peer_timeout):
                return [
                    self.drop(
                        "untrusted",
                        sender,
                        f"{sender} sent records of {frame.node}, who "
                        + ("is here to send them itself" if author else "never announced itself"),
                    )
                ]
            provisional = True
        try:
            offered = self.log.offer(frame, provisional=provisional)
        except ConflictError as exc:
            return [self.drop(exc.reason, sender, str(exc), loud=True)]
        except ProtocolError as exc:
            return [self.drop(exc.reason, sender, str(exc))]
        held = self.log.next_seq(frame.node)
        self._planner.claim(frame.node, frame.node, frame.end_seq, held)
        if offered.new and source != THIRD_PARTY:
            self._heard(frame.node, now)  # new records from it (or its relay): it is alive
        if offered.beyond_gap:
            self._n.beyond_gap += 1  # not kept: its range is asked for, from its author
            return []
        self._n.duplicates += offered.duplicates
        if not offered.new:
            return []
        if source == RELAY:  # who to blame if its author's word ever contradicts these
            self._relays.delivered(frame.node, sender)
        self._n.frames_accepted += 1
        if provisional:
            self._n.provisional += len(offered.new)
        return [FrameAccepted(frame, bytes(data), sender, len(offered.new), via_sync, provisional)]

    def _on_own_frame(
        self, frame: Frame, sender: str, now: float, *, relay: str = "", trusted: bool = False
    ) -> list[Event]:
        """A frame in this node's name: its own echo, or somebody impersonating it. A followed
        relay's bundles must carry every own frame back, unaltered (``tick`` checks)."""
        held = self.log.records(self.me, frame.first_seq, frame.end_seq)
        if len(held) == frame.count and all(
            q_to_byte(r.q) == b and r.clock == frame.clock
            for r, b in zip(held, frame.qs, strict=True)
        ):
            if not relay:
                self._n.echoes += 1  # the broker's echo (a relay's bundle carries it by design)
            elif trusted:
                self._relays.echoed(relay, frame.end_seq)
            return []
        detail = (
            f"a frame in this node's name ({self.me} seq {frame.first_seq}.."
            f"{frame.end_seq - 1}) that it never wrote"
        )
        out: list[Event] = [self.drop("impersonation", sender, detail, loud=True)]
        if relay and trusted:
            out.append(self._distrust(relay, now, "tampered", f"{relay} altered {detail}"))
        return out

    def _on_control(self, sender: str, payload: bytes, now: float) -> list[Event]:
        # decoded and, in a signed run, verified before the budget is charged: a message that
        # is not its sender's (junk published on sync/<me>/<victim>) costs the victim nothing
        try:
            msg = decode_control(payload, sender=sender, run_id=self.run_id, keys=self._keys)
        except ProtocolError as exc:
            return [self.drop(exc.reason, sender, str(exc))]
        if isinstance(msg, Presence):
            return [self.drop("bad_type", sender, "presence on a sync topic")]
        if not self._budgets.spend(sender, now):
            return [self.drop("over_budget", sender, f"{sender} sends more than its budget")]
        self._heard(sender, now)
        if isinstance(msg, Vv):
            for node, end in msg.held.items():
                self._planner.claim(sender, node, end, self.log.next_seq(node))
            return self._judge(self._content.compare(msg, self.log), now)
        if isinstance(msg, VvRequest):
            return [VvRequested(sender)]
        self._n.wants_received += 1
        key = (msg.requester, msg.node, msg.first)
        if now - self._answered.get(key, -1e18) < self.config.want_repeat:
            return []  # the same want again at once: the answer is already on its way
        if len(self._answered) >= 10_000:
            horizon = now - self.config.want_repeat
            self._answered = {k: t for k, t in self._answered.items() if t > horizon}
        self._answered[key] = now
        return [WantReceived(msg)]

    def _on_presence(
        self,
        sender: str,
        payload: bytes,
        now: float,
        *,
        blame: str | None = None,
        trusted: bool = True,
    ) -> list[Event]:
        """``sender``'s presence; ``blame``: who forwarded it (a relay), if not the sender;
        ``trusted``: False when a client that is no relay of the run forwarded it, in an open
        run (then it is nobody's word but that client's)."""
        blamed = blame or sender
        if not payload:
            return []  # a retained message being cleared
        try:
            msg = decode_control(payload, sender=sender, run_id=self.run_id, keys=self._keys)
        except WrongRunError as exc:
            events: list[Event] = [self.drop(exc.reason, blamed, str(exc))]
            if sender != self.me:
                events.append(ForeignRun(sender, exc.run_id))
            return events
        except ProtocolError as exc:
            return [self.drop(exc.reason, blamed, str(exc))]
        if not isinstance(msg, Presence):
            return [self.drop("bad_type", blamed, "a presence topic carries presence only")]
        if sender == self.me:
            return []  # our own retained presence, back from the broker
        if not trusted:
            return [self.drop("untrusted", blamed, f"{blamed} forwarded presence of {sender}")]
        before = self._peers.get(sender)
        was_alive = before is not None and before.alive(now, self.config.peer_timeout)
        if before is None and len(self._peers) >= self.config.max_peers:
            self._prune(now, room=1)
        if before is None:
            peer = Peer(msg, now, spread(self.me, sender))
        else:
            peer = Peer(msg, now, before.spread, vv_asked=before.vv_asked)
        self._peers[sender] = peer
        self._planner.claim(sender, sender, msg.own, self.log.next_seq(sender))
        out: list[Event] = []
        if msg.alive and not was_alive:
            out.append(PeerSeen(sender, first=before is None))
            gone = self.log.retract(sender)  # its own copy replaces what others gave us
            if gone:
                self._n.retracted += len(gone)
                out.append(Retracted(sender, tuple(gone)))
        elif not msg.alive and was_alive:
            out.append(PeerGone(sender, silent=False))
        return out

    def _heard(self, node: str, now: float) -> None:
        """A peer spoke (any valid message of its own): it is alive now."""
        peer = self._peers.get(node)
        if peer is not None and peer.presence.alive:
            peer.last_seen = now
            peer.silent = False

    def drop(self, reason: str, sender: str, detail: str, *, loud: bool = False) -> Dropped:
        """Count input that is not used (also for the daemon's own drops, e.g. ``overload``)."""
        counts = self._n.dropped[reason]
        blamed = sender if sender in counts or len(counts) < MAX_BLAMED else OTHER
        counts[blamed] += 1
        return Dropped(reason, blamed, detail, loud)

    def overloaded(self, topic: str, detail: str) -> Dropped:
        """A message the daemon had no room to read (``overload``), counted under the sender
        its topic names (gap filling recovers a frame dropped this way)."""
        try:
            route = self.topics.parse(topic)
        except DecodeError:
            route = None
        return self.drop("overload", route.sender if route else "invalid", detail)

    # -- own records -------------------------------------------------------------------------

    def seal(self, qs: Sequence[int]) -> list[Sealed]:
        """The next own frames for ``qs`` (the bytes of the own steps, in seq order).

        The records are in the log when this returns; the caller stores ``body`` durably,
        calls ``stored``, and only then publishes ``message``.
        """
        if self.signed and self._key is None:
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
            message = Outgoing(self.topics.records(self.me), body, Kind.FRAME, records=frame.count)
            out.append(Sealed(frame, body, message))
        return out

    def stored(self, sealed: Sequence[Sealed]) -> None:
        """The store holds these own frames now: presence may announce them."""
        for s in sealed:
            self.own_stored = max(self.own_stored, s.frame.end_seq)

    # -- control messages --------------------------------------------------------------------

    def presence(
        self,
        *,
        steps: int,
        loss: float | None,
        alive: bool = True,
        snapshot: SnapshotAdvert | None = None,
    ) -> Outgoing:
        """The retained heartbeat: of constant size, whatever the size of the swarm."""
        held = self.log.held_content()
        p = Presence(
            node=self.me,
            run_id=self.run_id,
            alive=alive,
            own=self.own_stored,
            held_digest=held_digest(held),
            held_total=sum(s for s, _ in held.values()),
            steps=steps,
            loss=loss,
            http=self.http[:256],
            snapshot=snapshot,
            relay=self.relay,
        )
        payload = encode_presence(p, self._key)
        return Outgoing(self.topics.presence(self.me), payload, Kind.PRESENCE, retain=True)

    def manifest_message(self) -> Outgoing:
        """The run's manifest, retained on ``manifest/<run id>``: published each time the node
        connects, so a joiner that knows only the run id can fetch it (docs/PROTOCOL.md §7)."""
        topic = self.topics.manifest(self.run_id)
        return Outgoing(topic, manifest_payload(self.manifest), Kind.MANIFEST, retain=True)

    def will(self) -> Outgoing:
        """What the broker publishes if this node's connection dies without a goodbye."""
        p = Presence(self.me, self.run_id, alive=False, relay=self.relay)
        payload = encode_presence(p, self._key)
        return Outgoing(self.topics.presence(self.me), payload, Kind.PRESENCE, retain=True)

    def wants(self, now: float) -> list[Outgoing]:
        """Ask for what peers say they hold and we lack; ask for a peer's whole version vector
        now and then when it holds more than we do and its digest differs from ours."""
        timeout = self.config.peer_timeout

        def eligible(holder: str, node: str) -> bool:
            peer = self._peers.get(holder)
            if peer is None or not peer.alive(now, timeout):
                return False
            if self.signed or holder == node:
                return True
            author = self._peers.get(node)  # open run: third parties only for absent authors
            return author is not None and not author.alive(now, timeout)

        out = []
        plan = self._planner.plan(
            self.log.next_seq, eligible, now, limit=self.config.wants_per_plan
        )
        for req in plan:
            want = Want(self.me, self.run_id, req.node, req.first, req.count)
            topic = self.topics.sync(req.target, self.me)
            out.append(Outgoing(topic, encode_want(want, self._key), Kind.WANT))
        self._n.wants_sent += len(out)
        out += self._vv_requests(now)
        return out

    def _vv_requests(self, now: float) -> list[Outgoing]:
        """At most one vv request every ``vv_every`` seconds in all for what peers hold, and
        one to each node whose records a peer holds with other bytes than ours: its own word
        on them decides (§9, repair; ``ContentRepair.vv_targets`` says whom)."""
        targets = self._content.vv_targets(now, self._peers, self.log.held_content())
        req = encode_vv_request(VvRequest(self.me, self.run_id), self._key)
        self._n.vv_requests_sent += len(targets)
        return [Outgoing(self.topics.sync(t, self.me), req, Kind.VV_REQUEST) for t in targets]

    def _judge(self, verdicts: Sequence[Verdict], now: float) -> list[Event]:
        """What comparisons of records with a peer's copy mean: a copy its author contradicts
        is repaired; a copy another peer holds otherwise makes its author a suspect, asked for
        its own word (``ContentRepair``)."""
        out: list[Event] = []
        for v in verdicts:
            if not v.agrees:
                self._n.content_mismatches += 1
            if self._content.repair_now(v):
                out += self._repair(v.node, now)
        return out

    def _repair(self, node: str, now: float) -> list[Event]:
        """Our copy of ``node``'s records contradicts its author's: give all of it back (the
        model un-applies it exactly), blame the relays that brought it, and ask again from
        the author."""
        self._content.repaired(node)
        gone = self.log.truncate(node, 0)
        out: list[Event] = []
        if gone:
            self._n.repairs += 1
            out.append(Retracted(node, tuple(gone)))
        peer = self._peers.get(node)
        if peer is not None:
            self._planner.claim(node, node, peer.presence.own, 0)
        out += [
            self._distrust(
                relay, now, "tampered", f"{relay} forwarded records of {node} that it did not write"
            )
            for relay in self._relays.blame(node)
        ]
        return out

    def answer(self, want: Want, bodies: Sequence[bytes]) -> list[Outgoing]:
        """The stored frames ``bodies`` (byte for byte), in bundles, as an answer to ``want``."""
        self._n.wants_answered += 1
        topic = self.topics.sync(want.requester, self.me)
        out: list[Outgoing] = []
        entries: list[tuple[str, bytes]] = []
        size = 0
        for body in bodies:
            if entries and size + len(body) > MAX_BUNDLE_BYTES:
                out.append(Outgoing(topic, encode_bundle(entries), Kind.ANSWER))
                entries, size = [], 0
            entries.append((want.node, body))
            size += len(body) + 40
        if entries:
            out.append(Outgoing(topic, encode_bundle(entries), Kind.ANSWER))
        return out

    def vv(self, requester: str) -> Outgoing:
        """Our whole version vector, for a peer that asked for it."""
        self._n.vv_requests_answered += 1
        held = self.log.held_content()
        vv = Vv(
            self.me,
            self.run_id,
            {n: s for n, (s, _) in held.items()},
            {n: c for n, (_, c) in held.items()},
        )
        payload = encode_vv(vv, self._key)
        return Outgoing(self.topics.sync(requester, self.me), payload, Kind.VV)

    def tick(self, now: float) -> list[Event]:
        """Peers that said they were alive but fell silent; the long gone are forgotten; a
        followed relay that did not carry an own frame back in time is no longer followed; an
        author's word on records this node did not hold yet is checked once it holds them."""
        out = self._check_relays(now) + self._judge(self._content.due(self.log), now)
        for name, peer in self._peers.items():
            silent = now - peer.last_seen >= self.config.peer_timeout
            if peer.presence.alive and not peer.silent and silent:
                peer.silent = True
                out.append(PeerGone(name, silent=True))
        self._prune(now)
        return out

    def _check_relays(self, now: float) -> list[Event]:
        """Every followed relay must bring each own frame back within ``relay_echo`` seconds
        of when it became durable (and so was published): a relay that forwards nothing, or
        drops frames, is caught by the authors it drops and no longer followed (§9)."""
        return [
            self._distrust(
                late.relay, now, "relay_dropped", f"{late.relay} did not forward own records "
                f"{late.echoed}..{late.end - 1} within {self.config.relay_echo:g} s"
            )
            for late in self._relays.check(self.own_stored, now)
        ]  # fmt: skip

    def _prune(self, now: float, room: int = 0) -> None:
        c = self.config
        gone = sorted(
            (p.last_seen, name)
            for name, p in self._peers.items()
            if not p.alive(now, c.peer_timeout)
        )
        excess = len(self._peers) + room - c.max_peers
        for i, (last_seen, name) in enumerate(gone):
            if i >= excess and now - last_seen < c.forget_after:
                break
            del self._peers[name]
            self._planner.forget(name)

    # -- state -------------------------------------------------------------------------------

    def peers(self, now: float) -> list[PeerInfo]:
        timeout = self.config.peer_timeout
        return [
            PeerInfo(
                node=name,
                alive=p.alive(now, timeout),
                last_seen_s=now - p.last_seen,
                own=p.presence.own,
                held_total=p.presence.held_total,
                held_digest=p.presence.held_digest.hex(),
                steps=p.presence.steps,
                loss=p.presence.loss,
                http=p.presence.http,
                snapshot=p.presence.snapshot,
                relay=p.presence.relay,
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
            beyond_gap=n.beyond_gap,
            provisional=n.provisional,
            retracted=n.retracted,
            wants_sent=n.wants_sent,
            wants_received=n.wants_received,
            wants_answered=n.wants_answered,
            vv_requests_sent=n.vv_requests_sent,
            vv_requests_answered=n.vv_requests_answered,
            peers=len(self._peers),
            open_nodes=self._planner.open_nodes,
            dropped={r: dict(sorted(c.items())) for r, c in sorted(n.dropped.items())},
            repairs=n.repairs,
            content_mismatches=n.content_mismatches,
            distrusted=self._relays.distrusted(),
        )
