"""Control messages beside the frames: presence, want, and the version-vector exchange.

Each is a msgpack array ``[2, kind, run_id, fields...]`` (codec.py), signed in a signed run, and
names neither its sender nor its addressee: the topic does (``presence/<node>``,
``sync/<to>/<from>``). All are small and of constant size except ``Vv``, which is sent only to a
node that asks for it.

``Presence`` (kind ``p``) is a node's retained heartbeat: whether it is alive, how many records
it wrote itself (``own``), a digest and the size of the version vector of everything it holds
(not the vector itself: that would cost O(N) bytes in every heartbeat of every node), where its
status endpoint is, its progress, and the snapshot it can serve. Every count in it is a lower
bound of the truth, so a stale or lost presence costs a useless or a late request at most.

``Want`` (``w``) asks a peer for ``count`` records of ``node`` from ``first``; the answer is a
bundle of the stored frames that cover the range, byte for byte as received. ``VvRequest``
(``q``) asks a peer for its whole version vector, answered by ``Vv`` (``v``): what a node does
when a peer's digest differs and the peer holds more than it does.
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
MAX_VV_NODES = 16_384  # entries in one Vv answer (about 700 kB at most)
MAX_HTTP = 256
DIGEST_BYTES = 8
FINGERPRINT_BYTES = 32


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
    held_digest: bytes = b"\0" * DIGEST_BYTES  # vv digest of what it holds
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
    sender: str
    run_id: bytes
    held: Mapping[str, int] = field(default_factory=dict)


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
    return encode_message("v", v.run_id, [dict(v.held)], sender=v.sender, key=key)


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


def _presence(sender: str, rid: bytes, f: list[Any]) -> Presence:
    _arity(f, 9, "presence")
    alive, own, digest, total, steps, loss, http, snap, relay = f
    if not isinstance(alive, bool) or not isinstance(relay, bool):
        raise DecodeError("presence alive and relay must be booleans", reason="bad_type")
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
    return Presence(
        node=sender,
        run_id=rid,
        alive=alive,
        own=_uint(own, "presence own"),
        held_digest=_bytes(digest, DIGEST_BYTES, "presence held digest"),
        held_total=_uint(total, "presence total", 2**64),
        steps=_uint(steps, "presence steps", 2**64),
        loss=None if loss is None or not math.isfinite(loss) else float(loss),
        http=http,
        snapshot=advert,
        relay=relay,
    )


def _want(sender: str, rid: bytes, f: list[Any]) -> Want:
    _arity(f, 3, "want")
    node, first, count = f
    first = _uint(first, "want first", SEQ_LIMIT - 1)
    count = _uint(count, "want count", MAX_WANT)
    if count < 1:
        raise DecodeError("a want asks for at least one record", reason="bad_range")
    if first + count > SEQ_LIMIT:
        # the range must lie in the seq space: its end is a seq too (a store key, an int64)
        raise DecodeError("a want asks for records beyond the last seq", reason="bad_range")
    return Want(sender, rid, check_node_id(node), first, count)


def _vv_request(sender: str, rid: bytes, f: list[Any]) -> VvRequest:
    _arity(f, 0, "vv request")
    return VvRequest(sender, rid)


def _vv(sender: str, rid: bytes, f: list[Any]) -> Vv:
    _arity(f, 1, "vv")
    (raw,) = f
    if not isinstance(raw, dict):
        raise DecodeError("a vv is a map of node to next seq", reason="bad_type")
    if len(raw) > MAX_VV_NODES:
        raise DecodeError(f"a vv lists more than {MAX_VV_NODES} nodes", reason="oversized")
    held = {check_node_id(k): _uint(v, "vv entry") for k, v in raw.items()}
    return Vv(sender, rid, {k: v for k, v in held.items() if v})


_PARSERS: dict[str, Callable[[str, bytes, list[Any]], Control]] = {
    "p": _presence,
    "w": _want,
    "q": _vv_request,
    "v": _vv,
}
