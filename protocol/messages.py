"""Presence and sync messages: msgpack maps beside the frames.

``Presence`` is a node's retained heartbeat on ``presence/<node>``: what it holds (a version
vector of its contiguous durable records), whether it is alive, where its status endpoint is,
and its manifest, so that a joining node can check that it is in the same run. A will message
with ``alive = False`` marks a node that vanished.

``Want`` asks a peer (on ``sync/<peer>``) for ``count`` records of ``node`` from ``first``. The
peer answers with the stored, originally signed frames that cover the range, published on
``sync/<requester>``. Frames are arrays and messages are maps, so one topic can carry both.

Presence is advisory: a lie in it costs a useless request at most, because every record that
arrives is checked on its own (signature, run, equivocation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import canonical
from .errors import DecodeError, WrongRunError
from .ids import check_node_id
from .records import SEQ_LIMIT

MESSAGE_VERSION = 1
MAX_VV_NODES = 4096
MAX_WANT = 1 << 16


@dataclass(frozen=True, slots=True)
class Presence:
    node: str
    run_id: bytes
    alive: bool
    held: Mapping[str, int] = field(default_factory=dict)
    http: str = ""
    steps: int = 0
    loss: float | None = None
    manifest: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Want:
    requester: str
    run_id: bytes
    node: str
    first: int
    count: int


def encode_presence(p: Presence) -> bytes:
    return canonical.packb(
        {
            "v": MESSAGE_VERSION,
            "t": "presence",
            "node": p.node,
            "run": p.run_id,
            "alive": p.alive,
            "held": dict(p.held),
            "http": p.http,
            "steps": p.steps,
            "loss": p.loss,
            "manifest": p.manifest,
        }
    )


def encode_want(w: Want) -> bytes:
    return canonical.packb(
        {
            "v": MESSAGE_VERSION,
            "t": "want",
            "from": w.requester,
            "run": w.run_id,
            "node": w.node,
            "first": w.first,
            "count": w.count,
        }
    )


def _field(d: Mapping[str, Any], key: str, types: Any, what: str) -> Any:
    if key not in d:
        raise DecodeError(f"{what} lacks the field {key!r}", reason="malformed")
    value = d[key]
    if types is int and isinstance(value, bool):
        raise DecodeError(f"{what} field {key!r} has the wrong type", reason="bad_type")
    if not isinstance(value, types):
        raise DecodeError(f"{what} field {key!r} has the wrong type", reason="bad_type")
    return value


def message_from_value(value: Any, *, run_id: bytes) -> Presence | Want:
    """Validate a decoded msgpack map as a presence or want message of run ``run_id``."""
    if not isinstance(value, dict):
        raise DecodeError("a message is a msgpack map", reason="bad_type")
    if _field(value, "v", int, "message") != MESSAGE_VERSION:
        raise DecodeError(f"message version {value['v']} is not supported", reason="bad_version")
    kind = _field(value, "t", str, "message")
    rid = _field(value, "run", bytes, kind)
    if kind == "presence":
        msg: Presence | Want = _presence(value)
    elif kind == "want":
        msg = _want(value)
    else:
        raise DecodeError(f"unknown message type {kind[:20]!r}", reason="malformed")
    if rid != run_id:
        raise WrongRunError(f"{kind} of run {rid.hex()[:16]} is not for run {run_id.hex()}")
    return msg


def _presence(d: Mapping[str, Any]) -> Presence:
    node = check_node_id(_field(d, "node", str, "presence"))
    held_raw = _field(d, "held", dict, "presence")
    if len(held_raw) > MAX_VV_NODES:
        raise DecodeError("presence lists too many nodes", reason="oversized")
    held: dict[str, int] = {}
    for k, v in held_raw.items():
        check_node_id(k)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= SEQ_LIMIT:
            raise DecodeError("version vector entries are seq numbers", reason="bad_range")
        held[k] = v
    loss = d.get("loss")
    if loss is not None and (isinstance(loss, bool) or not isinstance(loss, int | float)):
        raise DecodeError("presence loss must be a number or nil", reason="bad_type")
    if loss is not None and not math.isfinite(loss):
        loss = None
    manifest = d.get("manifest")
    if manifest is not None and not isinstance(manifest, dict):
        raise DecodeError("presence manifest must be a map or nil", reason="bad_type")
    steps = _field(d, "steps", int, "presence")
    if steps < 0:
        raise DecodeError("presence steps must not be negative", reason="bad_range")
    return Presence(
        node=node,
        run_id=d["run"],
        alive=_field(d, "alive", bool, "presence"),
        held=held,
        http=_field(d, "http", str, "presence")[:512],
        steps=steps,
        loss=None if loss is None else float(loss),
        manifest=manifest,
    )


def _want(d: Mapping[str, Any]) -> Want:
    first = _field(d, "first", int, "want")
    count = _field(d, "count", int, "want")
    if not 0 <= first < SEQ_LIMIT or not 1 <= count <= MAX_WANT:
        raise DecodeError("want range out of bounds", reason="bad_range")
    return Want(
        requester=check_node_id(_field(d, "from", str, "want")),
        run_id=d["run"],
        node=check_node_id(_field(d, "node", str, "want")),
        first=first,
        count=count,
    )
