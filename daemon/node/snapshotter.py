"""The node's snapshots: saved now and then (so a restart replays only the tail), and the
newest one served to joiners (node/join.py serves it over HTTP and the presence advertises it).

The trainer decides when (every ``--snapshot-every`` records, and once at shutdown) and
captures the weights on the model thread; this writes the file on a worker thread (disk I/O
only, on tensors the model thread copied out), so a slow disk never stalls the model. A snapshot
only saves replay time: the log is the truth. A failed save is counted and reported, and
training goes on; the next one tries again.

A snapshot never holds records the log has given back (a third party's copy once its author is
back, or a copy that contradicts its author's: docs/PROTOCOL.md §9). Before the store deletes
such records, ``invalidate`` deletes every snapshot that holds them (a restart would otherwise
trust a state the log no longer gives) and stops serving it; and a snapshot captured from a
model that had not yet un-applied them (the ``mark``: how many retractions the model
reflects) is not kept (``save``, ``adopt``). Retractions are counted in the order the driver
makes them, the same order in which the trainer un-applies them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from seedswarm.daemon.errors import StoreError
from seedswarm.daemon.store import snapshots
from seedswarm.daemon.store.datadir import DataDir
from seedswarm.model.replica import Capture
from seedswarm.protocol.messages import SnapshotAdvert
from seedswarm.protocol.vv import digest

from .download import file_sha256

log = logging.getLogger("seedswarm.node")


@dataclass(frozen=True, slots=True)
class Served:
    """The snapshot this node serves to joiners, and its file's SHA-256."""

    info: snapshots.SnapshotInfo
    sha256: str

    def advert(self) -> SnapshotAdvert:
        """What the presence says of it."""
        snap = self.info
        return SnapshotAdvert(
            bytes.fromhex(digest(snap.version_vector)), bytes.fromhex(snap.fingerprint),
            snap.records,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class SnapshotterStatistics:
    taken: int
    last: str  # the file name of the newest one saved in this session
    failures: int
    error: str  # why the last attempt failed ("" once one succeeds)
    served: Served | None
    discarded: int  # snapshots deleted or not kept: records in them were given back


class Snapshotter:
    def __init__(self, me: str, datadir: DataDir, run_id: bytes) -> None:
        self.me = me
        self.datadir = datadir
        self.run_id = run_id
        self.served: Served | None = None
        self._taken = self._failures = 0
        self._last = self._error = ""
        self._given_back: list[tuple[str, int]] = []  # (node, first seq) of each retraction
        self._given_back_base = 0  # the index of _given_back[0] among all of them
        self._discarded = 0  # snapshots not kept: records in them were given back

    async def find_newest(self) -> None:
        """At start-up: serve the newest snapshot already on disk."""
        newest = await asyncio.to_thread(self.datadir.latest_snapshot, self.run_id)
        if newest is not None:
            await self.serve(newest)

    async def serve(self, info: snapshots.SnapshotInfo) -> None:
        self.served = Served(info, await asyncio.to_thread(file_sha256, info.path))

    async def invalidate(self, node: str, first: int) -> bool:
        """Records of ``node`` from ``first`` on are given back: delete the snapshots that hold
        them (before the store deletes the records). True if the served one was one of them."""
        self._given_back.append((node, first))
        served = self.served
        hit = served is not None and served.info.version_vector.get(node, 0) > first
        if hit:
            self.served = None
        gone = await asyncio.to_thread(_delete_holding, self.datadir.snapshots, node, first)
        if gone:
            self._discarded += len(gone)
            log.warning(
                "%s: deleted snapshot %s: it holds records of %s from %d on, which are given "
                "back", self.me, ", ".join(gone), node, first,
            )  # fmt: skip
        return hit

    def _given_back_since(self, vv: Mapping[str, int], mark: int) -> bool:
        """A retraction after the ``mark``-th took back records that ``vv`` holds."""
        since = self._given_back[max(mark - self._given_back_base, 0) :]
        return any(vv.get(node, 0) > first for node, first in since)

    def _forget_given_back(self, mark: int) -> None:
        """Retractions before the ``mark``-th matter no more (the model reflects them)."""
        drop = mark - self._given_back_base
        if drop > 0:
            del self._given_back[:drop]
            self._given_back_base = mark

    async def adopt(self, path: Path, snap: snapshots.SnapshotInfo, mark: int) -> bool:
        """A joiner's snapshot, loaded into the model: moved into ``snapshots/`` and served,
        unless records it holds were given back since the ``mark``-th retraction (then it is
        deleted: the model un-applies them, the file would keep them)."""
        if self._given_back_since(snap.version_vector, mark):
            await asyncio.to_thread(path.unlink, missing_ok=True)
            self._discarded += 1
            return False
        own = self.datadir.snapshots / f"snap-{snap.records:012d}.safetensors"
        try:
            await asyncio.to_thread(snapshots.adopt, path, own)
        except StoreError as exc:  # the model has it: only a restart's replay is longer
            log.error("%s: %s; the snapshot is loaded, but not kept", self.me, exc)
            await asyncio.to_thread(path.unlink, missing_ok=True)
            return False
        self._forget_given_back(mark)
        await self.serve(await asyncio.to_thread(snapshots.read_info, own))
        return True

    async def save(self, cap: Capture, mark: int) -> bool:
        """Write the captured weights; True if a new snapshot is served now. ``mark``: the
        retractions the captured model had un-applied (a snapshot holding records given back
        after them is not kept)."""
        if self._given_back_since(cap.vv, mark):
            self._discarded += 1
            return False
        try:
            info = await asyncio.to_thread(
                snapshots.save,
                self.datadir.snapshots,
                cap.state,
                run_id=self.run_id.hex(),
                version_vector=dict(cap.vv),
                fingerprint=cap.fingerprint,
            )
        except StoreError as exc:
            # a snapshot only saves replay time: the log is the truth, and it is still written
            self._failures += 1
            self._error = str(exc)
            log.error("%s: %s; training goes on, the next snapshot will try again", self.me, exc)
            return False
        if self._given_back_since(cap.vv, mark):  # while it was being written
            await asyncio.to_thread(info.path.unlink, missing_ok=True)
            self._discarded += 1
            return False
        self._forget_given_back(mark)
        self._taken += 1
        self._last = info.path.name
        self._error = ""
        await self.serve(info)
        return True

    def served_snapshot(self) -> tuple[snapshots.SnapshotInfo, str] | None:
        """What the snapshot endpoint serves (join.SnapshotSource)."""
        return None if self.served is None else (self.served.info, self.served.sha256)

    def statistics(self) -> SnapshotterStatistics:
        return SnapshotterStatistics(
            taken=self._taken,
            last=self._last,
            failures=self._failures,
            error=self._error,
            served=self.served,
            discarded=self._discarded,
        )


def _delete_holding(directory: Path, node: str, first: int) -> list[str]:
    """Delete the snapshots in ``directory`` that hold records of ``node`` from ``first`` on
    (and any that cannot be read: they could); returns their names."""
    gone = []
    for path in sorted(directory.glob("snap-*.safetensors")):
        try:
            holds = snapshots.read_info(path).version_vector.get(node, 0) > first
        except StoreError:
            holds = True
        if holds:
            path.unlink(missing_ok=True)
            gone.append(path.name)
    return gone
