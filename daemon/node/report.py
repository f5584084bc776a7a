"""What a node reports about itself: its ``/status`` (status/schema.NodeStatus), composed from
the statistics its parts report of themselves (``NodeReport``), and the records it still has
to apply.

Each part keeps its own counters and hands out a frozen snapshot of them (``statistics()``):
the session and the transport, the driver, the trainer, the flusher, the snapshotter, the join,
the store and the evaluations. The node gathers those snapshots at one moment (``NodeReport``)
and ``compose`` only arranges them; nothing here reaches into a part's state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from seedswarm.daemon.status.schema import (
    HEADROOM_WARN_RECORDS,
    BrokerStatus,
    EvalStatus,
    ForeignRunStatus,
    InboxStatus,
    JoinStatus,
    LossStatus,
    NodeStatus,
    PeerStatus,
    RecordsStatus,
    ServedSnapshot,
    SnapshotStatus,
    StepsStatus,
    StoreStatus,
    SyncStatus,
    TrustStatus,
)
from seedswarm.daemon.store.log_store import StoreStatistics
from seedswarm.daemon.transport import TransportStatistics
from seedswarm.protocol.events import PeerInfo, SessionStatistics
from seedswarm.protocol.session import Session
from seedswarm.protocol.vv import digest, held_digest

from .flusher import FlusherStatistics
from .snapshotter import SnapshotterStatistics
from .trainer import TrainerStatistics


@dataclass(frozen=True, slots=True)
class SessionReport:
    """What the session holds and knows, at one moment."""

    statistics: SessionStatistics
    held: Mapping[str, int]  # the log's version vector
    held_count: int
    peers: list[PeerInfo]
    relays: list[str]  # followed now
    held_digest: str  # of the records held and their bytes, as presence says it

    @classmethod
    def of(cls, session: Session, now: float) -> SessionReport:
        log = session.log
        return cls(
            session.statistics(), log.held(), log.held_count(), session.peers(now),
            session.relays(now), held_digest(log.held_content()).hex(),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class NodeReport:
    """Everything a node's /status is made of: who it is, and each part's own snapshot."""

    node: str
    run: str
    run_id: str
    mode: str  # open or signed
    phase: str
    ready: bool
    device: str
    kernel: str
    http: str
    http_refused: int
    fingerprint: tuple[str, str, bool]  # (fingerprint, vv digest it belongs to, stale?)
    session: SessionReport
    transport: TransportStatistics
    trainer: TrainerStatistics
    flusher: FlusherStatistics
    snapshots: SnapshotterStatistics
    join: JoinStatus
    store: StoreStatistics
    inbox: InboxStatus  # the driver's
    evals: EvalStatus | None
    foreign_runs: list[ForeignRunStatus]  # the driver's
    started_by: str  # swarm or node


def pending(held: Mapping[str, int], applied: Mapping[str, int]) -> int:
    """Records the node holds but its model has not applied."""
    return sum(max(end - applied.get(n, 0), 0) for n, end in held.items())


def compose(r: NodeReport) -> NodeStatus:
    fp, fp_digest, stale = r.fingerprint
    se, ss, tr, t = r.session, r.session.statistics, r.transport, r.trainer
    applied = t.applied
    h = t.headroom
    ours = sum(se.held.values())
    served = r.snapshots.served
    return NodeStatus(
        node=r.node,
        run=r.run,
        run_id=r.run_id,
        mode=r.mode,
        phase=r.phase,
        ready=r.ready,
        version_vector=dict(sorted(applied.items())),
        vv_digest=digest(applied),
        fingerprint=fp,
        fingerprint_vv_digest=fp_digest,
        fingerprint_stale=stale,
        records=RecordsStatus(
            applied=sum(applied.values()),
            held=se.held_count,
            pending=pending(se.held, applied),
            unflushed=r.flusher.unsealed,
            own_frames=r.flusher.frames,
        ),
        steps=StepsStatus(
            taken=t.own_steps,
            this_session=t.steps_this_session,
            limit=t.max_steps,
            done=0 <= t.max_steps <= t.own_steps,
            per_s=t.step_rate,
            seconds_each=t.seconds_each,
            examples=t.examples,
        ),
        records_per_s=t.record_rate,
        loss=LossStatus(recent=t.loss_recent, first=t.loss_first),
        peers=[
            PeerStatus(
                node=p.node,
                alive=p.alive,
                last_seen_s=round(p.last_seen_s, 3),
                own=p.own,
                records=p.held_total,
                held_digest=p.held_digest,
                lag=ours - p.held_total,
                steps=p.steps,
                loss=p.loss,
                http=p.http,
                relay=p.relay,
            )
            for p in se.peers
        ],
        relays=se.relays,
        trust=TrustStatus(
            held_digest=se.held_digest,
            distrusted=dict(ss.distrusted),
            repairs=ss.repairs,
            content_mismatches=ss.content_mismatches,
            records_given_back=r.inbox.records_given_back,
            provisional=ss.provisional,
        ),
        broker=BrokerStatus(
            url=tr.url,
            protocol=tr.protocol,
            state=tr.state,
            connects=tr.connects,
            last_error=tr.last_error,
            outbox=tr.outbox,
            dropped_answers=tr.dropped_answers,
            messages_published=tr.messages_published,
            messages_received=tr.messages_received,
            bytes_published=tr.bytes_published,
            bytes_received=tr.bytes_received,
            records_published=tr.records_published,
            frame_bytes_published=tr.frame_bytes_published,
            payload_bytes_per_record=(
                tr.frame_bytes_published / tr.records_published if tr.records_published else None
            ),
        ),
        dropped={reason: dict(c) for reason, c in ss.dropped.items()},
        dropped_total=ss.dropped_total,
        duplicates=ss.duplicates,
        echoes=ss.echoes,
        sync=SyncStatus(
            wants_sent=ss.wants_sent,
            wants_received=ss.wants_received,
            wants_answered=ss.wants_answered,
        ),
        snapshots=SnapshotStatus(
            taken=r.snapshots.taken,
            last=r.snapshots.last,
            failures=r.snapshots.failures,
            error=r.snapshots.error,
            discarded=r.snapshots.discarded,
            served=None
            if served is None
            else ServedSnapshot(
                records=served.info.records,
                fingerprint=served.info.fingerprint,
                vv_digest=digest(served.info.version_vector),
                sha256=served.sha256,
            ),
        ),
        headroom_bits=None if h is None else round(h.bits, 3),
        headroom_records=None if h is None else h.records,
        headroom_tensor="" if h is None else h.tensor,
        headroom_coarse=0 if h is None else h.coarse,
        headroom_warning=h is not None and h.records < HEADROOM_WARN_RECORDS,
        model_busy=t.model_busy,
        device=r.device,
        kernel=r.kernel,
        uptime_s=t.uptime_s,
        restored_records=t.restored_records,
        replayed_records=t.replayed_records,
        http=r.http,
        http_refused=r.http_refused,
        eval=r.evals,
        join=r.join,
        store=StoreStatus(
            path=r.store.path,
            writes=r.store.writes,
            frames_written=r.store.frames_written,
            bytes_written=r.store.bytes_written,
            retractions=r.store.retractions,
            reads=r.store.reads,
            frames_read=r.store.frames_read,
        ),
        inbox=r.inbox,
        foreign_runs=r.foreign_runs,
        started_by=r.started_by,
    )
