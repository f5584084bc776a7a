"""Snapshots: the trainable weights at a version vector, in safetensors, written atomically.

A snapshot is an optimisation, never the truth: the log is. A snapshot is only trusted after
its weights, loaded into a replica of the same run, hash to the fingerprint written beside
them; otherwise the node ignores it and replays the log from the base.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from seedswarm.model.replica import Replica
from seedswarm.protocol.vv import dominates

from .errors import StoreError

log = logging.getLogger("seedswarm.snapshots")

KEEP = 2


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    path: Path
    run_id: str
    version_vector: dict[str, int]
    fingerprint: str
    records: int


def save(
    directory: Path,
    tensors: dict[str, torch.Tensor],
    *,
    run_id: str,
    version_vector: dict[str, int],
    fingerprint: str,
) -> SnapshotInfo:
    """Write ``snap-<records>.safetensors`` atomically (temp file, fsync, rename) and prune."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create {directory}: {exc.strerror}") from exc
    records = sum(version_vector.values())
    path = directory / f"snap-{records:012d}.safetensors"
    tmp = path.with_suffix(".tmp")
    meta = {
        "run_id": run_id,
        "version_vector": json.dumps(version_vector, sort_keys=True),
        "fingerprint": fingerprint,
        "records": str(records),
    }
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except (OSError, SafetensorError) as exc:  # a full disk, too many open files, ...
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "strerror", None) or str(exc)
        raise StoreError(f"cannot write snapshot {path}: {reason}") from exc
    for old in sorted(directory.glob("snap-*.safetensors"))[:-KEEP]:
        old.unlink(missing_ok=True)
    return SnapshotInfo(path, run_id, dict(version_vector), fingerprint, records)


def read_info(path: Path) -> SnapshotInfo:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        return SnapshotInfo(
            path,
            meta["run_id"],
            json.loads(meta["version_vector"]),
            meta["fingerprint"],
            int(meta["records"]),
        )
    except (OSError, KeyError, ValueError, SafetensorError) as exc:
        raise StoreError(f"snapshot {path} is unreadable: {exc}") from exc


def latest(directory: Path, run_id: str) -> SnapshotInfo | None:
    """The newest readable snapshot of ``run_id`` in ``directory``."""
    for path in sorted(directory.glob("snap-*.safetensors"), reverse=True):
        try:
            info = read_info(path)
        except StoreError:
            continue
        if info.run_id == run_id:
            return info
    return None


def load_tensors(info: SnapshotInfo) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(info.path))
    except (OSError, SafetensorError) as exc:
        raise StoreError(f"snapshot {info.path} is unreadable: {exc}") from exc


def restore(replica: Replica, directory: Path, held: Mapping[str, int]) -> int:
    """Load the newest trustworthy snapshot into ``replica``; returns how many records it holds.

    A snapshot is used only if the log holds everything it contains and its weights hash to
    the fingerprint written with them; otherwise the replica stays at the base (and replays).
    Runs on the model thread.
    """
    info = latest(directory, replica.engine.run_id.hex())
    if info is None:
        return 0
    if not dominates(held, info.version_vector):
        log.warning("snapshot %s is ahead of the log; ignoring it", info.path.name)
        return 0
    try:
        tensors = load_tensors(info)
    except StoreError as exc:
        log.warning("snapshot %s unusable (%s); replaying from the base", info.path.name, exc)
        return 0
    if not replica.load(tensors, info.version_vector, info.fingerprint):
        log.warning(
            "snapshot %s does not match its fingerprint; replaying from the base", info.path.name
        )
        return 0
    return info.records
