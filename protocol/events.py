"""The session's vocabulary: what it returns and what it says (protocol/session.py is the
state machine that speaks it).

    Outgoing        a message for the broker, of a ``Kind`` (and so of a ``Lane``)
    Sealed          an own frame: store it durably first, then publish it
    events          what a received message (or a tick) means: ``FrameAccepted``,
                    ``WantReceived``, ``VvRequested``, ``PeerSeen``, ``PeerGone``,
                    ``Retracted``, ``ForeignRun``, ``Dropped`` (their union is ``Event``)
    PeerInfo, SessionStatistics   the state shown to people

Every type here is a frozen value: a daemon may keep, queue or log it without copying. A daemon
that acts on events dispatches them in one place (daemon/peer/driver.py), so a new event is
a new case there and nowhere else.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from .messages import SnapshotAdvert, Want
from .records import Frame, Record

# == what goes out ==================================================================================


class Lane(enum.Enum):
    """Which of the transport's two outbox lanes a message waits in.

    ``OWN``: what the node says of itself (frames, presence, wants, bundles): sent first, never
    dropped. ``PEER``: what it sends because a peer asked (answers, version vectors): sent
    after the own lane, and dropped when that lane is full (the asker asks again).
    """

    OWN = "own"
    PEER = "peer"


class Kind(enum.StrEnum):
    """What an outgoing message is; its lane follows from it."""

    FRAME = "frame"
    PRESENCE = "presence"
    MANIFEST = "manifest"  # the retained manifest, published on every connect (docs §7)
    WANT = "want"
    VV_REQUEST = "vvreq"
    BUNDLE = "bundle"
    ANSWER = "answer"
    VV = "vv"

    @property
    def lane(self) -> Lane:
        return Lane.PEER if self in (Kind.ANSWER, Kind.VV) else Lane.OWN


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message for the broker: ``kind`` says what it is, and so which lane it waits in."""

    topic: str
    payload: bytes
    kind: Kind
    retain: bool = False
    records: int = 0  # records the payload carries (own frames only)

    @property
    def lane(self) -> Lane:
        return self.kind.lane


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
    provisional: bool = False  # a third party's copy, in an open run


@dataclass(frozen=True, slots=True)
class WantReceived:
    """A peer asks for records: look them up in the store and ``answer`` it."""

    want: Want


@dataclass(frozen=True, slots=True)
class VvRequested:
    """A peer asks for this node's version vector: send it ``vv(requester)``."""

    requester: str


@dataclass(frozen=True, slots=True)
class PeerSeen:
    """A peer announced itself alive (for the first time, or again after it was gone)."""

    node: str
    first: bool


@dataclass(frozen=True, slots=True)
class PeerGone:
    """A peer said goodbye (its will, or a clean stop) or fell silent."""

    node: str
    silent: bool  # True: no message for longer than the peer timeout


@dataclass(frozen=True, slots=True)
class Retracted:
    """Provisional records of ``node`` given back (its author is back): delete them from the
    store and un-apply those the model holds."""

    node: str
    records: tuple[Record, ...]

    @property
    def first_seq(self) -> int:
        return self.records[0].seq


@dataclass(frozen=True, slots=True)
class ForeignRun:
    """A node under this run's name speaks for another run id (another manifest)."""

    sender: str
    run_id: bytes


@dataclass(frozen=True, slots=True)
class Dropped:
    """Input that was not used, the reason (docs/PROTOCOL.md §9) and whom to blame."""

    reason: str
    sender: str
    detail: str
    loud: bool = False  # worth an error in the log: equivocation, impersonation


Event = (
    FrameAccepted
    | WantReceived
    | VvRequested
    | PeerSeen
    | PeerGone
    | Retracted
    | ForeignRun
    | Dropped
)


# == state shown to people ==========================================================================


@dataclass(frozen=True, slots=True)
class PeerInfo:
    node: str
    alive: bool  # it said so, and it spoke within the peer timeout
    last_seen_s: float
    own: int
    held_total: int
    held_digest: str
    steps: int
    loss: float | None
    http: str
    snapshot: SnapshotAdvert | None
    relay: bool


@dataclass(frozen=True, slots=True)
class SessionStatistics:
    frames_accepted: int
    duplicates: int
    echoes: int
    beyond_gap: int  # frames that started after our prefix (their range was asked for)
    provisional: int  # records accepted as a third party's copy
    retracted: int
    wants_sent: int
    wants_received: int
    wants_answered: int
    vv_requests_sent: int
    vv_requests_answered: int
    peers: int
    open_nodes: int  # nodes with records somebody claims and we lack
    dropped: Mapping[str, Mapping[str, int]]  # reason -> sender -> count
    repairs: int = 0  # nodes whose records here contradicted their author's: taken back
    content_mismatches: int = 0  # a peer held other bytes for records we hold (vv exchange)
    distrusted: Mapping[str, str] = field(default_factory=dict)  # relay -> why not followed

    @property
    def dropped_total(self) -> int:
        return sum(sum(c.values()) for c in self.dropped.values())
