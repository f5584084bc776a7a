"""The wire codec: binary frames and bundles, msgpack control messages, signatures.

Wire forms (docs/PROTOCOL.md §7):

    frame   = 0x02 || varint(first_seq) || varint(clock) || qs || [signature(64)]
    bundle  = 0x03 || ( u8(len(node)) || node || varint(len(frame)) || frame )+
    message = msgpack array [2, kind, run_id, ...] || [signature(64)]

Nothing on the wire repeats what the topic (or the bundle entry) already says: a frame names
neither its node nor its run, and a control message not its sender. Signatures still cover
them: an Ed25519 signature (signed runs only, always the last 64 bytes) is over

    domain || run_id || u8(len(node)) || node || the payload without its signature

where ``node`` is the frame's author, or the control message's sender, and ``domain`` says
what is signed (``seedswarm/frame/v2``, ``seedswarm/msg/v2``).

Every ``decode_*`` accepts bytes from anyone: what is not valid raises a ``ProtocolError``
whose ``reason`` names the problem, and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack

from . import varint
from .errors import DecodeError, ProtocolError, SignatureError
from .ids import NODE_ID_MAX, check_node_id
from .records import CLOCK_LIMIT, MAX_FRAME_RECORDS, SEQ_LIMIT, SIGNATURE_BYTES, Frame
from .signing import NodeKey, verify

FRAME_V2 = 0x02
BUNDLE_V2 = 0x03
MESSAGE_VERSION = 2
FRAME_DOMAIN = b"seedswarm/frame/v2"
MESSAGE_DOMAIN = b"seedswarm/msg/v2"
MAX_FRAME_BYTES = 1 + 9 + 9 + MAX_FRAME_RECORDS + SIGNATURE_BYTES  # varints of < 2**63: 9 bytes
MAX_MESSAGE_BYTES = 1 << 20  # bundles and control messages

Keys = Mapping[str, bytes] | None  # node -> Ed25519 public key; None: an open run


def _no_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack extension type {code} is not allowed", reason="bad_type")


def _no_timestamp(value: Any) -> None:
    # msgpack-python turns the timestamp extension (type -1) into a value instead of calling
    # the ext hook: refuse it wherever it appears, as every other extension type
    if isinstance(value, msgpack.Timestamp):
        raise DecodeError("msgpack extension type -1 is not allowed", reason="bad_type")


def _list(items: list[Any]) -> list[Any]:
    for v in items:
        _no_timestamp(v)
    return items


def _map(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    """A msgpack map: its keys are text (``bad_type``) and distinct (``malformed``), so every
    implementation reads one map the same way (no "last key wins")."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if not isinstance(k, str):
            raise DecodeError(f"a map key must be text, not {type(k).__name__}", reason="bad_type")
        if k in out:
            raise DecodeError(f"a map repeats the key {k[:40]!r}", reason="malformed")
        _no_timestamp(v)
        out[k] = v
    return out


