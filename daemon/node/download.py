"""What a snapshot donor says, taken as input: its description, then its file, each bounded.

A donor is any peer whose presence advertises a snapshot, so in an open run anyone, and in a
signed run any member. Nothing it says is trusted before it is checked, as strictly as a peer
message (docs/PROTOCOL.md §9), and nothing it does can make a joiner exit, fill its disk or
wait without end:

  * ``GET /snapshot/info`` is read within ``INFO_TIMEOUT`` seconds and ``INFO_BYTES`` bytes and
    must be a JSON object with exactly the six fields a node serves, each of its type and in
    range (``parse_info``); the version vector must hash to the digest, and the record count
    be its sum.
  * The joiner knows the exact size of the data of any snapshot of its run (one int64 per
    trainable element, store/snapshots.py ``SnapshotLayout``) and bounds its header, so a
    described size outside those bounds is refused before a byte is fetched; the file's first
    8 bytes (its header length) then give the exact size, and a donor that sends another is
    refused as soon as that shows: never is more than that size written to ``incoming/``.
  * The download has a deadline of ``DOWNLOAD_SLACK`` seconds plus its size at ``MIN_RATE``
    bytes a second, and is refused after ``STALL`` seconds without a byte.

Every failure raises ``SnapshotRefused`` (the donor's fault: it is counted under it) or
``SnapshotMoved`` (it has a newer snapshot than its presence said: looked at again). The
partial file of the snapshot being fetched is ``incoming/<fingerprint>.part``; a restart
resumes it with a range request, and the join deletes it when it ends (node/join.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import yarl

from seedswarm.daemon.errors import StoreError
from seedswarm.daemon.store.snapshots import HEADER_LENGTH_BYTES, SnapshotLayout
from seedswarm.protocol.errors import DecodeError
from seedswarm.protocol.ids import check_node_id
from seedswarm.protocol.messages import MAX_VV_NODES
from seedswarm.protocol.records import SEQ_LIMIT
from seedswarm.protocol.vv import digest

log = logging.getLogger("seedswarm.join")

CHUNK = 1 << 20  # bytes written to disk at a time
INFO_BYTES = 4 << 20  # a description of a snapshot: a version vector of 16,384 nodes fits
INFO_TIMEOUT = 10.0  # seconds for the description, connection included; and for the file's headers
MIN_RATE = 256 * 1024  # bytes a second: a download may last DOWNLOAD_SLACK + size / MIN_RATE
DOWNLOAD_SLACK = 30.0
STALL = 10.0  # seconds without a byte of the file: refused

INFO_FIELDS = ("bytes", "fingerprint", "records", "sha256", "version_vector", "vv_digest")
_HEX = re.compile(r"[0-9a-f]+")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class SnapshotRefused(StoreError):
    """A donor's snapshot failed a check; the joiner tries another or replays."""


class SnapshotMoved(StoreError):
    """The donor has a newer snapshot than its presence said (it saved one meanwhile): not
    held against it (unless it keeps saying so); the joiner looks at the offers again."""


class Progress(Protocol):
    """What a download reports as it goes (node/join.py JoinProgress)."""

    bytes: int
    total: int
    started: float
    deadline_s: float


@dataclass(frozen=True, slots=True)
class Offer:
    """A snapshot a peer's presence advertises."""

    donor: str
    http: str
    vv_digest: str
    fingerprint: str
    records: int


@dataclass(frozen=True, slots=True)
class DonorInfo:
    """``GET /snapshot/info``, checked (``parse_info``)."""

    fingerprint: str  # 64 lowercase hex digits
    version_vector: dict[str, int]
    vv_digest: str  # 16 lowercase hex digits, the digest of version_vector
    records: int  # the sum of version_vector
    bytes: int  # the file's size
    sha256: str  # 64 lowercase hex digits


# == the description ================================================================================


