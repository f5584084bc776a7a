"""The typed schema of ``/status``: a node's (``NodeStatus``) and a relay's (``RelayStatus``),
what the HTTP endpoint serves, and what ``seedswarm status`` and the swarm launcher read back
(``NodeStatus.from_json``).

Every field is a plain value (numbers, strings, maps of them), so ``to_json`` is the JSON the
endpoint sends, and ``from_json`` rebuilds the same object on the other side.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

HEADROOM_WARN_RECORDS = 10**6  # /status warns below this many worst-case records left


@dataclass(frozen=True, slots=True)
class PeerStatus:
    node: str
    alive: bool
    last_seen_s: float
    own: int  # records it wrote itself
    records: int  # records it holds
    held_digest: str  # the held digest of its records and their bytes (equal: equal records)
    lag: int  # records this node holds beyond the peer's count (negative: it is ahead)
    steps: int
    loss: float | None
    http: str
    relay: bool  # a relay (seedswarm relay), not a node that trains


@dataclass(frozen=True, slots=True)
class RecordsStatus:
    applied: int
    held: int
    pending: int  # held or arrived but not yet applied
    unflushed: int  # own records stepped but not yet written and published
    own_frames: int  # own frames written and published (this session)


@dataclass(frozen=True, slots=True)
class StepsStatus:
    taken: int  # own records in the log (all sessions)
    this_session: int
    limit: int
    done: bool
    per_s: float
    seconds_each: float | None
    # the batch of the last own step, or before one the batch the next would draw (it grows
    # with --batch-growth); a default, so that `seedswarm status` reads a node of a version
    # before it
    examples: int | None = None


@dataclass(frozen=True, slots=True)
class LossStatus:
    recent: float | None
    first: float | None


@dataclass(frozen=True, slots=True)
class BrokerStatus:
    url: str
    protocol: str  # the MQTT version spoken: "5" or "3.1.1" ("" before the first connection)
    state: str
    connects: int
    last_error: str
    outbox: int
    dropped_answers: int  # answers to peers that did not fit the outbox (they ask again)
    messages_published: int
    messages_received: int
    bytes_published: int
    bytes_received: int
    records_published: int
    frame_bytes_published: int
    payload_bytes_per_record: float | None


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """The durable log (SQLite): what this session wrote to it and read from it."""

    path: str
    writes: int  # transactions that appended frames
    frames_written: int
    bytes_written: int
    retractions: int
    reads: int  # lookups that answered a peer's want
    frames_read: int


@dataclass(frozen=True, slots=True)
class InboxStatus:
    """What waits for the session, and what it read (the driver's counts)."""

    waiting: int  # messages in the inbox
    bytes: int
    wants_waiting: int  # peers' wants waiting for an answer
    batches: int  # batches the session read
    messages: int  # messages the session read
    listening_changes: int  # times the subscriptions changed (relays came or went)
    records_given_back: int  # records the session gave back and the store deleted


@dataclass(frozen=True, slots=True)
class SyncStatus:
    wants_sent: int
    wants_received: int
    wants_answered: int


@dataclass(frozen=True, slots=True)
class ServedSnapshot:
    """The snapshot this node serves to joiners (GET /snapshot/info describes it too)."""

    records: int
    fingerprint: str
    vv_digest: str
    sha256: str


@dataclass(frozen=True, slots=True)
class SnapshotStatus:
    taken: int
    last: str
    failures: int
    error: str  # why the last attempt failed ("" once one succeeds)
    served: ServedSnapshot | None
    discarded: int  # snapshots deleted or not kept because records in them were given back


@dataclass(frozen=True, slots=True)
class EvalStatus:
    """The latest in-node evaluation (``--eval``)."""

    records: int
    loss: float
    accuracy: float | None
    examples: int
    points: int  # evaluations so far (all of them at /history)
    # completion tasks with short answers: exact match and F1 of greedy answers (else None)
    exact_match: float | None = None
    f1: float | None = None


@dataclass(frozen=True, slots=True)
class JoinStatus:
    """How the node caught up: by a peer's snapshot or by replay (``--join``)."""

    mode: str
    state: str  # waiting, downloading, fetching log, auditing, loading, done, replay
    reason: str
    donor: str
    bytes: int
    total: int
    eta_s: float | None
    records: int  # in the snapshot
    audit_blocks: int
    audit_seconds: float
    refused: dict[str, int]  # donor -> its snapshots that failed a check
    refusals: dict[str, str]  # donor -> why its snapshot was refused (the last time)
    seconds: float  # how long the join has taken (so far, or in all once it ended)
    deadline_s: float  # the most the step in progress (download, log fetch) may take


@dataclass(frozen=True, slots=True)
class TrustStatus:
    """What this node caught and repaired: relays it stopped following, and copies of records
    it gave back because their author's word contradicted them (docs/PROTOCOL.md §9)."""

    held_digest: str  # of the records this node holds and their bytes (its presence says it)
    distrusted: dict[str, str]  # relay -> why it is not followed (tampered, relay_dropped)
    repairs: int  # times a node's records were given back: its own word contradicted them
    content_mismatches: int  # peers' vvs that showed records held here with other bytes
    records_given_back: int  # records given back: third parties' copies, repaired ones
    provisional: int  # records taken as a third party's copy (an open run)


@dataclass(frozen=True, slots=True)
class SettingDifference:
    """One setting in which another manifest under this run's name differs from ours."""

    field: str  # a manifest field, ``task.seq_len`` for a nested one
    ours: str
    theirs: str


@dataclass(frozen=True, slots=True)
class ForeignRunStatus:
    """Nodes under this run's name that run another manifest (another run id): not in this
    run. ``differences`` once their retained manifest came (docs/PROTOCOL.md §7)."""

    run_id: str
    nodes: list[str]
    manifest_known: bool
    differences: list[SettingDifference]
    error: str  # their manifest is one this node cannot take part in


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node: str
    run: str
    run_id: str
    mode: str  # open or signed
    phase: str  # starting, running, stopping, stopped
    ready: bool
    version_vector: dict[str, int]  # what the model holds
    vv_digest: str
    fingerprint: str
    fingerprint_vv_digest: str  # the version vector the fingerprint belongs to
    fingerprint_stale: bool
    records: RecordsStatus
    steps: StepsStatus
    records_per_s: float
    loss: LossStatus
    peers: list[PeerStatus]
    relays: list[str]  # the relays this node listens to now ([]: every node directly)
    trust: TrustStatus
    broker: BrokerStatus
    dropped: dict[str, dict[str, int]]  # reason -> sender -> count
    dropped_total: int
    duplicates: int
    echoes: int  # own frames the broker sent back (MQTT 5 No Local keeps this at 0)
    sync: SyncStatus
    snapshots: SnapshotStatus
    # how far the state (int64 grid steps) is from the end of its exact range, a guaranteed
    # bound (docs/PROTOCOL.md §5): doublings left, records of the largest update that still
    # fit, the tensor nearest to it, and tensors whose weights no longer show every grid step
    headroom_bits: float | None
    headroom_records: int | None
    headroom_tensor: str
    headroom_coarse: int
    headroom_warning: bool  # fewer than HEADROOM_WARN_RECORDS worst-case records left
    model_busy: bool
    device: str
    kernel: str
    uptime_s: float
    restored_records: int
    replayed_records: int
    http: str
    http_refused: int  # connections closed because too many were open
    eval: EvalStatus | None
    join: JoinStatus
    store: StoreStatus
    inbox: InboxStatus
    foreign_runs: list[ForeignRunStatus]  # other manifests met under this run's name
    started_by: str  # "swarm" (a node of seedswarm swarm) or "node": the command to hint at

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> NodeStatus:
        """Rebuild a status from its JSON; raises ``ValueError`` when it does not fit."""
        st: NodeStatus = _from(cls, data)
        return st

    @property
    def finished(self) -> bool:
        """Takes no more steps and has nothing left to apply."""
        return self.steps.done and not self.records.pending


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
    repairs: int  # times it gave back a node's records: their author's word contradicted them
    content_mismatches: int
    broker: dict[str, Any]  # the transport's statistics, as they are
    inbox: InboxStatus

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _from(tp: Any, data: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(data, dict):
            raise ValueError(f"{tp.__name__}: expected an object, got {type(data).__name__}")
        hints = typing.get_type_hints(tp)
        values = {}
        for f in dataclasses.fields(tp):
            if f.name in data:
                values[f.name] = _from(hints[f.name], data[f.name])
            elif f.default is dataclasses.MISSING:  # a field added later has a default
                raise ValueError(f"{tp.__name__} lacks {f.name!r}")
        return tp(**values)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(data, list):
            raise ValueError("expected a list")
        return [_from(item, x) for x in data]
    if origin is dict:
        _, value = typing.get_args(tp)
        if not isinstance(data, dict):
            raise ValueError("expected an object")
        return {str(k): _from(value, v) for k, v in data.items()}
    if origin is types.UnionType or origin is typing.Union:
        args = typing.get_args(tp)
        if data is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _from(inner, data)
    if tp is float and isinstance(data, int | float) and not isinstance(data, bool):
        return float(data)
    if tp in (int, str, bool) and type(data) is tp:
        return data
    raise ValueError(f"expected {getattr(tp, '__name__', tp)}, got {data!r:.40}")