def _unpack_first(data: bytes, *, max_bytes: int) -> tuple[Any, bytes]:
    """The first msgpack value in untrusted ``data`` and the bytes after it.

    Faults are found front to back; the first one gives the reason: a value, length or count
    that runs past the end ``truncated``; a byte msgpack does not use (0xc1), text that is not
    UTF-8, nesting deeper than 1024 arrays and maps, a map that repeats a key ``malformed``; an extension type (timestamps included) or a map key that is not text
    ``bad_type`` (docs/PROTOCOL.md §9).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(data).__name__}", reason="bad_type")
    if len(data) > max_bytes:
        raise DecodeError(f"message of {len(data)} bytes exceeds {max_bytes}", reason="oversized")
    if not data:
        raise DecodeError("empty message", reason="truncated")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=False,  # _map checks the keys (one reason for every non-text key)
            object_pairs_hook=_map,
            list_hook=_list,
            ext_hook=_no_ext,
            max_str_len=max_bytes,
            max_bin_len=max_bytes,
            max_array_len=max_bytes,
            max_map_len=max_bytes,
            max_ext_len=max_bytes,
        )
    except ProtocolError:
        raise
    except msgpack.ExtraData as exc:
        _no_timestamp(exc.unpacked)
        return exc.unpacked, bytes(exc.extra)
    except (ValueError, msgpack.UnpackException) as exc:
        text = str(exc).lower()
        if "timestamp" in text:  # an ext -1 of a length no timestamp has
            raise DecodeError(
                "msgpack extension type -1 is not allowed", reason="bad_type"
            ) from exc
        # a length or count beyond max_bytes is beyond the end of the payload too: truncated
        reason = "truncated" if "incomplete" in text or "exceeds max_" in text else "malformed"
        raise DecodeError(f"not valid msgpack: {exc}", reason=reason) from exc
    except Exception as exc:  # msgpack raises assorted types on hostile input
        raise DecodeError(f"not valid msgpack: {type(exc).__name__}", reason="malformed") from exc
    _no_timestamp(value)
    return value, b""


def unpack_strict(data: bytes, *, max_bytes: int) -> Any:
    """One msgpack value from untrusted bytes and nothing after it, every failure a
    DecodeError (the retained manifest's reader, protocol/retained.py)."""
    value, extra = _unpack_first(data, max_bytes=max_bytes)
    if extra:
        raise DecodeError("trailing bytes after the message", reason="malformed")
    return value


def _signed_bytes(domain: bytes, run_id: bytes, node: str, body: bytes) -> bytes:
    name = node.encode()
    return domain + run_id + bytes([len(name)]) + name + body


def _check(domain: bytes, run_id: bytes, node: str, body: bytes, sig: bytes, keys: Keys) -> None:
    assert keys is not None
    public = keys.get(node)
    if public is None:
        raise SignatureError(f"node {node} may not speak in this run", reason="unknown_signer")
    if not verify(public, _signed_bytes(domain, run_id, node, body), sig):
        raise SignatureError(f"invalid signature in a message of {node}", reason="bad_signature")


def _split_signature(data: bytes, keys: Keys, minimum: int) -> tuple[bytes, bytes | None]:
    if keys is None:
        return data, None
    if len(data) < minimum + SIGNATURE_BYTES:
        raise SignatureError("a signed run: the frame lacks its signature", reason="unsigned")
    return data[:-SIGNATURE_BYTES], data[-SIGNATURE_BYTES:]


# == frames =========================================================================================


def _frame_body(frame: Frame) -> bytes:
    return (
        bytes([FRAME_V2]) + varint.encode(frame.first_seq) + varint.encode(frame.clock) + frame.qs
    )


def sign_frame(frame: Frame, key: NodeKey) -> Frame:
    sig = key.sign(_signed_bytes(FRAME_DOMAIN, frame.run_id, frame.node, _frame_body(frame)))
    return Frame(frame.run_id, frame.node, frame.first_seq, frame.clock, frame.qs, sig)


def encode_frame(frame: Frame) -> bytes:
    return _frame_body(frame) + (frame.signature or b"")


def decode_frame(
    data: bytes, *, run_id: bytes, node: str, keys: Keys, verify: bool = True
) -> Frame:
    """A frame of ``node`` in run ``run_id`` (the node and run come from where it was found).

    ``keys``: the run's public keys, or None in an open run (frames carry no signature there).
    ``verify=False`` skips the signature check: only for frames this node checked before it
    stored them (its own log).
    """
    if len(data) > MAX_FRAME_BYTES:
        raise DecodeError(
            f"a frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}", reason="oversized"
        )
    if not data:
        raise DecodeError("empty frame", reason="truncated")
    if data[0] != FRAME_V2:
        raise DecodeError(f"frame format {data[0]:#04x} is not supported", reason="bad_version")
    body, sig = _split_signature(bytes(data), keys, 4)
    first, pos = varint.decode(body, 1, limit=SEQ_LIMIT)
    clock, pos = varint.decode(body, pos, limit=CLOCK_LIMIT)
    qs = body[pos:]
    if not qs:
        raise DecodeError("a frame carries at least one record", reason="truncated")
    if len(qs) > MAX_FRAME_RECORDS:
        raise DecodeError(
            f"a frame carries at most {MAX_FRAME_RECORDS} records", reason="oversized"
        )
    frame = Frame(run_id, node, first, clock, qs, sig)
    if sig is not None and verify:
        _check(FRAME_DOMAIN, run_id, node, body, sig, keys)
    return frame


# == bundles ========================================================================================


def encode_bundle(entries: list[tuple[str, bytes]]) -> bytes:
    """Frames of any nodes, each as its author sent it: ``[(node, frame bytes), ...]``."""
    out = bytearray([BUNDLE_V2])
    for node, frame in entries:
        name = node.encode()
        out += bytes([len(name)]) + name + varint.encode(len(frame)) + frame
    return bytes(out)


def decode_bundle(data: bytes) -> list[tuple[str, bytes]]:
    """The entries of a bundle; the frames themselves are decoded (and checked) one by one."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise DecodeError(f"a bundle of {len(data)} bytes exceeds 1 MiB", reason="oversized")
    if not data:
        raise DecodeError("an empty bundle", reason="truncated")
    if data[0] != BUNDLE_V2:
        raise DecodeError(f"bundle format {data[0]:#04x} is not supported", reason="bad_version")
    if len(data) < 2:
        raise DecodeError("a bundle without entries", reason="truncated")
    out = []
    pos = 1
    while pos < len(data):
        size = data[pos]
        if not 1 <= size <= NODE_ID_MAX:
            raise DecodeError(f"a node id of {size} bytes in a bundle entry", reason="bad_range")
        if pos + 1 + size > len(data):
            raise DecodeError("a bundle entry's node id runs past the end", reason="truncated")
        try:
            node = check_node_id(bytes(data[pos + 1 : pos + 1 + size]).decode())
        except UnicodeDecodeError as exc:
            raise DecodeError("a node id is not UTF-8", reason="bad_range") from exc
        length, pos = varint.decode(data, pos + 1 + size)
        if length > MAX_FRAME_BYTES:
            raise DecodeError(
                f"a bundle entry of {length} bytes exceeds {MAX_FRAME_BYTES}", reason="oversized"
            )
        if pos + length > len(data):
            raise DecodeError("a bundle entry runs past the end", reason="truncated")
        out.append((node, bytes(data[pos : pos + length])))
        pos += length
    return out


# == control messages ===============================================================================


def encode_message(
    kind: str, run_id: bytes, fields: list[Any], *, sender: str, key: NodeKey | None
) -> bytes:
    body: bytes = msgpack.packb([MESSAGE_VERSION, kind, run_id, *fields], use_bin_type=True)
    if key is None:
        return body
    return body + key.sign(_signed_bytes(MESSAGE_DOMAIN, run_id, sender, body))


def decode_message(
    data: bytes, *, sender: str, run_id: bytes, keys: Keys
) -> tuple[str, bytes, list[Any]]:
    """(kind, run id, fields) of a control message from ``sender`` (the topic's publisher).

    In a signed run the signature is checked against ``sender``, for a message of ``run_id``;
    a message of another run comes back unchecked (its run id tells the caller what it is),
    signed or not: a node whose manifest differs from ours may differ in its keys too.

    The msgpack array delimits itself, so what follows it tells a signed message from an
    unsigned one: nothing, or exactly a signature.
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise DecodeError(f"message of {len(data)} bytes exceeds 1 MiB", reason="oversized")
    data = bytes(data)
    value, sig = _unpack_first(data, max_bytes=MAX_MESSAGE_BYTES)
    if sig and len(sig) != SIGNATURE_BYTES:
        raise DecodeError("trailing bytes after the message", reason="malformed")
    if not isinstance(value, list) or len(value) < 3:
        raise DecodeError("a message is a msgpack array [2, kind, run, ...]", reason="bad_type")
    version, kind, rid, *fields = value
    if isinstance(version, bool) or not isinstance(version, int):
        raise DecodeError("message version must be an integer", reason="bad_type")
    if version != MESSAGE_VERSION:
        raise DecodeError(f"message version {version} is not supported", reason="bad_version")
    if not isinstance(kind, str) or not isinstance(rid, bytes) or len(rid) != 8:
        raise DecodeError("a message names its kind and an 8-byte run id", reason="bad_type")
    if rid != run_id:
        return kind, rid, fields
    if keys is None:
        if sig:
            raise DecodeError("an open run: a message carries no signature", reason="malformed")
    elif not sig:
        raise SignatureError("a signed run: the message lacks its signature", reason="unsigned")
    else:
        _check(MESSAGE_DOMAIN, rid, sender, data[:-SIGNATURE_BYTES], sig, keys)
    return kind, rid, fields
