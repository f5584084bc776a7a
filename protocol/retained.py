"""The retained manifest: how a node that knows only a run id gets the run's manifest.

docs/PROTOCOL.md §7 and §9: every node (and relay) of a run publishes the manifest's canonical
msgpack bytes, retained at QoS 1, on

    <prefix>/<run name>/manifest/<run id, 16 lowercase hex digits>

each time it connects. The bytes are self-certifying: the run id is their hash, so whoever
published them, a joiner that subscribes to ``<prefix>/+/manifest/<run id>`` checks them by
hashing them, and needs no signature. Nothing else is ever published there.

A joiner reads what arrives with ``read_retained_manifest``; a message that fails a check is
dropped (counted under the sender ``invalid``: the topic names no node) and the joiner waits
for the next one (the next node that connects publishes the manifest again).
"""

from __future__ import annotations

import re

from . import canonical
from .codec import MAX_MESSAGE_BYTES, unpack_strict
from .errors import DecodeError, ManifestError, WrongRunError
from .ids import check_run_name
from .manifest import RUN_DOMAIN, Manifest
from .topics import Subscription

MANIFEST = "manifest"  # the topic level
MAX_MANIFEST_BYTES = MAX_MESSAGE_BYTES
_RUN_ID_HEX = re.compile(r"[0-9a-f]{16}")


def manifest_payload(manifest: Manifest) -> bytes:
    """What a node publishes, retained, on ``Topics.manifest(run_id)``: the manifest's
    canonical msgpack bytes (the bytes its run id is the hash of)."""
    payload = manifest.canonical_bytes()
    if len(payload) > MAX_MANIFEST_BYTES:
        raise ManifestError(
            f"the manifest is {len(payload)} bytes in canonical msgpack; a run's manifest may "
            f"be at most {MAX_MANIFEST_BYTES} (1 MiB)"
        )
    return payload


def manifest_subscription(prefix: str, run_id: bytes) -> Subscription:
    """What a joiner that knows only the run id (not the run's name) subscribes to."""
    if len(run_id) != 8:
        raise ValueError("a run id is 8 bytes")
    return Subscription(f"{prefix}/+/{MANIFEST}/{run_id.hex()}", 1)


def decode_manifest_bytes(payload: bytes) -> Manifest:
    """The manifest whose canonical msgpack bytes are ``payload`` (the retained message, the
    header of a log export); the caller has checked their hash where it knows the run id.

    Raises ``DecodeError`` (``oversized``, ``truncated``, ``malformed``, ``bad_type``) or
    ``ManifestError`` (a map that is no manifest this node can take part in).
    """
    if len(payload) > MAX_MANIFEST_BYTES:
        raise DecodeError(
            f"a manifest of {len(payload)} bytes exceeds {MAX_MANIFEST_BYTES}", reason="oversized"
        )
    value = unpack_strict(bytes(payload), max_bytes=MAX_MANIFEST_BYTES)
    if not isinstance(value, dict):
        raise DecodeError("a manifest is a msgpack map", reason="bad_type")
    manifest = Manifest.from_dict(value)
    if manifest.canonical_bytes() != payload:
        # the run id is the hash of the canonical bytes: other bytes with a matching hash
        # would be a 64-bit collision, not a manifest
        raise DecodeError("the manifest is not in canonical msgpack", reason="malformed")
    return manifest


def read_retained_manifest(
    topic: str, payload: bytes, *, prefix: str, run_id: bytes
) -> Manifest | None:
    """The manifest of run ``run_id`` from a message on ``topic``, checked; None when the
    payload is empty (a retained message being cleared: not a manifest, not a fault).

    Raises ``DecodeError`` with the reason to count (``bad_topic``, ``oversized``,
    ``truncated``, ``malformed``, ``bad_type``), ``WrongRunError`` (the bytes are not the
    manifest of ``run_id``), or ``ManifestError``: the bytes are the run's manifest (their
    hash is the run id) but this node cannot take part in the run (a newer format, say).
    """
    head = prefix + "/"
    levels = topic[len(head) :].split("/") if topic.startswith(head) else []
    if len(levels) != 3 or levels[1] != MANIFEST or not _RUN_ID_HEX.fullmatch(levels[2]):
        raise DecodeError(f"topic {topic[:120]!r} is not a manifest topic", reason="bad_topic")
    try:
        name = check_run_name(levels[0])
    except DecodeError as exc:
        raise DecodeError(f"topic {topic[:120]!r}: {exc}", reason="bad_topic") from exc
    if levels[2] != run_id.hex():
        raise DecodeError(f"topic {topic[:120]!r} is not of run {run_id.hex()}", reason="bad_topic")
    if not payload:
        return None
    if len(payload) > MAX_MANIFEST_BYTES:
        raise DecodeError(
            f"a manifest of {len(payload)} bytes exceeds {MAX_MANIFEST_BYTES}", reason="oversized"
        )
    got = canonical.sha256(RUN_DOMAIN, bytes(payload))[:8]
    if got != run_id:
        raise WrongRunError(
            f"the retained bytes hash to run {got.hex()}, not {run_id.hex()}", run_id=got
        )
    manifest = decode_manifest_bytes(payload)
    if manifest.name != name:
        raise DecodeError(
            f"the manifest of run {manifest.name!r} was published under the run name {name!r}",
            reason="bad_topic",
        )
    return manifest
