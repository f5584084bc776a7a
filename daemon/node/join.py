"""Join a long run fast: a peer's snapshot, checked against the log before it is trusted.

Serving: every node's endpoint serves its newest snapshot (``GET /snapshot/<fingerprint>``,
safetensors, streamed by sendfile, with ``Content-Length``, range requests and its SHA-256 in
``X-Content-SHA256``; ``GET /snapshot/info`` describes it), and its presence advertises the
snapshot's version-vector digest, fingerprint and record count.

Joining (``--join snapshot|replay|auto``): a node that is far behind picks a donor among the
peers that advertise the most records (at random, so joiners spread over donors), reads its
description, downloads the file into ``incoming/`` (a restart resumes a ``.part`` with a range
request), waits until its log holds the records the snapshot covers (gap filling fetches them:
a byte each), and trusts it only after every check passed:

  * the description and the file are what a donor may say (node/download.py: types, ranges,
    the exact size of a snapshot of this run), the file's SHA-256 is what the donor said, and
    its metadata (run, version vector, fingerprint) and tensors are what they must be;
  * the snapshot covers no more records than the swarm's presences report (a margin for
    presences not yet sent), so a made-up version vector is refused, not waited for; and the
    log fetch has a deadline and is refused when it stops moving (``_until_logged``);
  * with ``--snapshot-quorum k``, k distinct peers advertise the same (digest, fingerprint)
    (in a signed run their presence is signed, so k keys);
  * the audit (model/audit.py): blocks of the joiner's secret choice, computed exactly from
    what it holds and the log, equal the snapshot's bits;
  * the weights hash to the fingerprint (Replica.load).

Whatever a donor does, the join ends: a snapshot that fails any check, or a donor that fails
in any way, is a refusal counted under that donor in ``/status`` (with the reason), and the
joiner tries another donor (at most ``MAX_ATTEMPTS`` tries), then falls back to replay; each
try has its deadlines, so stepping starts within their sum. Nothing half-trusted is ever
loaded, and nothing outlives the join: the file is read only once complete and hashed, moved
into ``snapshots/`` only once loaded, and ``incoming/`` is emptied when the join ends (at
start, all but the partial download a restart resumes goes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import aiohttp
import torch

from seedswarm.daemon.errors import StoreError
from seedswarm.daemon.store.datadir import DataDir
from seedswarm.daemon.store.snapshots import (
    SnapshotInfo,
    SnapshotLayout,
    load_tensors,
    read_info,
)
from seedswarm.model.audit import AuditResult, audit, choose_blocks
from seedswarm.model.replica import Replica, pending_records
from seedswarm.protocol.records import Record
from seedswarm.protocol.session import Session
from seedswarm.protocol.vv import dominates

from .download import (
    INFO_TIMEOUT,
    DonorInfo,
    Offer,
    SnapshotMoved,
    SnapshotRefused,
    check_size,
    download,
    fetch_info,
    fetch_snapshot,
    file_sha256,
    sweep,
)
from .join_progress import JoinProgress
from .model_thread import ModelThread
from .snapshot_serving import snapshot_routes

__all__ = [
    "INCOMING",
    "JoinProgress",
    "Offer",
    "SnapshotJoin",
    "SnapshotMoved",
    "SnapshotRefused",
    "choose",
    "download",
    "fetch_snapshot",
    "file_sha256",
    "quorum",
    "read_checked",
    "snapshot_routes",
]

log = logging.getLogger("seedswarm.join")

INCOMING = "incoming"
MAX_ATTEMPTS = 4  # donors tried (a "moved" counts) before the joiner replays
MOVED_LIMIT = 2  # a donor that says twice in one join that it moved on is refused
REPORTED_MARGIN = (0.1, 4096)  # a snapshot may cover this much more (fraction, records) than
# the swarm's presences report: they are sent at least every heartbeat, so they lag
LOG_MIN_RATE = 1000.0  # records a second: the log fetch may last LOG_SLACK + missing / this
LOG_SLACK = 30.0
LOG_STALL = 15.0  # seconds without a record the snapshot covers: refused (gap filling
# retries a want after 3 s and asks for vvs every 5 s: a swarm that has them sends them sooner)


# == joining ========================================================================================


def choose(offers: list[Offer], refused: Mapping[str, int], rng: random.Random) -> Offer | None:
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
    path: Path, run_id: str, info: DonorInfo, layout: SnapshotLayout
) -> tuple[SnapshotInfo, dict[str, torch.Tensor]]:
    """The downloaded file's own metadata and tensors, checked against what the donor
    described and what a snapshot of this run is (``SnapshotRefused`` otherwise)."""
    try:
        snap = read_info(path)
        if snap.run_id != run_id:
            raise SnapshotRefused("the snapshot is of another run")
        if snap.fingerprint != info.fingerprint or snap.version_vector != info.version_vector:
            raise SnapshotRefused("the snapshot's metadata is not what its donor described")
        if snap.records != info.records:
            raise SnapshotRefused("the snapshot's record count is not its version vector's")
        tensors = load_tensors(snap)
        layout.check(tensors)
    except SnapshotRefused:
        raise
    except StoreError as exc:
        raise SnapshotRefused(str(exc)) from None
    return snap, tensors


class Retractions(Protocol):
    """What the join needs of the trainer: the records given back that it has not yet
    un-applied (node/trainer.py), which a snapshot loaded now already reflects."""

    def queued_retractions(self) -> int: ...

    def forget_retractions(self, count: int) -> None: ...

    @property
    def retractions_done(self) -> int: ...


class Adopter(Protocol):
    """Where a loaded snapshot goes (node/snapshotter.py): into ``snapshots/``, served, unless
    records it holds were given back since the ``mark``-th retraction."""

    async def adopt(self, path: Path, snap: SnapshotInfo, mark: int) -> bool: ...


def audit_and_load(
    replica: Replica,
    state: dict[str, torch.Tensor],
    snap: SnapshotInfo,
    records: Sequence[Record],
    blocks: int,
    rng: random.Random,
) -> tuple[AuditResult, bool]:
    """Model thread: audit ``state`` against what the replica holds plus ``records`` (the log's,
    up to the snapshot's version vector), then load it if the audit passed (Replica.load checks
    the fingerprint). Returns (the audit, loaded)."""
    chosen = choose_blocks(replica.engine, blocks, rng)
    result = audit(replica.engine, state, list(records), chosen)
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
        layout: SnapshotLayout,
        retractions: Retractions,
        snapshots: Adopter,
    ) -> None:
        self.replica = replica
        self.model = model
        self.session = session
        self.datadir = datadir
        self.progress = progress
        self.audit_blocks = audit_blocks
        self.quorum = quorum
        self.stored = stored  # set by the node each time frames reached the store
        self.layout = layout
        self.retractions = retractions
        self.snapshots = snapshots
        self._rng = random.SystemRandom()  # the audited blocks are the joiner's secret

    @property
    def incoming(self) -> Path:
        return self.datadir.root / INCOMING

    def offers(self, applied: int) -> list[Offer]:
        now = time.monotonic()
        return [
            Offer(p.node, p.http, p.snapshot.vv_digest.hex(), p.snapshot.fingerprint.hex(),
                  p.snapshot.records)
            for p in self.session.peers(now)
            if p.alive and p.snapshot is not None and p.http and p.snapshot.records > applied
        ]  # fmt: skip

    async def run(self, min_records: int) -> SnapshotInfo | None:
        """Join from a snapshot worth at least ``min_records`` more than what is applied: the
        snapshot loaded, or None when there is none, or every one was refused (the node
        replays). ``incoming/`` is empty when this returns, however it ends."""
        try:
            return await self._run(min_records)
        finally:
            await asyncio.to_thread(sweep, self.incoming, keep_part=False)

    async def _run(self, min_records: int) -> SnapshotInfo | None:
        p = self.progress
        moved: dict[str, int] = {}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=INFO_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as http:
            for _ in range(MAX_ATTEMPTS):
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
                    moved[offer.donor] = moved.get(offer.donor, 0) + 1
                    if moved[offer.donor] >= MOVED_LIMIT:
                        self._refuse(offer, f"it keeps serving another snapshot ({exc})")
                    else:
                        log.info("%s: %s; looking again", offer.donor, exc)
                        await asyncio.sleep(1.0)  # its next presence names the new one
                except (SnapshotRefused, StoreError, aiohttp.ClientError, OSError) as exc:
                    self._refuse(offer, str(exc) or type(exc).__name__)
                except Exception as exc:
                    # nothing a donor says may stop a node: what slipped past the checks above
                    # is a refusal too, logged with its traceback, as it may be a bug here
                    log.exception("the snapshot of %s failed unexpectedly", offer.donor)
                    self._refuse(offer, f"{type(exc).__name__}: {exc}")
            p.reason = p.reason or f"no snapshot in {MAX_ATTEMPTS} tries"
        return None

    def _refuse(self, offer: Offer, why: str) -> None:
        self.progress.refuse(offer.donor, why)
        log.warning("snapshot of %s refused: %s", offer.donor, why)

    async def _take(self, offer: Offer, http: aiohttp.ClientSession) -> SnapshotInfo:
        p = self.progress
        p.donor, p.records, p.state = offer.donor, offer.records, "asking"
        p.bytes = p.total = 0
        info = await fetch_info(offer, http)
        if (info.vv_digest, info.fingerprint) != (offer.vv_digest, offer.fingerprint):
            raise SnapshotMoved("it serves another snapshot than its presence advertises")
        if info.records != offer.records:
            raise SnapshotRefused(
                f"its presence says {offer.records} records, its description {info.records}"
            )
        check_size(info, self.layout)
        if not dominates(info.version_vector, self.replica.vv):
            raise SnapshotRefused("the snapshot lacks records this node already applied")
        self._check_reported(offer.donor, info.records)
        p.state = "downloading"
        log.info("joining from the snapshot of %s (%d records)", offer.donor, offer.records)
        path = await download(offer, info, self.layout, self.incoming, p, http)
        try:
            snap, state = await asyncio.to_thread(
                read_checked, path, self.session.run_id.hex(), info, self.layout
            )
            p.state = "fetching log"
            await self._until_logged(snap.version_vector)
            p.state, t0 = "auditing", time.monotonic()
            have = self.replica.vv
            records = pending_records(self.session.log, have, upto=snap.version_vector)
            if sum(snap.version_vector.values()) - sum(have.values()) != len(records):
                raise SnapshotRefused("the log does not hold every record the snapshot covers")
            # the log read just now reflects every record given back so far: so does the
            # snapshot, if it passes, and the trainer need not un-apply those any more
            queued = self.retractions.queued_retractions()
            result, loaded = await self.model.run(
                audit_and_load, self.replica, state, snap, records, self.audit_blocks,
                random.Random(self._rng.getrandbits(64)),
            )  # fmt: skip
            p.audit_blocks, p.audit_seconds = result.blocks, time.monotonic() - t0
            if not result.passed:
                raise SnapshotRefused(
                    f"{len(result.mismatches)} of {result.blocks} audited blocks differ from "
                    "what the log gives"
                )
            if not loaded:
                raise SnapshotRefused("its weights do not hash to its fingerprint")
            self.retractions.forget_retractions(queued)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        p.state = "loading"
        await self.snapshots.adopt(path, snap, self.retractions.retractions_done)
        p.state, p.reason = "done", f"joined from the snapshot of {offer.donor}"
        return snap

    def _check_reported(self, donor: str, records: int) -> None:
        """Refuse a snapshot that covers more records than the swarm reports holding: the
        most any live peer but the donor says in its presence (``held_total``; the donor's
        own when no other peer is there), or this node holds, with a margin for presences
        not sent yet. A made-up version vector is refused here, before a byte is fetched."""
        now = time.monotonic()
        live = [p for p in self.session.peers(now) if p.alive]
        others = [p.held_total for p in live if p.node != donor]
        if not others:
            others = [p.held_total for p in live if p.node == donor]
        reported = max([self.session.log.held_count(), *others])
        frac, extra = REPORTED_MARGIN
        if records > reported + int(reported * frac) + extra:
            raise SnapshotRefused(
                f"its snapshot covers {records} records; the swarm's presences report at "
                f"most {reported}"
            )

    async def _until_logged(self, vv: Mapping[str, int]) -> None:
        """Until the log holds every record ``vv`` covers (gap filling fetches them), within
        ``LOG_SLACK`` s plus the missing records at ``LOG_MIN_RATE``, and refused once no
        record ``vv`` covers has come for ``LOG_STALL`` s."""
        log_ = self.session.log
        goal = sum(vv.values())

        def covered() -> int:
            return sum(min(log_.next_seq(n), end) for n, end in vv.items())

        best = covered()
        start = last = time.monotonic()
        deadline = LOG_SLACK + (goal - best) / LOG_MIN_RATE
        self.progress.deadline_s = deadline
        while best < goal:
            now = time.monotonic()
            if now - start > deadline:
                raise SnapshotRefused(
                    f"the log holds {best} of the {goal} records it covers after {deadline:.0f} s"
                )
            if now - last > LOG_STALL:
                raise SnapshotRefused(
                    f"no record it covers came for {LOG_STALL:g} s ({best} of {goal} held)"
                )
            self.stored.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.stored.wait()
            if (now_covered := covered()) > best:
                best, last = now_covered, time.monotonic()
