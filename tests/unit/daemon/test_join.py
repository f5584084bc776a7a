"""The pieces of a snapshot join, over real HTTP on a local port and real files: the download
resumes a partial file with a range request and checks the whole file's hash; everything a
donor says is checked like a peer message (its description's types and ranges, the exact size
of a snapshot of the run, never more bytes written than that, a deadline and a stall timeout);
a donor that sends other bytes is refused and leaves nothing behind; the choice of donor
spreads over the best offers and skips refused ones; ``incoming/`` is swept."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import torch
from aiohttp import web

from seedswarm.daemon.errors import StoreError
from seedswarm.daemon.node import download as dl
from seedswarm.daemon.node.download import (
    DonorInfo,
    Offer,
    SnapshotMoved,
    SnapshotRefused,
    download,
    fetch_info,
    fetch_snapshot,
    file_sha256,
    parse_info,
    sweep,
)
from seedswarm.daemon.node.join import (
    JoinProgress,
    choose,
    quorum,
    read_checked,
    snapshot_routes,
)
from seedswarm.daemon.store import snapshots
from seedswarm.daemon.store.snapshots import SnapshotLayout
from seedswarm.protocol.vv import digest

RUN = "00" * 8
VV = {"n0": 7, "n1": 5}


class Source:
    def __init__(self, snap: snapshots.SnapshotInfo, sha: str | None = None) -> None:
        self.snap, self.sha = snap, sha or file_sha256(snap.path)

    def served_snapshot(self) -> tuple[snapshots.SnapshotInfo, str]:
        return self.snap, self.sha


TENSORS = {"a": (300, 257), "b": (1000,)}
LAYOUT = SnapshotLayout(TENSORS)


def make_snapshot(directory: Path) -> snapshots.SnapshotInfo:
    g = torch.Generator().manual_seed(0)
    tensors = {n: torch.randint(-(2**40), 2**40, s, generator=g) for n, s in TENSORS.items()}
    return snapshots.save(directory, tensors, run_id=RUN, version_vector=VV, fingerprint="ab" * 32)


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest_asyncio.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Source, str]]:
    source = Source(make_snapshot(tmp_path / "donor"))
    app = web.Application()
    app.add_routes(snapshot_routes(source))
    runner, url = await _serve(app)
    try:
        yield source, url
    finally:
        await runner.cleanup()


def offer_of(snap: snapshots.SnapshotInfo, url: str, donor: str = "n0") -> Offer:
    return Offer(donor, url, digest(snap.version_vector), snap.fingerprint, snap.records)


def info_of(snap: snapshots.SnapshotInfo, sha: str, **changes: Any) -> dict[str, Any]:
    return {
        "fingerprint": snap.fingerprint,
        "version_vector": snap.version_vector,
        "vv_digest": digest(snap.version_vector),
        "records": snap.records,
        "bytes": snap.path.stat().st_size,
        "sha256": sha,
        **changes,
    }


def test_the_layout_gives_the_exact_size_of_a_snapshot_and_bounds_its_header(
    tmp_path: Path,
) -> None:
    snap = make_snapshot(tmp_path)
    size = snap.path.stat().st_size
    assert LAYOUT.data_bytes == (300 * 257 + 1000) * 8
    lo, hi = LAYOUT.size_bounds(VV)
    assert lo <= size <= hi
    assert hi - lo < 2048, "the header's bound is tight: a few hundred bytes of slack"
    assert LAYOUT.size_for_header(snap.path.read_bytes()[:8], VV) == size
    with pytest.raises(StoreError, match="header"):
        LAYOUT.size_for_header((10**6).to_bytes(8, "little"), VV)
    LAYOUT.check(snapshots.load_tensors(snap))
    with pytest.raises(StoreError, match="not the run's"):
        SnapshotLayout({"a": (300, 257)}).check(snapshots.load_tensors(snap))
    with pytest.raises(StoreError, match=r"torch\.int64"):
        LAYOUT.check({"a": torch.zeros(300, 257), "b": torch.zeros(1000, dtype=torch.int64)})


# == what a donor says =============================================================================


def _good() -> dict[str, Any]:
    return {
        "fingerprint": "ab" * 32,
        "version_vector": VV,
        "vv_digest": digest(VV),
        "records": 12,
        "bytes": 1000,
        "sha256": "cd" * 32,
    }


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"[1, 2, 3]", "JSON list, not an object"),
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (json.dumps({**_good(), "bytes": "lots"}).encode(), "bytes is a str"),
        (json.dumps({**_good(), "bytes": 1.5}).encode(), "bytes is a float"),
        (json.dumps({**_good(), "bytes": True}).encode(), "bytes is a bool"),
        (json.dumps({**_good(), "bytes": -1}).encode(), "out of range"),
        (json.dumps({**_good(), "bytes": 2**70}).encode(), "out of range"),
        (b'{"bytes": NaN}', "not JSON"),
        (json.dumps({**_good(), "records": 13}).encode(), "sums to 12"),
        (json.dumps({**_good(), "version_vector": [1]}).encode(), "not an object"),
        (json.dumps({**_good(), "version_vector": {"n0": "7"}}).encode(), "not an integer"),
        (json.dumps({**_good(), "version_vector": {"a/b": 7}}).encode(), "node id"),
        (json.dumps({**_good(), "version_vector": {"n0": 2**63 + 1}}).encode(), "out of range"),
        (json.dumps({**_good(), "vv_digest": "00" * 8}).encode(), "does not hash"),
        (json.dumps({**_good(), "fingerprint": "AB" * 32}).encode(), "lowercase hex"),
        (json.dumps({**_good(), "sha256": None}).encode(), "sha256 is a NoneType"),
        (json.dumps({**_good(), "extra": 1}).encode(), "should not"),
        (json.dumps({k: v for k, v in _good().items() if k != "sha256"}).encode(), "lacks"),
    ],
)
def test_a_description_is_checked_like_a_peer_message(body: bytes, why: str) -> None:
    with pytest.raises(SnapshotRefused, match=why):
        parse_info(body)


def test_a_good_description_reads() -> None:
    info = parse_info(json.dumps(_good()).encode())
    assert info == DonorInfo("ab" * 32, VV, digest(VV), 12, 1000, "cd" * 32)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest_asyncio.fixture
async def hostile() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """A donor written here: each test gives it its own handler for every path."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_get("/{tail:.*}", handler)
        runner, url = await _serve(app)
        runners.append(runner)
        return url

    try:
        yield start
    finally:
        for r in runners:
            await r.cleanup()


