"""The node's snapshots never hold records the log gave back (node/snapshotter.py), on real
files: a retraction deletes the snapshots that hold the records (before the store deletes
them) and stops serving one; a capture taken before the model un-applied them is not kept,
nor is a joiner's download; and saving never deletes the snapshot it just wrote."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seedswarm.daemon.node.snapshotter import Snapshotter
from seedswarm.daemon.store import snapshots
from seedswarm.daemon.store.datadir import DataDir
from seedswarm.model.grid import Headroom
from seedswarm.model.replica import Capture

RUN = b"\x00" * 8


def capture(vv: dict[str, int]) -> Capture:
    state = {"w": torch.arange(10, dtype=torch.int64) * sum(vv.values())}
    return Capture(vv, state, f"{sum(vv.values()):064x}", Headroom(50.0, 10**9, "w", 0))


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("snap-*.safetensors"))


@pytest.mark.asyncio
async def test_a_retraction_deletes_the_snapshots_holding_what_it_gives_back(
    tmp_path: Path,
) -> None:
    s = Snapshotter("me", DataDir(tmp_path), RUN)
    assert await s.save(capture({"a": 5, "b": 10}), 0)
    assert await s.save(capture({"a": 20, "b": 10}), 0)
    assert s.served is not None
    assert s.served.info.records == 30
    # records of b from 10 on: neither holds any, both stay
    assert not await s.invalidate("b", 10)
    assert names(s.datadir.snapshots) == ["snap-000000000015.safetensors",
                                          "snap-000000000030.safetensors"]  # fmt: skip
    # records of a from 6 on: the newer holds some (it was served), the older does not
    assert await s.invalidate("a", 6)
    assert s.statistics().served is None
    assert names(s.datadir.snapshots) == ["snap-000000000015.safetensors"]
    assert s.statistics().discarded == 1
    # a node's records given back from 0 (a repair): every snapshot holding any goes
    assert not await s.invalidate("b", 0)
    assert names(s.datadir.snapshots) == []


@pytest.mark.asyncio
async def test_a_capture_from_before_a_retraction_is_not_kept(tmp_path: Path) -> None:
    s = Snapshotter("me", DataDir(tmp_path), RUN)
    await s.invalidate("a", 3)  # the first retraction (index 0): the model has not un-applied it
    assert not await s.save(capture({"a": 5}), mark=0)
    assert names(s.datadir.snapshots) == []
    # once the model reflects it (mark 1), a capture with a's records is kept
    assert await s.save(capture({"a": 5}), mark=1)
    # an older capture holding what was given back later is not
    await s.invalidate("a", 4)  # index 1
    assert not await s.save(capture({"a": 6}), mark=1)
    assert await s.save(capture({"a": 4}), mark=1), "holds nothing from a's seq 4 on"
    assert s.statistics().discarded == 3  # two captures, and snap-5 the invalidation deleted


@pytest.mark.asyncio
async def test_a_joiners_snapshot_is_adopted_unless_given_back_since(tmp_path: Path) -> None:
    s = Snapshotter("me", DataDir(tmp_path), RUN)
    donor = tmp_path / "donor"
    snap = snapshots.save(donor, capture({"a": 9}).state, run_id=RUN.hex(),
                          version_vector={"a": 9}, fingerprint="ab" * 32)  # fmt: skip
    await s.invalidate("a", 2)
    assert not await s.adopt(snap.path, snap, mark=0)
    assert not snap.path.exists(), "deleted, not kept"
    snap = snapshots.save(donor, capture({"a": 9}).state, run_id=RUN.hex(),
                          version_vector={"a": 9}, fingerprint="ab" * 32)  # fmt: skip
    assert await s.adopt(snap.path, snap, mark=1)
    assert names(s.datadir.snapshots) == ["snap-000000000009.safetensors"]
    assert s.served is not None
    assert s.served.info.version_vector == {"a": 9}


def test_saving_keeps_the_new_snapshot_even_with_fewer_records(tmp_path: Path) -> None:
    for vv in ({"a": 50}, {"a": 60}, {"a": 30}):
        snap = snapshots.save(tmp_path, capture(vv).state, run_id=RUN.hex(), version_vector=vv,
                              fingerprint="cd" * 32)  # fmt: skip
    assert snap.path.exists()
    assert names(tmp_path) == ["snap-000000000030.safetensors", "snap-000000000060.safetensors"]
