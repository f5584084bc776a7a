"""Snapshots: the trainable weights at a version vector, in safetensors, written atomically.

A snapshot is an optimisation, never the truth: the log is. A snapshot is only trusted after
its weights, loaded into a replica of the same run, hash to the fingerprint written beside
them; otherwise the node ignores it and replays the log from the base.

A snapshot holds the state (int64 grid steps, 8 bytes per trainable element), so a node knows
the exact size of the data of any snapshot of its run (``SnapshotLayout``), and bounds its
header: a joiner refuses a file of any other size before and while it downloads it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from seedswarm.daemon.errors import StoreError
from seedswarm.model.replica import Replica
from seedswarm.protocol.vv import dominates

from .snapshot_info import SnapshotInfo, latest, read_info

__all__ = [
    "KEEP",
    "SnapshotInfo",
    "SnapshotLayout",
    "adopt",
    "latest",
    "load_tensors",
    "read_info",
    "restore",
    "save",
]

log = logging.getLogger("seedswarm.snapshots")

KEEP = 2
ELEMENT_BYTES = 8  # int64 grid steps
HEADER_LENGTH_BYTES = 8  # safetensors: a u64 (LE) header length, the JSON header, the data


@dataclass(frozen=True, slots=True)
class SnapshotLayout:
    """What every snapshot of one run must look like: one int64 tensor per trainable
    parameter, under its name and of its shape. So the data of a snapshot has an exact size,
    and its header (names, shapes, offsets and the metadata ``save`` writes) a small bound."""

    shapes: Mapping[str, tuple[int, ...]]

    @classmethod
    def of(cls, named: Iterable[tuple[str, Iterable[int]]]) -> SnapshotLayout:
        """From the trainable parameters' (name, shape)."""
        return cls({name: tuple(int(d) for d in shape) for name, shape in named})

    @property
    def data_bytes(self) -> int:
        return sum(math.prod(shape) * ELEMENT_BYTES for shape in self.shapes.values())

    def header_bound(self, version_vector: Mapping[str, int]) -> int:
        """The most bytes the JSON header of a snapshot at ``version_vector`` takes.

        safetensors writes ``{"__metadata__": {...}, "<name>": {"dtype": "I64", "shape":
        [...], "data_offsets": [a, b]}, ...}`` padded with spaces to a multiple of 8. Each part
        is bounded here with room to spare: a name as if every character were escaped
        (``\\uXXXX``), every number with 20 digits, the version vector's JSON (node ids need no
        escaping, its quotes do) twice over."""
        vv_json = json.dumps(dict(version_vector), sort_keys=True)
        meta = 256 + 2 * len(vv_json)  # four keys, a fingerprint, a run id, a count
        tensors = sum(64 + 6 * len(name.encode()) + 22 * (len(shape) + 2)
                      for name, shape in self.shapes.items())  # fmt: skip
        return 8 * math.ceil((meta + tensors + 64) / 8)

    def size_bounds(self, version_vector: Mapping[str, int]) -> tuple[int, int]:
        """The smallest and the largest file a snapshot at ``version_vector`` can be."""
        data = HEADER_LENGTH_BYTES + self.data_bytes
        return data + 2, data + self.header_bound(version_vector)

    def size_for_header(self, prefix: bytes, version_vector: Mapping[str, int]) -> int:
        """The exact size of the file that starts with ``prefix`` (at least its first 8 bytes:
        the header length); raises ``StoreError`` when that header is too long."""
        length = int.from_bytes(prefix[:HEADER_LENGTH_BYTES], "little")
        if not 2 <= length <= self.header_bound(version_vector):
            raise StoreError(
                f"its header would be {length} bytes long; a snapshot of this run has at most "
                f"{self.header_bound(version_vector)}"
            )
        return HEADER_LENGTH_BYTES + length + self.data_bytes

    def check(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Raise ``StoreError`` unless ``tensors`` are exactly this layout's."""
        if sorted(tensors) != sorted(self.shapes):
            extra = sorted(set(tensors) - set(self.shapes))[:3]
            missing = sorted(set(self.shapes) - set(tensors))[:3]
            raise StoreError(
                f"its tensors are not the run's trainable parameters (extra {extra}, "
                f"missing {missing})"
            )
        for name, shape in self.shapes.items():
            t = tensors[name]
            if t.dtype != torch.int64 or tuple(t.shape) != shape:
                raise StoreError(
                    f"its tensor {name} is {t.dtype} {tuple(t.shape)}, not torch.int64 {shape}"
                )


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
    # the one just written stays, whatever its count (a node whose records were given back
    # writes one of fewer records than an older one), with the newest others
    others = [p for p in sorted(directory.glob("snap-*.safetensors")) if p != path]
    for old in others[: max(len(others) - (KEEP - 1), 0)]:
        old.unlink(missing_ok=True)
    return SnapshotInfo(path, run_id, dict(version_vector), fingerprint, records)


def adopt(path: Path, dest: Path) -> None:
    """Move a checked snapshot (a joiner's download) into place, durably."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise StoreError(f"cannot move {path} to {dest}: {exc.strerror}") from exc


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