@pytest.mark.asyncio
async def test_a_description_too_long_or_too_slow_is_refused(
    hostile: Callable[[Handler], Awaitable[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        while True:
            await resp.write(b" " * 65536)

    async def silent(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(2)
        raise AssertionError("not reached")

    offer = Offer("evil", await hostile(endless), "", "", 0)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(SnapshotRefused, match="more than"):
            await fetch_info(offer, http)
        monkeypatch.setattr(dl, "INFO_TIMEOUT", 0.5)
        offer = Offer("evil", await hostile(silent), "", "", 0)
        with pytest.raises(SnapshotRefused, match="did not come within"):
            await fetch_info(offer, http)
        for url in ("ftp://x", "http://", "javascript:alert(1)", "http://h/?q=1"):
            with pytest.raises(SnapshotRefused, match="URL"):
                await fetch_info(Offer("evil", url, "", "", 0), http)


# == the file ======================================================================================


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
        path, info = await fetch_snapshot(offer_of(source.snap, url), LAYOUT, into, progress, http)
    assert path.read_bytes() == whole
    assert progress.bytes == progress.total == len(whole)
    assert info.sha256 == source.sha
    assert sorted(p.name for p in into.iterdir()) == [path.name], "the other part is gone"
    snap, tensors = read_checked(path, RUN, info, LAYOUT)
    assert snap.version_vector == VV
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
            await fetch_snapshot(
                offer_of(source.snap, url), LAYOUT, into, JoinProgress("snapshot"), http
            )
    assert not list(into.iterdir())


@pytest.mark.asyncio
async def test_a_donor_that_moved_on_is_not_held_against_it(
    served: tuple[Source, str], tmp_path: Path
) -> None:
    _, url = served
    old = Offer("n0", url, "11" * 8, "ee" * 32, 3)  # what an older presence said
    async with aiohttp.ClientSession() as http:
        with pytest.raises(SnapshotMoved):
            await fetch_snapshot(old, LAYOUT, tmp_path / "incoming", JoinProgress("x"), http)


@pytest.mark.asyncio
async def test_a_size_no_snapshot_of_the_run_has_is_refused_before_a_byte_is_fetched(
    served: tuple[Source, str], tmp_path: Path
) -> None:
    source, url = served
    requests: list[str] = []

    async def counting(request: web.Request) -> web.StreamResponse:
        requests.append(request.path)
        return web.Response(body=b"\0" * 100)

    for size in (10**12, LAYOUT.data_bytes):  # too long; too short for a header
        info = DonorInfo(**{**info_of(source.snap, source.sha), "bytes": size})
        async with aiohttp.ClientSession() as http:
            with pytest.raises(SnapshotRefused, match="one of this run is"):
                await download(
                    offer_of(source.snap, url), info, LAYOUT, tmp_path / "in", JoinProgress("x"),
                    http,
                )  # fmt: skip
    assert not requests
    assert not list((tmp_path / "in").glob("*"))


async def _download_from(
    handler: Handler,
    hostile: Callable[[Handler], Awaitable[str]],
    snap: snapshots.SnapshotInfo,
    sha: str,
    into: Path,
    progress: JoinProgress,
) -> Path:
    url = await hostile(handler)
    info = DonorInfo(**info_of(snap, sha))
    async with aiohttp.ClientSession() as http:
        return await download(offer_of(snap, url), info, LAYOUT, into, progress, http)


@pytest.mark.asyncio
async def test_a_donor_that_streams_more_or_other_than_it_said_is_cut_off(
    served: tuple[Source, str], hostile: Callable[[Handler], Awaitable[str]], tmp_path: Path
) -> None:
    """It says the true size, then streams zeros without end: refused at its first 8 bytes
    (a header of length 0); or a true header and then zeros without end: refused before a
    byte beyond the true size is written."""
    source, _ = served
    whole = source.snap.path.read_bytes()
    into = tmp_path / "incoming"
    written: list[int] = []

    def endless(head: bytes) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"X-Content-SHA256": source.sha})
            await resp.prepare(request)
            await resp.write(head)
            while True:
                await resp.write(b"\0" * 65536)
                written.extend(p.stat().st_size for p in into.glob("*"))

        return handler

    progress = JoinProgress("x")
    with pytest.raises(StoreError, match="header would be 0 bytes"):
        await _download_from(endless(b""), hostile, source.snap, source.sha, into, progress)
    header = whole[: 8 + int.from_bytes(whole[:8], "little")]
    with pytest.raises(SnapshotRefused, match=f"more than the {len(whole)} bytes"):
        await _download_from(endless(header), hostile, source.snap, source.sha, into, progress)
    assert max(written) <= len(whole)
    assert progress.bytes <= len(whole)

    async def claims_huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"X-Content-SHA256": source.sha})
        resp.content_length = 10**12
        await resp.prepare(request)
        await resp.write(b"\0" * 100)
        return resp

    with pytest.raises(SnapshotRefused, match="sends 1000000000000 bytes"):
        await _download_from(claims_huge, hostile, source.snap, source.sha, into, progress)


