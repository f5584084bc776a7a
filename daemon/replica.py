"""Bringing a replica up to date from a snapshot and the log (used by train, replay and node).

The replica's state is the set of applied records, a version vector: ``applied``. Only
contiguous per-node prefixes are applied, so the weights are a function of ``applied`` alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

from seedswarm.model.engine import Engine
from seedswarm.protocol.log import OrderedLog
from seedswarm.protocol.records import Record
from seedswarm.protocol.vv import dominates

from . import snapshots
from .errors import StoreError

log = logging.getLogger("seedswarm.replica")


def restore_snapshot(engine: Engine, directory: Path, held: dict[str, int]) -> dict[str, int]:
    """Load the newest trustworthy snapshot; returns the version vector it holds ({} if none).

    A snapshot is used only if the log holds everything it contains and its weights hash to
    the fingerprint written with them; otherwise the replica starts from the base.
    """
    info = snapshots.latest(directory, engine.run_id.hex())
    if info is None:
        return {}
    if not dominates(held, info.version_vector):
        log.warning("snapshot %s is ahead of the log; ignoring it", info.path.name)
        return {}
    base = engine.trainable_state()
    try:
        engine.load_trainable_state(snapshots.load_tensors(info))
    except (StoreError, ValueError) as exc:
        log.warning("snapshot %s unusable (%s); replaying from the base", info.path.name, exc)
        engine.load_trainable_state(base)
        return {}
    if engine.fingerprint() != info.fingerprint:
        log.warning(
            "snapshot %s does not match its fingerprint; replaying from the base", info.path.name
        )
        engine.load_trainable_state(base)
        return {}
    return dict(info.version_vector)


def pending_records(
    log_: OrderedLog, applied: dict[str, int], limit: int | None = None
) -> list[Record]:
    """Held records not yet applied, node by node, at most ``limit``."""
    out: list[Record] = []
    for node, end in log_.held().items():
        start = applied.get(node, 0)
        if start < end:
            take = end if limit is None else min(end, start + limit - len(out))
            out.extend(log_.records(node, start, take))
            if limit is not None and len(out) >= limit:
                break
    return out


def advance(applied: dict[str, int], records: list[Record]) -> None:
    """Record that ``records`` (contiguous per node, continuing ``applied``) are applied."""
    for r in records:
        if r.seq != applied.get(r.node, 0):
            raise StoreError(f"records applied out of order: {r.node} seq {r.seq}")
        applied[r.node] = r.seq + 1


def catch_up(engine: Engine, log_: OrderedLog, applied: dict[str, int], *, batch: int = 256) -> int:
    """Apply every held record not yet applied; returns how many."""
    total = 0
    while recs := pending_records(log_, applied, batch * 16):
        engine.apply(recs, batch=batch)
        advance(applied, recs)
        total += len(recs)
    return total
