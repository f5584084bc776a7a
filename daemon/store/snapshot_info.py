"""What a snapshot says about itself (its safetensors metadata), read without torch.

A safetensors file starts with a little-endian u64, the size of a JSON header that follows;
the header's ``__metadata__`` holds what snapshots.py writes: ``run_id``, ``version_vector``
(JSON), ``fingerprint`` and ``records``. Reading only that much keeps ``seedswarm status DIR``
quick (no torch), and a snapshot is never trusted on its metadata anyway: restoring one checks
its weights against the fingerprint (snapshots.py).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from seedswarm.daemon.errors import StoreError

MAX_HEADER = 100 << 20  # safetensors' own limit on the header


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    path: Path
    run_id: str
    version_vector: dict[str, int]
    fingerprint: str
    records: int


def read_info(path: Path) -> SnapshotInfo:
    try:
        with path.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > MAX_HEADER:
                raise ValueError(f"a header of {size} bytes")
            header = json.loads(fh.read(size))
        meta = header["__metadata__"]
        vv = json.loads(meta["version_vector"])
        if not isinstance(vv, dict) or not all(
            isinstance(n, str) and type(c) is int and c >= 0 for n, c in vv.items()
        ):
            raise ValueError("its version_vector is not a map of node ids to record counts")
        return SnapshotInfo(
            path, str(meta["run_id"]), vv, str(meta["fingerprint"]), int(meta["records"])
        )
    except (OSError, KeyError, TypeError, ValueError, RecursionError, struct.error) as exc:
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
