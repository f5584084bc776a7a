"""Join a long run fast: a peer's snapshot, checked against the log before it is trusted.

Serving: every node's endpoint serves its newest snapshot (``GET /snapshot/<fingerprint>``,
safetensors, streamed by sendfile, with ``Content-Length``, range requests and its SHA-256 in
``X-Content-SHA256``; ``GET /snapshot/info`` describes it), and its presence advertises the
snapshot's version-vector digest, fingerprint and record count.

Joining (``--join snapshot|replay|auto``): a node that is far behind picks a donor among the
peers that advertise the most records (at random, so joiners spread over donors), waits until
its log holds the records the snapshot covers (gap filling fetches them: a byte each), downloads
the file into ``incoming/`` (a restart resumes a ``.part`` with a range request), and trusts it
only after every check passed:

  * the file's SHA-256 is what the donor said, and its metadata (run, version vector,
    fingerprint) is what its presence advertised;
  * with ``--snapshot-quorum k``, k distinct peers advertise the same (digest, fingerprint)
    (in a signed run their presence is signed, so k keys);
  * the audit (model/audit.py): blocks of the joiner's secret choice, computed exactly from
    what it holds and the log, equal the snapshot's bits;
  * the weights hash to the fingerprint (Replica.load).

A snapshot that fails is deleted, counted against its donor in ``/status``, and the joiner tries
another donor, then falls back to replay. Nothing half-trusted is ever loaded: the file is
read only once complete and hashed, and moved into ``snapshots/`` only once loaded.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import torch
from aiohttp import web

from seedswarm.model.audit import AuditResult, audit, choose_blocks
from seedswarm.model.replica import Replica, pending_records
from seedswarm.protocol.log import OrderedLog
from seedswarm.protocol.session import Session
from seedswarm.protocol.vv import dominates

from .datadir import DataDir, fsync_dir
from .errors import StoreError
from .snapshots import SnapshotInfo, load_tensors, read_info
from .worker import ModelThread

log = logging.getLogger("seedswarm.join")

INCOMING = "incoming"
CHUNK = 1 << 20


# == serving ========================================================================================


class SnapshotSource(Protocol):
    """What the endpoint needs of a node: its newest snapshot and that file's SHA-256."""

    def served_snapshot(self) -> tuple[SnapshotInfo, str] | None: ...


def snapshot_routes(source: SnapshotSource) -> list[web.RouteDef]:
    async def info(request: web.Request) -> web.Response:
        got = source.served_snapshot()
        if got is None:
            return web.json_response({"error": "no snapshot yet"}, status=404)
        snap, sha = got
        return web.json_response(_describe(snap, sha))

    async def file(request: web.Request) -> web.StreamResponse:
        got = source.served_snapshot()
        if got is None or got[0].fingerprint != request.match_info["fingerprint"]:
            return web.json_response({"error": "no such snapshot (any more)"}, status=404)
        snap, sha = got
        return web.FileResponse(snap.path, headers={"X-Content-SHA256": sha})

    return [
        web.get("/snapshot/info", info),
        web.get("/snapshot/{fingerprint:[0-9a-f]{64}}", file),
    ]


def _describe(snap: SnapshotInfo, sha: str) -> dict[str, Any]:
    from seedswarm.protocol.vv import digest

    return {
        "fingerprint": snap.fingerprint,
        "version_vector": snap.version_vector,
        "vv_digest": digest(snap.version_vector),
        "records": snap.records,
        "bytes": snap.path.stat().st_size,
        "sha256": sha,
    }


def file_sha256(path: Path) -> str:
    return str(_hash_of(path).hexdigest())


# == joining ========================================================================================


@dataclass(slots=True)
class JoinProgress:
    """What /status shows of a join."""

    mode: str  # snapshot, replay, auto
    state: str = "waiting"  # waiting, fetching log, downloading, auditing, loading, done, replay
    reason: str = ""  # why it replays, or how it joined
    donor: str = ""
    bytes: int = 0
    total: int = 0
    started: float = 0.0
    records: int = 0  # the snapshot's
    audit_blocks: int = 0
    audit_seconds: float = 0.0
    refused: dict[str, int] = field(default_factory=dict)  # donor -> snapshots refused

    def line(self) -> str:
        """What the progress line in the log says of the join while it runs."""
        if self.state == "downloading":
            eta = self.eta_s
            return (
                f"downloading the snapshot of {self.donor} ({self.records} records): "
                f"{self.bytes / 1e6:.1f} of {self.total / 1e6:.1f} MB"
                + ("" if eta is None else f", ETA {eta:.0f} s")
            )
        if self.state in ("fetching log", "auditing", "loading"):
            return f"{self.state} for the snapshot of {self.donor} ({self.records} records)"
        return self.state

    @property
    def eta_s(self) -> float | None:
        if not self.total or not self.bytes or self.state != "downloading":
            return None
        elapsed = time.monotonic() - self.started
        return elapsed * (self.total - self.bytes) / self.bytes


