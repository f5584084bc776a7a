"""The pieces of a snapshot join, over real HTTP on a local port and real files: the download
resumes a partial file with a range request and checks the whole file's hash, a donor that
sends other bytes is refused and leaves nothing behind, and the choice of donor spreads over
the best offers and skips refused ones."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import torch
from aiohttp import web

from seedswarm.daemon import snapshots
from seedswarm.daemon.join import (
    JoinProgress,
    Offer,
    SnapshotMoved,
    SnapshotRefused,
    choose,
    download,
    file_sha256,
    quorum,
    read_checked,
    snapshot_routes,
)
from seedswarm.protocol.vv import digest

RUN = "00" * 8


class Source:
    def __init__(self, snap: snapshots.SnapshotInfo, sha: str | None = None) -> None:
        self.snap, self.sha = snap, sha or file_sha256(snap.path)

    def served_snapshot(self) -> tuple[snapshots.SnapshotInfo, str]:
        return self.snap, self.sha


def make_snapshot(directory: Path) -> snapshots.SnapshotInfo:
    g = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(300, 257, generator=g), "b": torch.randn(1000, generator=g)}
    return snapshots.save(
        directory, tensors, run_id=RUN, version_vector={"n0": 7, "n1": 5}, fingerprint="ab" * 32
    )


@pytest_asyncio.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Source, str]]:
    source = Source(make_snapshot(tmp_path / "donor"))
    app = web.Application()
    app.add_routes(snapshot_routes(source))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield source, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def offer_of(snap: snapshots.SnapshotInfo, url: str, donor: str = "n0") -> Offer:
    return Offer(donor, url, digest(snap.version_vector), snap.fingerprint, snap.records)


@pytest.mark.asyncio
async def test_a_partial_download_resumes_with_a_range_request(
    served: tuple[Source, str], tmp_path: Path
) -> None:
    source, url = served
    whole = source.snap.path.read_bytes()
    into = tmp_path / "incoming"
    into.mkdir()
    cut = len(whole) // 3
    (into / f"{source.snap.fingerprint}.part").write_bytes(whole[:cut])
    (into / f"{'cd' * 32}.part").write_bytes(b"of another snapshot")
    progress = JoinProgress("snapshot")
    async with aiohttp.ClientSession() as http:
        path, info = await download(offer_of(source.snap, url), into, progress, http)
    assert path.read_bytes() == whole
    assert progress.bytes == progress.total == len(whole)
    assert info["sha256"] == source.sha
    assert sorted(p.name for p in into.iterdir()) == [path.name], "the other part is gone"
    snap, tensors = read_checked(path, RUN, info)
    assert snap.version_vector == {"n0": 7, "n1": 5}
    assert tensors["a"].shape == (300, 257)


@pytest.mark.asyncio
async def test_other_bytes_than_described_are_refused_and_deleted(
    served: tuple[Source, str], tmp_path: Path
) -> None:
    source, url = served
    source.sha = "00" * 32  # the donor describes a hash its file does not have
    into = tmp_path / "incoming"
    async with aiohttp.ClientSession() as http:
        with pytest.raises(SnapshotRefused, match="does not hash"):
            await download(offer_of(source.snap, url), into, JoinProgress("snapshot"), http)
    assert not list(into.iterdir())


@pytest.mark.asyncio
async def test_a_donor_that_moved_on_is_not_held_against_it(
    served: tuple[Source, str], tmp_path: Path
) -> None:
    _, url = served
    old = Offer("n0", url, "11" * 8, "ee" * 32, 3)  # what an older presence said
    async with aiohttp.ClientSession() as http:
        with pytest.raises(SnapshotMoved):
            await download(old, tmp_path / "incoming", JoinProgress("snapshot"), http)


def test_the_metadata_must_be_what_the_donor_described(tmp_path: Path) -> None:
    snap = make_snapshot(tmp_path)
    info = {"fingerprint": snap.fingerprint, "version_vector": {"n0": 8, "n1": 5}}
    with pytest.raises(SnapshotRefused, match="metadata"):
        read_checked(snap.path, RUN, info)
    with pytest.raises(SnapshotRefused, match="another run"):
        read_checked(snap.path, "11" * 8, {**info, "version_vector": snap.version_vector})


def test_donors_are_spread_over_the_best_offers_and_refused_ones_skipped() -> None:
    offers = [Offer(f"n{i}", "", "d", "f", 1000 - i) for i in range(5)]
    offers.append(Offer("far-behind", "", "d2", "f2", 100))
    rng = random.Random(0)
    picks = {choose(offers, {}, rng).donor for _ in range(200)}  # type: ignore[union-attr]
    assert picks == {"n0", "n1", "n2", "n3", "n4"}
    refused = {f"n{i}": 1 for i in range(5)}
    assert choose(offers, refused, rng) == offers[-1]
    assert choose(offers, {**refused, "far-behind": 1}, rng) is None
    assert quorum(offers, offers[0]) == 5
    assert quorum(offers, offers[-1]) == 1