def parse_info(body: bytes) -> DonorInfo:
    """A donor's description of its snapshot, or ``SnapshotRefused`` saying what is wrong."""
    try:
        raw = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SnapshotRefused(f"its /snapshot/info is not JSON ({str(exc)[:80]})") from None
    if not isinstance(raw, dict):
        raise SnapshotRefused(f"its /snapshot/info is a JSON {type(raw).__name__}, not an object")
    if sorted(raw) != list(INFO_FIELDS):
        missing = sorted(set(INFO_FIELDS) - set(raw))
        extra = sorted(set(raw) - set(INFO_FIELDS))[:4]
        raise SnapshotRefused(
            f"its /snapshot/info lacks {missing} or has fields it should not {extra}"
        )
    vv = raw["version_vector"]
    if not isinstance(vv, dict):
        raise SnapshotRefused(f"its version_vector is a {type(vv).__name__}, not an object")
    if len(vv) > MAX_VV_NODES:
        raise SnapshotRefused(f"its version_vector names more than {MAX_VV_NODES} nodes")
    for node, end in vv.items():
        try:
            check_node_id(node)
        except DecodeError as exc:
            raise SnapshotRefused(f"its version_vector: {exc}") from None
        _count(end, f"version_vector[{node}]", SEQ_LIMIT)
    info = DonorInfo(
        fingerprint=_hex(raw["fingerprint"], "fingerprint", 64),
        version_vector=dict(vv),
        vv_digest=_hex(raw["vv_digest"], "vv_digest", 16),
        records=_count(raw["records"], "records", 2**64 - 1),
        bytes=_count(raw["bytes"], "bytes", 2**63 - 1),
        sha256=_hex(raw["sha256"], "sha256", 64),
    )
    if digest(info.version_vector) != info.vv_digest:
        raise SnapshotRefused("its version_vector does not hash to its vv_digest")
    if sum(info.version_vector.values()) != info.records:
        raise SnapshotRefused(
            f"it says {info.records} records; its version_vector sums to "
            f"{sum(info.version_vector.values())}"
        )
    return info


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is no JSON number")


def _hex(value: object, what: str, digits: int) -> str:
    if not isinstance(value, str):
        raise SnapshotRefused(f"its {what} is a {type(value).__name__}, not a string")
    if len(value) != digits or not _HEX.fullmatch(value):
        raise SnapshotRefused(f"its {what} is not {digits} lowercase hex digits")
    return value


def _count(value: object, what: str, limit: int) -> int:
    if type(value) is not int:
        raise SnapshotRefused(f"its {what} is a {type(value).__name__}, not an integer")
    if not 0 <= value <= limit:
        raise SnapshotRefused(f"its {what} ({value}) is out of range")
    return value


