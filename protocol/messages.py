"""Control messages beside the frames: presence, want, and the version-vector exchange.

Each is a msgpack array ``[2, kind, run_id, fields...]`` (codec.py), signed in a signed run, and
names neither its sender nor its addressee: the topic does (``presence/<node>``,
``sync/<to>/<from>``). All are small and of constant size except ``Vv``, which is sent only to a
node that asks for it.

``Presence`` (kind ``p``) is a node's retained heartbeat: whether it is alive, how many records
it wrote itself (``own``), a digest of everything it holds — which records, and their bytes
(vv.held_digest) — and how many (not the vector itself: that would cost O(N) bytes in every
heartbeat of every node), where its
status endpoint is, its progress, and the snapshot it can serve. Every count in it is a lower
bound of the truth, so a stale or lost presence costs a useless or a late request at most.

``Want`` (``w``) asks a peer for ``count`` records of ``node`` from ``first``; the answer is a
bundle of the stored frames that cover the range, byte for byte as received. ``VvRequest``
(``q``) asks a peer for its whole version vector, answered by ``Vv`` (``v``), which gives each
node's next seq and the content digest of its records: what a node does when a peer's digest
differs and the peer holds at least as many records as it does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .codec import Keys, decode_message, encode_message
from .errors import DecodeError, WrongRunError
from .ids import check_node_id
from .records import MAX_FRAME_RECORDS, SEQ_LIMIT
from .signing import NodeKey

MAX_WANT = MAX_FRAME_RECORDS  # records one want may ask for
MAX_VV_NODES = 16_384  # entries in one Vv answer (about 1 MB at most, with 32-byte names)
MAX_HTTP = 256
DIGEST_BYTES = 8
FINGERPRINT_BYTES = 32
CONTENT_BYTES = 16  # a node's records' content digest (protocol/log.py)


@dataclass(frozen=True, slots=True)
class SnapshotAdvert:
    """A snapshot a node can serve: the digest of its version vector, its weights' hash."""

    vv_digest: bytes  # 8 bytes
    fingerprint: bytes  # 32 bytes
    records: int


@dataclass(frozen=True, slots=True)
class Presence:
    node: str
    run_id: bytes
    alive: bool
    own: int = 0  # records this node wrote (its next own seq), all durable
    held_digest: bytes = b"\0" * DIGEST_BYTES  # vv.held_digest: which records, and their bytes
    held_total: int = 0  # records it holds
    steps: int = 0  # own steps taken
    loss: float | None = None  # mean training loss of its recent steps
    http: str = ""
    snapshot: SnapshotAdvert | None = None
    relay: bool = False  # a relay: it forwards everyone's frames and presence in bundles


@dataclass(frozen=True, slots=True)
class Want:
    requester: str
    run_id: bytes
    node: str
    first: int
    count: int


@dataclass(frozen=True, slots=True)
class VvRequest:
    requester: str
    run_id: bytes


@dataclass(frozen=True, slots=True)
class Vv:
    """A node's whole version vector, and the content digest of each node's records it holds
    (docs/PROTOCOL.md §7-8), so a peer can tell which node's bytes differ."""

    sender: str
    run_id: bytes
    held: Mapping[str, int] = field(default_factory=dict)
    content: Mapping[str, bytes] = field(default_factory=dict)  # node -> 16 bytes


Control = Presence | Want | VvRequest | Vv


def encode_presence(p: Presence, key: NodeKey | None = None) -> bytes:
    snap = p.snapshot
    fields: list[Any] = [
        p.alive,
        p.own,
        p.held_digest,
        p.held_total,
        p.steps,
        None if p.loss is None else float(p.loss),
        p.http,
        None if snap is None else [snap.vv_digest, snap.fingerprint, snap.records],
        p.relay,
    ]
    return encode_message("p", p.run_id, fields, sender=p.node, key=key)


def encode_want(w: Want, key: NodeKey | None = None) -> bytes:
    return encode_message("w", w.run_id, [w.node, w.first, w.count], sender=w.requester, key=key)


def encode_vv_request(r: VvRequest, key: NodeKey | None = None) -> bytes:
    return encode_message("q", r.run_id, [], sender=r.requester, key=key)


def encode_vv(v: Vv, key: NodeKey | None = None) -> bytes:
    body = {n: [s, v.content[n]] for n, s in v.held.items() if s}
    return encode_message("v", v.run_id, [body], sender=v.sender, key=key)


def decode_control(data: bytes, *, sender: str, run_id: bytes, keys: Keys) -> Control:
    """A control message from ``sender`` (the node the topic names) in run ``run_id``."""
    kind, rid, fields = decode_message(data, sender=sender, run_id=run_id, keys=keys)
    if rid != run_id:
        raise WrongRunError(
            f"a message of run {rid.hex()} is not for run {run_id.hex()}", run_id=rid
        )
    parse = _PARSERS.get(kind)
    if parse is None:
        raise DecodeError(f"unknown message kind {kind[:8]!r}", reason="malformed")
    return parse(sender, rid, fields)


