"""What a node reports about itself: its ``/status`` (status.NodeStatus), composed from the
statistics of its parts, and the records it still has to apply."""

from __future__ import annotations

import time
from collections.abc import Mapping

from seedswarm.model.engine import Engine
from seedswarm.protocol.manifest import Manifest
from seedswarm.protocol.session import Session
from seedswarm.protocol.vv import digest

from .evaluation import EvalHistory
from .join import JoinProgress
from .progress import Stats
from .snapshots import SnapshotInfo
from .status import (
    BrokerStatus,
    EvalStatus,
    JoinStatus,
    LossStatus,
    NodeStatus,
    PeerStatus,
    RecordsStatus,
    ServedSnapshot,
    SnapshotStatus,
    StepsStatus,
    SyncStatus,
)
from .transport import TransportStatistics


def pending(session: Session, applied: Mapping[str, int]) -> int:
    """Records the node holds but its model has not applied."""
    return sum(max(end - applied.get(n, 0), 0) for n, end in session.log.held().items())


def compose_status(
    *,
    me: str,
    manifest: Manifest,
    phase: str,
    ready: bool,
    applied: Mapping[str, int],
    fingerprint: tuple[str, str, bool],
    session: Session,
    stats: Stats,
    transport: TransportStatistics,
    max_steps: int,
    unsealed: int,
    model_busy: bool,
    engine: Engine,
    http: str,
    http_refused: int,
    join: JoinProgress,
    served: tuple[SnapshotInfo, str] | None,
    evals: EvalHistory | None = None,
) -> NodeStatus:
    fp, fp_digest, stale = fingerprint
    now = time.monotonic()
    log_ = session.log
    ss = session.statistics()
    tr = transport
    held = log_.held()
    ours = sum(held.values())
    step_rate, rec_rate = stats.rates(now)
    own = applied.get(me, 0) // engine.records_per_step  # steps (a step makes K records)
    times = stats.step_times
    return NodeStatus(
        node=me,
        run=manifest.name,
        run_id=session.run_id.hex(),
        mode="open" if manifest.open_mode else "signed",
        phase=phase,
        ready=ready,
        version_vector=dict(sorted(applied.items())),
        vv_digest=digest(applied),
        fingerprint=fp,
        fingerprint_vv_digest=fp_digest,
        fingerprint_stale=stale,
        records=RecordsStatus(
            applied=sum(applied.values()),
            held=log_.held_count(),
            pending=pending(session, applied),
            unflushed=unsealed,
        ),
        steps=StepsStatus(
            taken=own,
            this_session=stats.steps,
            limit=max_steps,
            done=0 <= max_steps <= own,
            per_s=step_rate,
            seconds_each=sum(times) / len(times) if times else None,
        ),
        records_per_s=rec_rate,
        loss=LossStatus(recent=stats.recent_loss(), first=stats.first_loss),
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
            for p in session.peers(now)
        ],
        relays=session.relays(now),
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
        dropped={r: dict(c) for r, c in ss.dropped.items()},
        dropped_total=ss.dropped_total,
        duplicates=ss.duplicates,
        echoes=ss.echoes,
        sync=SyncStatus(
            wants_sent=ss.wants_sent,
            wants_received=ss.wants_received,
            wants_answered=ss.wants_answered,
        ),
        snapshots=SnapshotStatus(
            taken=stats.snapshots,
            last=stats.last_snapshot,
            failures=stats.snapshot_failures,
            error=stats.snapshot_error,
            served=None
            if served is None
            else ServedSnapshot(
                records=served[0].records,
                fingerprint=served[0].fingerprint,
                vv_digest=digest(served[0].version_vector),
                sha256=served[1],
            ),
        ),
        headroom_bits=stats.headroom_bits,
        headroom_warning=stats.headroom_bits is not None and stats.headroom_bits < 1.0,
        model_busy=model_busy,
        device=str(engine.device),
        kernel=engine.backend.name,
        uptime_s=round(now - stats.started, 3),
        restored_records=stats.restored_records,
        replayed_records=stats.replayed_records,
        http=http,
        http_refused=http_refused,
        eval=_eval_status(evals),
        join=JoinStatus(
            mode=join.mode,
            state=join.state,
            reason=join.reason,
            donor=join.donor,
            bytes=join.bytes,
            total=join.total,
            eta_s=join.eta_s,
            records=join.records,
            audit_blocks=join.audit_blocks,
            audit_seconds=round(join.audit_seconds, 3),
            refused=dict(join.refused),
        ),
    )


def _eval_status(evals: EvalHistory | None) -> EvalStatus | None:
    p = evals.latest if evals is not None else None
    if evals is None or p is None:
        return None
    return EvalStatus(p.records, p.loss, p.accuracy, p.examples, len(evals.points))