@dataclass(frozen=True, slots=True)
class Offer:
    donor: str
    http: str
    vv_digest: str
    fingerprint: str
    records: int


class SnapshotRefused(StoreError):
    """A donor's snapshot failed a check; the joiner tries another or replays."""


class SnapshotMoved(StoreError):
    """The donor has a newer snapshot than its presence said (it saved one meanwhile): not
    held against it; the joiner looks at the offers again."""


async def download(
    offer: Offer, into: Path, progress: JoinProgress, session: aiohttp.ClientSession
) -> tuple[Path, dict[str, Any]]:
    """The donor's snapshot into ``into`` (resuming a ``.part`` of the same snapshot); returns
    the complete file, hashed and checked against what the donor said, and its description."""
    async with session.get(f"{offer.http}/snapshot/info") as resp:
        if resp.status != 200:
            raise SnapshotRefused(f"{offer.donor} has no snapshot to give ({resp.status})")
        info: dict[str, Any] = await resp.json()
    if (info.get("vv_digest"), info.get("fingerprint")) != (offer.vv_digest, offer.fingerprint):
        raise SnapshotMoved(f"{offer.donor} serves a newer snapshot than it advertised")
    part, have = await asyncio.to_thread(_part, into, offer.fingerprint)
    headers = {"Range": f"bytes={have}-"} if have else {}
    progress.total, progress.bytes, progress.started = int(info["bytes"]), have, time.monotonic()
    url = f"{offer.http}/snapshot/{offer.fingerprint}"
    async with session.get(url, headers=headers) as resp:
        if resp.status == 404:
            raise SnapshotMoved(f"{offer.donor} has moved on from the snapshot it described")
        if resp.status not in (200, 206):
            raise SnapshotRefused(f"{offer.donor} answered {resp.status} for its snapshot")
        if resp.headers.get("X-Content-SHA256") != info["sha256"]:
            raise SnapshotRefused(f"{offer.donor} sent another file than it described")
        resumed = resp.status == 206
        # the hash runs as the bytes come (a resumed file's first part is read once, here)
        h = await asyncio.to_thread(_hash_of, part) if resumed else hashlib.sha256()
        progress.bytes = have if resumed else 0
        with part.open("ab" if resumed else "wb") as fh:
            async for chunk in resp.content.iter_chunked(CHUNK):
                await asyncio.to_thread(_write, fh, h, chunk)
                progress.bytes += len(chunk)
            await asyncio.to_thread(os.fsync, fh.fileno())
    if h.hexdigest() != info["sha256"]:
        part.unlink(missing_ok=True)
        raise SnapshotRefused(f"the snapshot of {offer.donor} does not hash to what it said")
    done = part.with_suffix(".safetensors")
    part.replace(done)
    return done, info


def _hash_of(path: Path) -> Any:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h


def _write(fh: Any, h: Any, chunk: bytes) -> None:
    fh.write(chunk)
    h.update(chunk)


def _part(into: Path, fingerprint: str) -> tuple[Path, int]:
    """The partial download of this snapshot and its size; partial ones of others go."""
    into.mkdir(parents=True, exist_ok=True)
    part = into / f"{fingerprint}.part"
    for old in into.glob("*.part"):
        if old != part:
            old.unlink(missing_ok=True)  # of another snapshot: start that over
    return part, part.stat().st_size if part.exists() else 0


def choose(offers: list[Offer], refused: dict[str, int], rng: random.Random) -> Offer | None:
    """A donor among those that offer the most records, not one that failed before."""
    fresh = [o for o in offers if o.donor not in refused]
    if not fresh:
        return None
    best = max(o.records for o in fresh)
    near = [o for o in fresh if o.records >= 0.95 * best]
    return rng.choice(near)


def quorum(offers: list[Offer], offer: Offer) -> int:
    """How many distinct peers advertise this very snapshot."""
    return len(
        {
            o.donor
            for o in offers
            if (o.vv_digest, o.fingerprint) == (offer.vv_digest, offer.fingerprint)
        }
    )


def read_checked(
    path: Path, run_id: str, info: dict[str, Any]
) -> tuple[SnapshotInfo, dict[str, torch.Tensor]]:
    """The downloaded file's own metadata, checked against what the donor described."""
    snap = read_info(path)
    if snap.run_id != run_id:
        raise SnapshotRefused("the snapshot is of another run")
    if snap.fingerprint != info["fingerprint"] or snap.version_vector != info["version_vector"]:
        raise SnapshotRefused("the snapshot's metadata is not what its donor described")
    return snap, load_tensors(snap)


# == the join itself =================================================================================


