"""The frame codec: valid frames round-trip, and every bad input is a ProtocolError with a reason."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from seedswarm.protocol.codec import (
    MAX_FRAME_BYTES,
    SIGN_DOMAIN,
    decode_frame,
    encode_frame,
    frame_from_value,
    sign_frame,
    signing_bytes,
    unpack_strict,
)
from seedswarm.protocol.errors import (
    DecodeError,
    ProtocolError,
    SignatureError,
    WrongRunError,
)
from seedswarm.protocol.records import MAX_FRAME_RECORDS, SEQ_LIMIT, Frame

from .strategies import KEY_A, KEY_B, OTHER_RUN, RUN, frames, msgpack_values

KEYS: Mapping[str, bytes] = {"alice": KEY_A.public_bytes(), "bob": KEY_B.public_bytes()}


def frame(**changes: Any) -> Frame:
    fields: dict[str, Any] = {
        "run_id": RUN,
        "node": "alice",
        "first_seq": 10,
        "clock": 3,
        "qs": bytes([1, 0xFF, 127, 0x81, 0]),
    }
    fields.update(changes)
    return Frame(**fields)


def signed(f: Frame | None = None) -> Frame:
    return sign_frame(frame() if f is None else f, KEY_A)


def reason_of(data: bytes, keys: Mapping[str, bytes] | None = None) -> str:
    with pytest.raises(ProtocolError) as info:
        decode_frame(data, run_id=RUN, keys=keys)
    return info.value.reason


# --- valid frames ---------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(f=frames(run_id=RUN))
@example(f=frame(qs=bytes(MAX_FRAME_RECORDS), node="n" * 32, first_seq=SEQ_LIMIT - 4096))
@example(f=frame(clock=2**63 - 1, qs=b"\x7f\x81"))
def test_open_frames_round_trip(f: Frame) -> None:
    data = encode_frame(f)
    assert len(data) <= MAX_FRAME_BYTES
    assert decode_frame(data, run_id=RUN, keys=None) == f


@settings(max_examples=60, deadline=None)
@given(f=frames(run_id=RUN, node="alice"))
@example(f=frame(qs=bytes(MAX_FRAME_RECORDS), first_seq=SEQ_LIMIT - 4096, clock=2**63 - 1))
def test_signed_frames_round_trip(f: Frame) -> None:
    s = sign_frame(f, KEY_A)
    assert s.signature is not None
    data = encode_frame(s)
    assert len(data) <= MAX_FRAME_BYTES
    assert decode_frame(data, run_id=RUN, keys=KEYS) == s
    # The signature covers the domain tag and the unsigned header.
    assert signing_bytes(s) == signing_bytes(f)
    assert signing_bytes(f).startswith(SIGN_DOMAIN)


def test_wire_form_is_the_documented_array() -> None:
    f = signed()
    assert msgpack.unpackb(encode_frame(f), raw=False) == [
        1, RUN, "alice", 10, 3, f.qs, f.signature,
    ]  # fmt: skip
    assert msgpack.unpackb(encode_frame(frame()), raw=False)[6] is None


def test_frame_values() -> None:
    f = frame()
    assert f.count == 5
    assert f.end_seq == 15
    assert f.q_values() == [1, -1, 127, -127, 0]
    assert [(r.seq, r.q, r.clock) for r in f.records()] == [
        (10, 1, 3), (11, -1, 3), (12, 127, 3), (13, -127, 3), (14, 0, 3),
    ]  # fmt: skip


# --- the catch-all property -----------------------------------------------------------------


def _decode_any(data: bytes, keys: Mapping[str, bytes] | None) -> None:
    try:
        out = decode_frame(data, run_id=RUN, keys=keys)
    except ProtocolError as exc:
        reason = exc.reason
    else:
        assert isinstance(out, Frame)
        assert out.run_id == RUN
        return
    assert isinstance(reason, str)
    assert reason


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=300))
@example(data=b"")
@example(data=b"\xc1")  # the one byte msgpack never uses
@example(data=b"\xc7\x01\x05x")  # an extension type
@example(data=b"\xdd\xff\xff\xff\xff")  # an array that claims 4 billion elements
@example(data=b"\x91" * 5000)  # deep nesting, also oversized
def test_any_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    _decode_any(data, None)
    _decode_any(data, KEYS)


@settings(max_examples=150, deadline=None)
@given(value=msgpack_values)
def test_any_msgpack_value_decodes_or_raises_protocol_error(value: Any) -> None:
    data = msgpack.packb(value, use_bin_type=True)
    _decode_any(data, None)
    _decode_any(data, KEYS)
    # The daemon also validates values it unpacked itself.
    for keys in (None, KEYS):
        try:
            frame_from_value(value, run_id=RUN, keys=keys)
        except ProtocolError:
            continue
        assert keys is None  # a valid signed frame cannot come out of random values


@settings(max_examples=100, deadline=None)
@given(value=msgpack_values)
def test_garbage_in_a_frame_field_raises_protocol_error(value: Any) -> None:
    good = msgpack.unpackb(encode_frame(signed()), raw=False)
    for i in range(7):
        bad = list(good)
        bad[i] = value
        if bad == good:
            continue
        with pytest.raises(ProtocolError):
            decode_frame(msgpack.packb(bad, use_bin_type=True), run_id=RUN, keys=KEYS)


# --- specific bad inputs, with their reasons ------------------------------------------------


@pytest.mark.parametrize("keys", [None, KEYS])
def test_truncated_frames(keys: Mapping[str, bytes] | None) -> None:
    data = encode_frame(signed() if keys else frame())
    for n in range(len(data)):
        assert reason_of(data[:n], keys) == "truncated"


@pytest.mark.parametrize("keys", [None, KEYS])
def test_trailing_bytes(keys: Mapping[str, bytes] | None) -> None:
    data = encode_frame(signed() if keys else frame())
    assert reason_of(data + b"\x00", keys) == "malformed"


def test_every_flipped_byte_of_a_signed_frame_is_rejected() -> None:
    data = encode_frame(signed())
    for i in range(len(data)):
        for mask in (0x01, 0x10, 0x80, 0xFF):
            bad = bytearray(data)
            bad[i] ^= mask
            with pytest.raises(ProtocolError):
                decode_frame(bytes(bad), run_id=RUN, keys=KEYS)


@settings(max_examples=200, deadline=None)
@given(f=frames(run_id=RUN), where=st.integers(min_value=0), mask=st.integers(1, 255))
def test_flipped_byte_of_an_open_frame_never_escapes(f: Frame, where: int, mask: int) -> None:
    data = bytearray(encode_frame(f))
    data[where % len(data)] ^= mask
    _decode_any(bytes(data), None)


def test_oversized() -> None:
    assert reason_of(b"\x00" * (MAX_FRAME_BYTES + 1)) == "oversized"
    big = msgpack.packb([1, RUN, "alice", 0, 0, b"\x01" * 8192, None], use_bin_type=True)
    assert reason_of(big) == "oversized"
    with pytest.raises(DecodeError) as info:
        unpack_strict(b"\x90" * 11, max_bytes=10)
    assert info.value.reason == "oversized"


def test_not_bytes() -> None:
    with pytest.raises(DecodeError) as info:
        decode_frame("a string", run_id=RUN, keys=None)  # type: ignore[arg-type]
    assert info.value.reason == "bad_type"


def test_bytearray_and_memoryview_accepted() -> None:
    data = encode_frame(frame())
    assert decode_frame(bytearray(data), run_id=RUN, keys=None) == frame()  # type: ignore[arg-type]
    assert decode_frame(memoryview(data), run_id=RUN, keys=None) == frame()  # type: ignore[arg-type]


def _packed(*fields: Any) -> bytes:
    out: bytes = msgpack.packb(list(fields), use_bin_type=True)
    return out


GOOD = [1, RUN, "alice", 10, 3, b"\x01\x02", None]

FIELD_CASES: list[tuple[int, Any, str]] = [
    (0, 2, "bad_version"),
    (0, 0, "bad_version"),
    (0, -1, "bad_version"),
    (0, "1", "bad_type"),
    (0, 1.0, "bad_type"),
    (0, True, "bad_type"),
    (0, None, "bad_type"),
    (1, OTHER_RUN, "wrong_run"),
    (1, b"\x00" * 7, "bad_range"),
    (1, b"\x00" * 9, "bad_range"),
    (1, RUN.hex(), "bad_type"),
    (1, list(RUN), "bad_type"),
    (2, "", "bad_range"),
    (2, "a/b", "bad_range"),
    (2, "#", "bad_range"),
    (2, "x" * 33, "bad_range"),
    (2, "é", "bad_range"),
    (2, b"alice", "bad_type"),
    (2, 5, "bad_type"),
    (3, -1, "bad_range"),
    (3, 2**63, "bad_range"),
    (3, 2**63 - 1, "bad_range"),  # 2 records from here would overflow the seq space
    (3, 2**64 - 1, "bad_range"),
    (3, -(2**63), "bad_range"),
    (3, 1.5, "bad_type"),
    (3, False, "bad_type"),
    (3, "10", "bad_type"),
    (4, -1, "bad_range"),
    (4, 2**63, "bad_range"),
    (4, 3.0, "bad_type"),
    (4, None, "bad_type"),
    (5, b"", "bad_range"),
    (5, b"\x01" * (MAX_FRAME_RECORDS + 1), "bad_range"),
    (5, b"\x01\x80", "bad_range"),  # -128
    (5, "\x01\x02", "bad_type"),
    (5, [1, 2], "bad_type"),
    (6, b"\x00" * 64, "bad_signature"),  # signed frame in an open run
    (6, b"\x00" * 63, "bad_signature"),
    (6, b"", "bad_signature"),
    (6, "sig", "bad_type"),
    (6, False, "bad_type"),
]


@pytest.mark.parametrize(("index", "value", "reason"), FIELD_CASES)
def test_bad_field(index: int, value: Any, reason: str) -> None:
    fields = list(GOOD)
    fields[index] = value
    assert reason_of(_packed(*fields)) == reason


@pytest.mark.parametrize("n", [0, 6, 8])
def test_wrong_element_count(n: int) -> None:
    assert reason_of(_packed(*[*GOOD, None, None][:n])) == "malformed"


@pytest.mark.parametrize("value", [{"v": 1}, 1, "frame", b"frame", None, 1.5])
def test_not_an_array(value: Any) -> None:
    assert reason_of(msgpack.packb(value, use_bin_type=True)) == "bad_type"


@pytest.mark.parametrize(
    ("ext", "reason"),
    [
        (b"\xc7\x00\x05", "bad_type"),  # empty ext 5: refused by the ext hook
        (b"\xd4\x05x", "malformed"),  # ext 5 with data: refused by max_ext_len=0
        (b"\xd6\xff\x00\x00\x00\x00", "malformed"),  # a msgpack timestamp (ext -1)
        (b"\xc7\x00\xff", "malformed"),
    ],
)
def test_extension_types_rejected(ext: bytes, reason: str) -> None:
    head = msgpack.packb([1, RUN, "alice", 0, 0], use_bin_type=True)
    data = b"\x97" + head[1:] + ext + b"\xc0"  # the same array with 7 elements, ext as qs
    assert reason_of(data) == reason


def test_non_string_map_keys_rejected() -> None:
    assert reason_of(msgpack.packb({1: 2})) == "malformed"


def test_wrong_run_is_a_wrong_run_error() -> None:
    with pytest.raises(WrongRunError):
        decode_frame(encode_frame(frame(run_id=OTHER_RUN)), run_id=RUN, keys=None)


# --- signatures -----------------------------------------------------------------------------


def test_unsigned_frame_in_signed_run() -> None:
    with pytest.raises(SignatureError) as info:
        decode_frame(encode_frame(frame()), run_id=RUN, keys=KEYS)
    assert info.value.reason == "unsigned"


def test_signed_frame_in_open_run() -> None:
    with pytest.raises(SignatureError) as info:
        decode_frame(encode_frame(signed()), run_id=RUN, keys=None)
    assert info.value.reason == "bad_signature"


def test_unknown_signer() -> None:
    mallory = sign_frame(frame(node="mallory"), KEY_A)
    assert reason_of(encode_frame(mallory), KEYS) == "unknown_signer"
    assert reason_of(encode_frame(frame(node="mallory")), KEYS) == "unknown_signer"
    assert reason_of(encode_frame(signed()), {}) == "unknown_signer"


def test_signature_of_another_node() -> None:
    # bob's key signing a frame that claims to be alice's
    forged = sign_frame(frame(), KEY_B)
    assert reason_of(encode_frame(forged), KEYS) == "bad_signature"


@pytest.mark.parametrize(
    "change",
    [
        {"first_seq": 11},
        {"clock": 4},
        {"qs": bytes([1, 0xFF, 127, 0x81, 1])},
        {"run_id": OTHER_RUN},
    ],
)
def test_tampered_header_or_bytes(change: dict[str, Any]) -> None:
    s = signed()
    tampered = frame(**change, signature=s.signature)
    reason = reason_of(encode_frame(tampered), KEYS)
    assert reason == ("wrong_run" if "run_id" in change else "bad_signature")


def test_tampered_signature() -> None:
    s = signed()
    assert s.signature is not None
    for i in (0, 31, 32, 63):
        sig = bytearray(s.signature)
        sig[i] ^= 0x01
        assert reason_of(encode_frame(frame(signature=bytes(sig))), KEYS) == "bad_signature"


def test_bad_public_key_in_the_key_map() -> None:
    assert reason_of(encode_frame(signed()), {"alice": b"\x00" * 5}) == "bad_signature"


def test_signature_is_deterministic_and_relay_safe() -> None:
    # Ed25519 is deterministic, and a relayed frame is the same bytes.
    assert signed() == signed()
    data = encode_frame(signed())
    assert encode_frame(decode_frame(data, run_id=RUN, keys=KEYS)) == data