def _uint(value: Any, what: str, limit: int = SEQ_LIMIT) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodeError(f"{what} must be an integer", reason="bad_type")
    if not 0 <= value <= limit:
        raise DecodeError(f"{what} out of range", reason="bad_range")
    return value


def _arity(fields: list[Any], n: int, kind: str) -> None:
    if len(fields) != n:
        raise DecodeError(f"a {kind} has {n} fields after the run id", reason="malformed")


def _bytes(value: Any, n: int, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise DecodeError(f"{what} must be bytes", reason="bad_type")
    if len(value) != n:
        raise DecodeError(f"{what} must be {n} bytes", reason="bad_range")
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise DecodeError(f"{what} must be a boolean", reason="bad_type")
    return value


def _presence(sender: str, rid: bytes, f: list[Any]) -> Presence:
    # fields in their order on the wire, each its type first, then its range
    # (docs/PROTOCOL.md §9: of two bad fields, the first one gives the reason)
    _arity(f, 9, "presence")
    alive = _bool(f[0], "presence alive")
    own = _uint(f[1], "presence own")
    digest = _bytes(f[2], DIGEST_BYTES, "presence held digest")
    total = _uint(f[3], "presence total", 2**64)
    steps = _uint(f[4], "presence steps", 2**64)
    loss, http, snap = f[5], f[6], f[7]
    if loss is not None and (isinstance(loss, bool) or not isinstance(loss, int | float)):
        raise DecodeError("presence loss must be a number or nil", reason="bad_type")
    if not isinstance(http, str):
        raise DecodeError("presence http must be text", reason="bad_type")
    if len(http) > MAX_HTTP:
        raise DecodeError(f"presence http is longer than {MAX_HTTP}", reason="bad_range")
    advert = None
    if snap is not None:
        if not isinstance(snap, list) or len(snap) != 3:
            raise DecodeError(
                "a snapshot advert is [digest, fingerprint, records]", reason="bad_type"
            )
        advert = SnapshotAdvert(
            _bytes(snap[0], DIGEST_BYTES, "snapshot digest"),
            _bytes(snap[1], FINGERPRINT_BYTES, "snapshot fingerprint"),
            _uint(snap[2], "snapshot records", 2**64),
        )
    relay = _bool(f[8], "presence relay")
    return Presence(
        node=sender,
        run_id=rid,
        alive=alive,
        own=own,
        held_digest=digest,
        held_total=total,
        steps=steps,
        loss=None if loss is None or not math.isfinite(loss) else float(loss),
        http=http,
        snapshot=advert,
        relay=relay,
    )


def _want(sender: str, rid: bytes, f: list[Any]) -> Want:
    _arity(f, 3, "want")
    node = check_node_id(f[0])
    first = _uint(f[1], "want first", SEQ_LIMIT - 1)
    count = _uint(f[2], "want count", MAX_WANT)
    if count < 1:
        raise DecodeError("a want asks for at least one record", reason="bad_range")
    if first + count > SEQ_LIMIT:
        # the range must lie in the seq space: its end is a seq too (a store key, an int64)
        raise DecodeError("a want asks for records beyond the last seq", reason="bad_range")
    return Want(sender, rid, node, first, count)


def _vv_request(sender: str, rid: bytes, f: list[Any]) -> VvRequest:
    _arity(f, 0, "vv request")
    return VvRequest(sender, rid)


def _vv(sender: str, rid: bytes, f: list[Any]) -> Vv:
    _arity(f, 1, "vv")
    (raw,) = f
    if not isinstance(raw, dict):
        raise DecodeError("a vv is a map of node to [next seq, content]", reason="bad_type")
    if len(raw) > MAX_VV_NODES:
        raise DecodeError(f"a vv lists more than {MAX_VV_NODES} nodes", reason="oversized")
    held: dict[str, int] = {}
    content: dict[str, bytes] = {}
    for k, v in raw.items():  # in wire order: each entry's node, then its value's fields
        node = check_node_id(k)
        if not isinstance(v, list):
            raise DecodeError("a vv entry is [next seq, content]", reason="bad_type")
        if len(v) != 2:
            raise DecodeError("a vv entry is [next seq, content]", reason="malformed")
        seq = _uint(v[0], "vv entry")
        digest = _bytes(v[1], CONTENT_BYTES, "vv entry content")
        if seq:
            held[node], content[node] = seq, digest
    return Vv(sender, rid, held, content)


_PARSERS: dict[str, Callable[[str, bytes, list[Any]], Control]] = {
    "p": _presence,
    "w": _want,
    "q": _vv_request,
    "v": _vv,
}