def audit_and_load(
    replica: Replica,
    state: dict[str, torch.Tensor],
    snap: SnapshotInfo,
    log: OrderedLog,
    blocks: int,
    rng: random.Random,
) -> tuple[AuditResult, bool]:
    """Model thread: audit ``state`` against what the replica holds plus the log's records up to
    the snapshot's version vector, then load it if the audit passed (Replica.load checks the
    fingerprint). Returns (the audit, loaded)."""
    have = replica.vv
    if not dominates(snap.version_vector, have):
        raise SnapshotRefused("the snapshot lacks records this node already applied")
    records = pending_records(log, have, upto=snap.version_vector)
    if sum(snap.version_vector.values()) - sum(have.values()) != len(records):
        raise SnapshotRefused("the log does not hold every record the snapshot covers")
    chosen = choose_blocks(replica.engine, blocks, rng)
    result = audit(replica.engine, state, records, chosen)
    if not result.passed:
        return result, False
    return result, replica.load(state, snap.version_vector, snap.fingerprint)


class SnapshotJoin:
    """The snapshot path of a node's join (see the module docstring)."""

    def __init__(
        self,
        *,
        replica: Replica,
        model: ModelThread,
        session: Session,
        datadir: DataDir,
        progress: JoinProgress,
        audit_blocks: int,
        quorum: int,
        stored: asyncio.Event,
        peer_timeout: float,
    ) -> None:
        self.replica = replica
        self.model = model
        self.session = session
        self.datadir = datadir
        self.progress = progress
        self.audit_blocks = audit_blocks
        self.quorum = quorum
        self.stored = stored  # set by the node each time frames reached the store
        self.peer_timeout = peer_timeout
        self._rng = random.SystemRandom()  # the audited blocks are the joiner's secret

    def offers(self, applied: int) -> list[Offer]:
        now = time.monotonic()
        return [
            Offer(p.node, p.http, p.snapshot.vv_digest.hex(), p.snapshot.fingerprint.hex(),
                  p.snapshot.records)
            for p in self.session.peers(now)
            if p.alive and p.snapshot is not None and p.http and p.snapshot.records > applied
        ]  # fmt: skip

    async def run(self, min_records: int) -> SnapshotInfo | None:
        """Join from a snapshot worth at least ``min_records`` more than what is applied; None
        when there is none, or every one was refused (the node replays)."""
        p = self.progress
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=60)) as http:
            for _ in range(3):
                applied = sum(self.replica.vv.values())
                offers = [o for o in self.offers(applied) if o.records - applied >= min_records]
                offer = choose(offers, p.refused, self._rng)
                if offer is None:
                    p.reason = p.reason or "no peer offers a snapshot far enough ahead"
                    return None
                if quorum(offers, offer) < self.quorum:
                    p.reason = f"fewer than {self.quorum} peers advertise the same snapshot"
                    return None
                try:
                    return await self._take(offer, http)
                except SnapshotMoved as exc:
                    log.info("%s; looking again", exc)
                    await asyncio.sleep(1.0)  # its next presence names the new one
                except (
                    SnapshotRefused,
                    StoreError,
                    aiohttp.ClientError,
                    TimeoutError,
                    OSError,
                ) as exc:
                    p.refused[offer.donor] = p.refused.get(offer.donor, 0) + 1
                    log.warning("snapshot of %s refused: %s", offer.donor, exc)
                    p.reason = f"the snapshot of {offer.donor} was refused: {exc}"
        return None

    async def _take(self, offer: Offer, http: aiohttp.ClientSession) -> SnapshotInfo:
        p = self.progress
        p.donor, p.records, p.state = offer.donor, offer.records, "downloading"
        log.info("joining from the snapshot of %s (%d records)", offer.donor, offer.records)
        incoming = self.datadir.root / INCOMING
        path, info = await download(offer, incoming, p, http)
        try:
            snap, state = await asyncio.to_thread(
                read_checked, path, self.session.run_id.hex(), info
            )
            p.state = "fetching log"
            await self._until_logged(snap.version_vector)
            p.state, t0 = "auditing", time.monotonic()
            result, loaded = await self.model.run(
                audit_and_load, self.replica, state, snap, self.session.log,
                self.audit_blocks, random.Random(self._rng.getrandbits(64)),
            )  # fmt: skip
            p.audit_blocks, p.audit_seconds = result.blocks, time.monotonic() - t0
            if not result.passed:
                raise SnapshotRefused(
                    f"{len(result.mismatches)} of {result.blocks} audited blocks differ from "
                    "what the log gives"
                )
            if not loaded:
                raise SnapshotRefused("its weights do not hash to its fingerprint")
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        p.state = "loading"
        own = self.datadir.snapshots / f"snap-{snap.records:012d}.safetensors"
        await asyncio.to_thread(_adopt, path, own)
        p.state, p.reason = "done", f"joined from the snapshot of {offer.donor}"
        return read_info(own)

    async def _until_logged(self, vv: Mapping[str, int]) -> None:
        """Until the log holds every record ``vv`` covers (gap filling fetches them)."""
        async with asyncio.timeout(300 + sum(vv.values()) / 1000):
            while not dominates(self.session.log.held(), vv):
                self.stored.clear()
                await self.stored.wait()


def _adopt(path: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    path.replace(dest)
    fsync_dir(dest.parent)