def donor_url(offer: Offer) -> yarl.URL:
    """The donor's status URL, as its presence says (at most 256 characters, §7): http or
    https with a host, or ``SnapshotRefused``."""
    try:
        url = yarl.URL(offer.http)
    except (ValueError, TypeError) as exc:
        raise SnapshotRefused(f"its presence gives no URL ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host or url.query_string or url.fragment:
        raise SnapshotRefused(f"its presence gives no http(s) status URL: {offer.http[:80]!r}")
    return url


async def fetch_info(offer: Offer, http: aiohttp.ClientSession) -> DonorInfo:
    """``GET /snapshot/info``, within ``INFO_TIMEOUT`` s and ``INFO_BYTES`` bytes, checked."""
    url = donor_url(offer) / "snapshot" / "info"
    try:
        async with (
            asyncio.timeout(INFO_TIMEOUT),
            http.get(url, allow_redirects=False) as resp,
        ):
            if resp.status != 200:
                raise SnapshotRefused(f"it has no snapshot to give (HTTP {resp.status})")
            body = await _read_at_most(resp, INFO_BYTES)
    except TimeoutError:
        raise SnapshotRefused(
            f"its /snapshot/info did not come within {INFO_TIMEOUT:g} s"
        ) from None
    return parse_info(body)


async def _read_at_most(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    if (resp.content_length or 0) > limit:
        raise SnapshotRefused(f"its /snapshot/info is {resp.content_length} bytes long")
    body = bytearray()
    while chunk := await resp.content.readany():
        body += chunk
        if len(body) > limit:
            raise SnapshotRefused(f"its /snapshot/info is more than {limit} bytes long")
    return bytes(body)


async def fetch_snapshot(
    offer: Offer,
    layout: SnapshotLayout,
    into: Path,
    progress: Progress,
    http: aiohttp.ClientSession,
) -> tuple[Path, DonorInfo]:
    """The donor's description and file, each checked (``fetch_info``, ``download``)."""
    info = await fetch_info(offer, http)
    if (info.vv_digest, info.fingerprint) != (offer.vv_digest, offer.fingerprint):
        raise SnapshotMoved("it serves another snapshot than its presence advertises")
    return await download(offer, info, layout, into, progress, http), info


# == the file =======================================================================================


def check_size(info: DonorInfo, layout: SnapshotLayout) -> None:
    """A snapshot of this run at ``info``'s version vector has a size within known bounds."""
    lo, hi = layout.size_bounds(info.version_vector)
    if not lo <= info.bytes <= hi:
        raise SnapshotRefused(
            f"it says its snapshot is {info.bytes} bytes; one of this run is {lo} to {hi}"
        )


def deadline_for(size: int) -> float:
    """Seconds a download of ``size`` bytes may take."""
    return DOWNLOAD_SLACK + size / MIN_RATE


async def download(
    offer: Offer,
    info: DonorInfo,
    layout: SnapshotLayout,
    into: Path,
    progress: Progress,
    http: aiohttp.ClientSession,
) -> Path:
    """The donor's snapshot file in ``into`` (``<fingerprint>.part``; a partial one of the same
    snapshot is resumed), complete and hashed to what ``info`` says: at most ``info.bytes`` ever
    written, within ``deadline_for`` the bytes still to come, no gap of ``STALL`` s."""
    check_size(info, layout)
    total = info.bytes
    part, have = await asyncio.to_thread(_part, into, offer.fingerprint, total)
    progress.total, progress.bytes, progress.started = total, have, time.monotonic()
    progress.deadline_s = deadline_for(total - have)
    if have < total:
        try:
            async with asyncio.timeout(progress.deadline_s):
                await _fetch(offer, info, layout, part, have, progress, http)
        except TimeoutError:
            raise SnapshotRefused(
                f"it sent {progress.bytes} of {total} bytes in {progress.deadline_s:.0f} s "
                f"(a download must go at {MIN_RATE // 1024} KiB/s at least)"
            ) from None
    if await asyncio.to_thread(file_sha256, part) != info.sha256:
        await asyncio.to_thread(part.unlink, missing_ok=True)
        raise SnapshotRefused("its snapshot does not hash to what it said")
    return part


async def _fetch(
    offer: Offer,
    info: DonorInfo,
    layout: SnapshotLayout,
    part: Path,
    have: int,
    progress: Progress,
    http: aiohttp.ClientSession,
) -> None:
    total = info.bytes
    url = donor_url(offer) / "snapshot" / offer.fingerprint
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        async with asyncio.timeout(INFO_TIMEOUT):
            resp = await http.get(url, headers=headers, allow_redirects=False)
    except TimeoutError:
        raise SnapshotRefused(f"it did not answer within {INFO_TIMEOUT:g} s") from None
    async with resp:
        if resp.status == 404:
            raise SnapshotMoved("it has moved on from the snapshot it described")
        if resp.status not in (200, 206):
            raise SnapshotRefused(f"it answered HTTP {resp.status} for its snapshot")
        if resp.headers.get("X-Content-SHA256") != info.sha256:
            raise SnapshotRefused("it sent another file than it described")
        start = _start_of(resp, have, total)
        exact = None
        if start:  # the part on disk begins with the header's length
            first = await asyncio.to_thread(_head, part)
            exact = layout.size_for_header(first, info.version_vector)
        if exact is not None and exact != total:
            raise SnapshotRefused(f"its file is {exact} bytes long, not the {total} it said")
        written = start
        progress.bytes = written
        with part.open("r+b" if start else "wb") as fh:
            fh.seek(start)
            fh.truncate()
            head = b""
            while True:
                try:
                    async with asyncio.timeout(STALL):
                        chunk = await resp.content.readany()
                except TimeoutError:
                    raise SnapshotRefused(
                        f"it sent no byte for {STALL:g} s ({written} of {total})"
                    ) from None
                if not chunk:
                    break
                if written + len(chunk) > total:  # never written: refused first
                    raise SnapshotRefused(f"it sends more than the {total} bytes it described")
                if exact is None:  # start is 0: the first bytes are the header's length
                    head += chunk[: HEADER_LENGTH_BYTES - len(head)]
                    if len(head) == HEADER_LENGTH_BYTES:
                        exact = layout.size_for_header(head, info.version_vector)
                        if exact != total:
                            raise SnapshotRefused(
                                f"its file is {exact} bytes long, not the {total} it said"
                            )
                # as it comes, so that a restart resumes from here
                await asyncio.to_thread(fh.write, chunk)
                written += len(chunk)
                progress.bytes = written
            await asyncio.to_thread(_finish, fh)
    if written != total:
        raise SnapshotRefused(f"it sent {written} of the {total} bytes it described")


def _start_of(resp: aiohttp.ClientResponse, have: int, total: int) -> int:
    """Where the body starts in the file: 0 for a whole file (200), else the range's start,
    which must be where the partial file ends (206)."""
    length = resp.content_length
    if resp.status == 200:
        if length is not None and length != total:
            raise SnapshotRefused(f"it sends {length} bytes, not the {total} it described")
        return 0
    got = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
    if got is None or int(got[1]) != have or got[3] not in ("*", str(total)):
        raise SnapshotRefused(f"it sent another range than the bytes from {have} on")
    if length is not None and have + length != total:
        raise SnapshotRefused(f"it sends {length} bytes from {have}; the file is {total}")
    return have


def _finish(fh: Any) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def _head(part: Path) -> bytes:
    with part.open("rb") as fh:
        return fh.read(HEADER_LENGTH_BYTES)


def _part(into: Path, fingerprint: str, total: int) -> tuple[Path, int]:
    """The partial download of this snapshot and its size (resumed unless it is longer than
    the file: then it starts over); whatever else lies in ``into`` goes."""
    into.mkdir(parents=True, exist_ok=True)
    part = into / f"{fingerprint}.part"
    for old in into.iterdir():
        if old != part:
            _remove(old)
    have = part.stat().st_size if part.exists() else 0
    if have > total or 0 < have < HEADER_LENGTH_BYTES:
        part.unlink()
        have = 0
    return part, have


def sweep(into: Path, *, keep_part: bool) -> int:
    """Delete what lies in ``incoming/``: everything, or everything but the partial download
    of one snapshot (``<64 hex digits>.part``, the newest), which the next join may resume.
    Returns how many entries went."""
    if not into.is_dir():
        return 0
    entries = sorted(into.iterdir(), key=_mtime, reverse=True)
    kept = False
    gone = 0
    for entry in entries:
        resumable = (
            entry.suffix == ".part" and len(entry.stem) == 64 and bool(_HEX.fullmatch(entry.stem))
        )
        if keep_part and not kept and resumable and entry.is_file():
            kept = True
            continue
        _remove(entry)
        gone += 1
    return gone


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            _remove(child)
        path.rmdir()
    else:
        path.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
