"""The msgpack codec for frames, with strict validation and signature checks.

Wire form of a frame (docs/PROTOCOL.md §7), a msgpack array of seven elements:

    [version: int = 1, run_id: bin(8), node: str, first_seq: uint, clock: uint,
     qs: bin(1..4096), signature: bin(64) | nil]

The signature is Ed25519 over ``SIGN_DOMAIN || canonical msgpack of the first six elements``.
``decode_frame`` accepts bytes from anyone: everything that is not a valid frame of this run,
correctly signed when the run lists keys, raises a ``ProtocolError`` whose ``reason`` names the
problem. It never raises anything else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack

from .errors import DecodeError, ProtocolError, SignatureError, WrongRunError
from .records import FRAME_VERSION, MAX_FRAME_RECORDS, Frame
from .signing import NodeKey, verify

SIGN_DOMAIN = b"seedswarm/frame/v1"
MAX_FRAME_BYTES = MAX_FRAME_RECORDS + 256
MAX_MESSAGE_BYTES = 1 << 20


def _no_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack extension type {code} is not allowed", reason="bad_type")


def unpack_strict(data: bytes, *, max_bytes: int) -> Any:
    """Unpack one msgpack value from untrusted bytes, translating every failure to DecodeError."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(data).__name__}", reason="bad_type")
    if len(data) > max_bytes:
        raise DecodeError(f"message of {len(data)} bytes exceeds {max_bytes}", reason="oversized")
    if not data:
        raise DecodeError("empty message", reason="truncated")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=_no_ext,
            max_str_len=max_bytes,
            max_bin_len=max_bytes,
            max_array_len=max_bytes,
            max_map_len=max_bytes,
            max_ext_len=0,
        )
    except ProtocolError:
        raise
    except msgpack.ExtraData as exc:
        raise DecodeError("trailing bytes after the message", reason="malformed") from exc
    except (ValueError, msgpack.UnpackException) as exc:
        reason = "truncated" if "incomplete" in str(exc).lower() else "malformed"
        raise DecodeError(f"not valid msgpack: {exc}", reason=reason) from exc
    except Exception as exc:  # msgpack raises assorted types on hostile input
        raise DecodeError(f"not valid msgpack: {type(exc).__name__}", reason="malformed") from exc


def _header(frame: Frame) -> list[Any]:
    return [FRAME_VERSION, frame.run_id, frame.node, frame.first_seq, frame.clock, frame.qs]


def signing_bytes(frame: Frame) -> bytes:
    """What a node signs: the domain tag and the canonical encoding of the unsigned frame."""
    packed: bytes = msgpack.packb(_header(frame), use_bin_type=True)
    return SIGN_DOMAIN + packed


def sign_frame(frame: Frame, key: NodeKey) -> Frame:
    return Frame(
        frame.run_id,
        frame.node,
        frame.first_seq,
        frame.clock,
        frame.qs,
        key.sign(signing_bytes(frame)),
    )


def encode_frame(frame: Frame) -> bytes:
    packed: bytes = msgpack.packb([*_header(frame), frame.signature], use_bin_type=True)
    return packed


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodeError(
            f"{what} must be an integer, got {type(value).__name__}", reason="bad_type"
        )
    return value


def decode_frame(
    data: bytes, *, run_id: bytes, keys: Mapping[str, bytes] | None, verify: bool = True
) -> Frame:
    """Decode and check one frame of run ``run_id``.

    ``keys`` maps node ids to Ed25519 public keys; ``None`` means the run is in open mode,
    where frames carry no signature. ``verify=False`` skips the signature check: only for
    frames this node checked before it stored them (its own log).
    """
    value = unpack_strict(data, max_bytes=MAX_FRAME_BYTES)
    return frame_from_value(value, run_id=run_id, keys=keys if verify else _UNCHECKED)


_UNCHECKED: Mapping[str, bytes] = {}  # sentinel: decode the signature field, do not check it


def frame_from_value(value: Any, *, run_id: bytes, keys: Mapping[str, bytes] | None) -> Frame:
    if not isinstance(value, list):
        raise DecodeError(
            f"a frame is a msgpack array, got {type(value).__name__}", reason="bad_type"
        )
    if len(value) != 7:
        raise DecodeError(f"a frame has 7 elements, got {len(value)}", reason="malformed")
    version, rid, node, first_seq, clock, qs, signature = value
    if _int(version, "version") != FRAME_VERSION:
        raise DecodeError(f"frame version {version} is not supported", reason="bad_version")
    if not isinstance(rid, bytes):
        raise DecodeError("run id must be bytes", reason="bad_type")
    if not isinstance(qs, bytes):
        raise DecodeError("record bytes must be a msgpack bin", reason="bad_type")
    if signature is not None and not isinstance(signature, bytes):
        raise DecodeError("signature must be bytes or nil", reason="bad_type")
    frame = Frame(rid, node, _int(first_seq, "first seq"), _int(clock, "clock"), qs, signature)
    if rid != run_id:
        raise WrongRunError(f"frame of run {rid.hex()} is not for run {run_id.hex()}")
    if keys is not _UNCHECKED:
        check_signature(frame, keys)
    return frame


def check_signature(frame: Frame, keys: Mapping[str, bytes] | None) -> None:
    if keys is None:
        if frame.signature is not None:
            raise SignatureError("a signed frame in an open run", reason="bad_signature")
        return
    public = keys.get(frame.node)
    if public is None:
        raise SignatureError(
            f"node {frame.node} may not write in this run", reason="unknown_signer"
        )
    if frame.signature is None:
        raise SignatureError("an unsigned frame in a signed run", reason="unsigned")
    if not verify(public, signing_bytes(frame), frame.signature):
        raise SignatureError(
            f"invalid signature on a frame of {frame.node}", reason="bad_signature"
        )