@pytest.mark.asyncio
async def test_a_trickle_is_refused_by_the_stall_timeout_and_the_deadline(
    served: tuple[Source, str],
    hostile: Callable[[Handler], Awaitable[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, _ = served
    whole = source.snap.path.read_bytes()

    def trickle(every: float) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"X-Content-SHA256": source.sha})
            resp.content_length = len(whole)
            await resp.prepare(request)
            for b in whole:
                await resp.write(bytes([b]))
                await asyncio.sleep(every)
            return resp

        return handler

    monkeypatch.setattr(dl, "STALL", 0.3)
    progress = JoinProgress("x")
    into = tmp_path / "incoming"
    with pytest.raises(SnapshotRefused, match=r"no byte for 0\.3 s"):
        await _download_from(trickle(1.0), hostile, source.snap, source.sha, into, progress)
    monkeypatch.setattr(dl, "DOWNLOAD_SLACK", 1.0)
    with pytest.raises(SnapshotRefused, match="must go at 256 KiB/s"):
        await _download_from(trickle(0.01), hostile, source.snap, source.sha, into, progress)
    assert progress.deadline_s == pytest.approx(1.0 + len(whole) / dl.MIN_RATE, rel=0.01)


@pytest.mark.asyncio
async def test_a_range_it_was_not_asked_for_is_refused(
    served: tuple[Source, str], hostile: Callable[[Handler], Awaitable[str]], tmp_path: Path
) -> None:
    source, _ = served
    whole = source.snap.path.read_bytes()
    into = tmp_path / "incoming"
    into.mkdir()
    (into / f"{source.snap.fingerprint}.part").write_bytes(whole[:100])

    async def other_range(request: web.Request) -> web.StreamResponse:
        assert request.headers["Range"] == "bytes=100-"
        return web.Response(
            status=206, body=whole[50:],
            headers={"X-Content-SHA256": source.sha,
                     "Content-Range": f"bytes 50-{len(whole) - 1}/{len(whole)}"},
        )  # fmt: skip

    with pytest.raises(SnapshotRefused, match="another range"):
        await _download_from(other_range, hostile, source.snap, source.sha, into, JoinProgress("x"))


def test_the_metadata_must_be_what_the_donor_described(tmp_path: Path) -> None:
    snap = make_snapshot(tmp_path)
    info = DonorInfo(**info_of(snap, "00" * 32))
    with pytest.raises(SnapshotRefused, match="metadata"):
        read_checked(
            snap.path, RUN, DonorInfo(**{**info_of(snap, "00"), "fingerprint": "cd" * 32}), LAYOUT
        )
    with pytest.raises(SnapshotRefused, match="another run"):
        read_checked(snap.path, "11" * 8, info, LAYOUT)
    with pytest.raises(SnapshotRefused, match="not the run's"):
        read_checked(snap.path, RUN, info, SnapshotLayout({"a": (300, 257)}))


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


def test_the_sweep_keeps_at_most_the_newest_partial_download(tmp_path: Path) -> None:
    into = tmp_path / "incoming"
    into.mkdir()
    for name in ("a" * 64 + ".part", "b" * 64 + ".safetensors", "junk", "x.part"):
        (into / name).write_bytes(b"12345678")
    (into / "dir").mkdir()
    (into / "dir" / "f").write_bytes(b"x")
    newest = into / ("c" * 64 + ".part")
    newest.write_bytes(b"123456789")
    assert sweep(into, keep_part=True) == 5
    assert list(into.iterdir()) == [newest]
    assert sweep(into, keep_part=False) == 1
    assert not list(into.iterdir())
    assert sweep(tmp_path / "absent", keep_part=False) == 0
