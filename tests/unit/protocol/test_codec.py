"""The binary codec (v2): frames and bundles round-trip, byte for byte as documented, and every
bad input is a ProtocolError with a reason. Control messages are in test_messages.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from seedswarm.protocol import varint
from seedswarm.protocol.codec import (
    BUNDLE_V2,
    FRAME_DOMAIN,
    FRAME_V2,
    MAX_FRAME_BYTES,
    MAX_MESSAGE_BYTES,
    decode_bundle,
    decode_frame,
    encode_bundle,
    encode_frame,
    sign_frame,
)
from seedswarm.protocol.errors import DecodeError, ProtocolError, SignatureError
from seedswarm.protocol.records import (
    CLOCK_LIMIT,
    MAX_FRAME_RECORDS,
    SEQ_LIMIT,
    SIGNATURE_BYTES,
    Frame,
)
from seedswarm.protocol.signing import verify

from .strategies import KEY_A, KEY_B, OTHER_RUN, RUN, frames, node_ids

KEYS: Mapping[str, bytes] = {"alice": KEY_A.public_bytes(), "bob": KEY_B.public_bytes()}

# docs/PROTOCOL.md §9: the reasons a decoder may give for bytes it refuses
REASONS = {
    "oversized", "truncated", "malformed", "bad_type", "bad_range", "bad_version",
    "wrong_run", "unsigned", "bad_signature", "unknown_signer",
}  # fmt: skip


def frame(**changes: Any) -> Frame:
    fields: dict[str, Any] = {
        "run_id": RUN,
        "node": "alice",
        "first_seq": 300,
        "clock": 3,
        "qs": bytes([1, 0xFF, 127, 0x81, 0]),
    }
    fields.update(changes)
    return Frame(**fields)


def signed(f: Frame | None = None) -> Frame:
    return sign_frame(frame() if f is None else f, KEY_A)


def frame_reason(
    data: bytes,
    keys: Mapping[str, bytes] | None = None,
    *,
    node: str = "alice",
    run_id: bytes = RUN,
    check: bool = True,
) -> str:
    with pytest.raises(ProtocolError) as info:
        decode_frame(data, run_id=run_id, node=node, keys=keys, verify=check)
    assert info.value.reason in REASONS
    return info.value.reason


def signed_bytes(run_id: bytes, node: str, unsigned_frame: bytes) -> bytes:
    """What an author signs, written out from the spec (not from the codec)."""
    name = node.encode()
    return FRAME_DOMAIN + run_id + bytes([len(name)]) + name + unsigned_frame


# == frames: valid ones =============================================================================


@settings(max_examples=150, deadline=None)
@given(f=frames(run_id=RUN))
@example(f=frame(qs=bytes(MAX_FRAME_RECORDS), node="n" * 32, first_seq=SEQ_LIMIT - 4096))
@example(f=frame(qs=b"\x7f\x81", first_seq=SEQ_LIMIT - 2, clock=CLOCK_LIMIT - 1))
@example(f=frame(qs=b"\x01", first_seq=0, clock=0, node="a"))
def test_open_frames_round_trip(f: Frame) -> None:
    data = encode_frame(f)
    header = 1 + len(varint.encode(f.first_seq)) + len(varint.encode(f.clock))
    assert len(data) == header + f.count <= MAX_FRAME_BYTES
    assert data[0] == FRAME_V2
    assert data[header:] == f.qs
    assert decode_frame(data, run_id=RUN, node=f.node, keys=None) == f
    assert decode_frame(data, run_id=RUN, node=f.node, keys=None, verify=False) == f


@settings(max_examples=60, deadline=None)
@given(f=frames(run_id=RUN))
@example(f=frame(qs=bytes(MAX_FRAME_RECORDS), node="n" * 32, first_seq=SEQ_LIMIT - 4096))
@example(f=frame(qs=b"\x01" * MAX_FRAME_RECORDS, first_seq=SEQ_LIMIT - 4096, clock=2**63 - 1))
def test_signed_frames_round_trip(f: Frame) -> None:
    keys = {f.node: KEY_A.public_bytes()}
    s = sign_frame(f, KEY_A)
    assert s.signature is not None
    data = encode_frame(s)
    assert len(data) <= MAX_FRAME_BYTES
    # the signed frame is the open frame and 64 bytes of signature over the documented bytes
    assert data == encode_frame(f) + s.signature
    assert verify(KEY_A.public_bytes(), signed_bytes(RUN, f.node, encode_frame(f)), s.signature)
    assert decode_frame(data, run_id=RUN, node=f.node, keys=keys) == s
    assert decode_frame(data, run_id=RUN, node=f.node, keys=keys, verify=False) == s


def test_the_largest_frame_is_max_frame_bytes() -> None:
    f = signed(frame(qs=b"\x01" * MAX_FRAME_RECORDS, first_seq=SEQ_LIMIT - 4096, clock=2**63 - 1))
    assert len(encode_frame(f)) == MAX_FRAME_BYTES


WIRE_CASES: list[tuple[int, int, bytes, str]] = [
    (300, 3, bytes([1, 0xFF, 127, 0x81, 0]), "02 ac02 03 01ff7f8100"),
    (0, 0, b"\x01", "02 00 00 01"),
    (127, 128, b"\x7f", "02 7f 8001 7f"),
    (16384, 16383, b"\x00\x00", "02 808001 ff7f 0000"),
    (SEQ_LIMIT - 1, CLOCK_LIMIT - 1, b"\x81", "02 ffffffffffffffff7f ffffffffffffffff7f 81"),
]


@pytest.mark.parametrize(("first_seq", "clock", "qs", "wire"), WIRE_CASES)
def test_wire_form_written_out(first_seq: int, clock: int, qs: bytes, wire: str) -> None:
    f = frame(first_seq=first_seq, clock=clock, qs=qs)
    data = bytes.fromhex(wire)
    assert encode_frame(f) == data
    assert decode_frame(data, run_id=RUN, node="alice", keys=None) == f


def test_signed_wire_form_written_out() -> None:
    body = bytes.fromhex("02ac020301ff7f8100")
    sig = KEY_A.sign(b"seedswarm/frame/v2" + RUN + b"\x05alice" + body)
    assert encode_frame(signed()) == body + sig
    assert decode_frame(body + sig, run_id=RUN, node="alice", keys=KEYS) == frame(signature=sig)


def test_frame_values() -> None:
    f = frame(first_seq=10)
    assert f.count == 5
    assert f.end_seq == 15
    assert [r.q for r in f.records()] == [1, -1, 127, -127, 0]
    assert [(r.node, r.seq, r.q, r.clock) for r in f.records()] == [
        ("alice", 10, 1, 3), ("alice", 11, -1, 3), ("alice", 12, 127, 3),
        ("alice", 13, -127, 3), ("alice", 14, 0, 3),
    ]  # fmt: skip


def test_bytearray_and_memoryview_accepted() -> None:
    data = encode_frame(signed())
    for view in (bytearray(data), memoryview(data)):
        out = decode_frame(view, run_id=RUN, node="alice", keys=KEYS)  # type: ignore[arg-type]
        assert out == signed()


def test_signature_is_deterministic_and_relay_safe() -> None:
    # Ed25519 is deterministic, and a relayed frame is the same bytes.
    assert signed() == signed()
    data = encode_frame(signed())
    assert encode_frame(decode_frame(data, run_id=RUN, node="alice", keys=KEYS)) == data


def test_an_open_run_reads_the_whole_tail_as_records() -> None:
    data = encode_frame(frame()) + b"\x01" * SIGNATURE_BYTES
    out = decode_frame(data, run_id=RUN, node="alice", keys=None)
    assert out.signature is None
    assert out.count == 5 + SIGNATURE_BYTES


# == frames: anything else is a ProtocolError =======================================================


def _decode_any(data: bytes, keys: Mapping[str, bytes] | None, *, check: bool = True) -> None:
    try:
        out = decode_frame(data, run_id=RUN, node="alice", keys=keys, verify=check)
    except ProtocolError as exc:
        reason = exc.reason
    else:
        assert isinstance(out, Frame)
        assert (out.run_id, out.node) == (RUN, "alice")
        assert encode_frame(out) == data  # one frame, one byte string
        if keys is not None and check:
            pytest.fail("random bytes cannot carry a valid signature")
        return
    assert reason in REASONS


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300) | st.binary(max_size=100).map(lambda b: b"\x02" + b))
@example(data=b"")
@example(data=b"\x02")
@example(data=b"\x02" + b"\x80" * 20)  # a varint that never ends
@example(data=b"\x02\x00\x00" + b"\x01" * (MAX_FRAME_BYTES - 3))
@example(data=b"\x02" * (MAX_FRAME_BYTES + 1))
@example(data=b"\x97\x01\xc4\x08" + RUN)  # the start of a v1 msgpack frame
def test_any_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    _decode_any(data, None)
    _decode_any(data, KEYS)
    _decode_any(data, KEYS, check=False)


@settings(max_examples=150, deadline=None)
@given(f=frames(run_id=RUN, node="alice"), where=st.integers(min_value=0), mask=st.integers(1, 255))
def test_flipped_byte_of_an_open_frame_never_escapes(f: Frame, where: int, mask: int) -> None:
    data = bytearray(encode_frame(f))
    data[where % len(data)] ^= mask
    _decode_any(bytes(data), None)


def test_every_truncation_of_a_signed_frame_is_rejected() -> None:
    data = encode_frame(signed())
    for n in range(len(data)):
        frame_reason(data[:n], KEYS)


def test_truncated_open_headers() -> None:
    data = encode_frame(frame())  # 02 ac02 03 | five records
    for n in range(5):
        assert frame_reason(data[:n]) == "truncated"


def test_every_flipped_byte_of_a_signed_frame_is_rejected() -> None:
    data = encode_frame(signed())
    for i in range(len(data)):
        for mask in (0x01, 0x10, 0x80, 0xFF):
            bad = bytearray(data)
            bad[i] ^= mask
            frame_reason(bytes(bad), KEYS)


OPEN_CASES: list[tuple[str, str, str]] = [
    ("", "truncated", "empty"),
    ("02", "truncated", "no first seq"),
    ("02 ac", "truncated", "first seq cut"),
    ("02 0a", "truncated", "no clock"),
    ("02 0a 83", "truncated", "clock cut"),
    ("02 0a 03", "truncated", "no records"),
    ("01 0a 03 01", "bad_version", "v1"),
    ("03 0a 03 01", "bad_version", "a bundle is not a frame"),
    ("00 0a 03 01", "bad_version", "zero"),
    ("ff 0a 03 01", "bad_version", "ff"),
    ("97 01 c4", "bad_version", "a v1 msgpack frame"),
    ("02 0a 03 80", "bad_range", "-128"),
    ("02 0a 03 01 02 80 03", "bad_range", "-128 among others"),
    ("02 8000 03 01", "malformed", "first seq 0 in two bytes"),
    ("02 ac82 00 03 01", "malformed", "first seq 300 in three bytes"),
    ("02 0a 8300 01", "malformed", "clock 3 in two bytes"),
    ("02 80808080808080808080 00 01", "malformed", "a varint longer than 10 bytes"),
    ("02 8080808080808080 80 01 00 01", "bad_range", "first seq 2**63"),
    ("02 ffffffffffffffff 7f 00 0101", "bad_range", "two records from 2**63 - 1"),
    ("02 ffffffffffffffffff 01 00 01", "bad_range", "first seq 2**64 - 1"),
    ("02 80808080808080808002 00 01", "bad_range", "first seq 2**64"),
    ("02 00 8080808080808080 80 01 01", "bad_range", "clock 2**63"),
    ("02 00 ffffffffffffffffff 01 01", "bad_range", "clock 2**64 - 1"),
]


@pytest.mark.parametrize(
    ("wire", "reason"), [c[:2] for c in OPEN_CASES], ids=[c[2] for c in OPEN_CASES]
)
def test_bad_open_frame(wire: str, reason: str) -> None:
    data = bytes.fromhex(wire)
    assert frame_reason(data) == reason
    if reason != "truncated":  # the same bytes with a valid signature: still refused
        sig = KEY_A.sign(signed_bytes(RUN, "alice", data))
        assert frame_reason(data + sig, KEYS) == reason


def test_the_last_seq_of_the_seq_space() -> None:
    head = bytes.fromhex("02 feffffffffffffff 7f 00")  # first seq 2**63 - 2
    assert decode_frame(head + b"\x01\x01", run_id=RUN, node="a", keys=None).end_seq == SEQ_LIMIT
    assert frame_reason(head + b"\x01\x01\x01", node="a") == "bad_range"  # seq 2**63


def test_too_many_records() -> None:
    head = bytes.fromhex("02 00 00")
    full = head + b"\x01" * MAX_FRAME_RECORDS
    assert decode_frame(full, run_id=RUN, node="alice", keys=None).count == MAX_FRAME_RECORDS
    assert frame_reason(full + b"\x01") == "oversized"
    body = full + b"\x01"
    sig = KEY_A.sign(signed_bytes(RUN, "alice", body))
    assert frame_reason(body + sig, KEYS) == "oversized"


def test_oversized() -> None:
    assert frame_reason(b"\x02" + b"\x01" * MAX_FRAME_BYTES) == "oversized"
    assert frame_reason(b"\x02" + b"\x01" * MAX_FRAME_BYTES, KEYS) == "oversized"
    assert frame_reason(b"\x00" * (MAX_FRAME_BYTES + 1)) == "oversized"  # before the version


def test_node_and_run_come_from_the_caller() -> None:
    data = encode_frame(frame())
    assert decode_frame(data, run_id=OTHER_RUN, node="bob", keys=None) == frame(
        run_id=OTHER_RUN, node="bob"
    )
    for node, reason in [("", "bad_range"), ("a/b", "bad_range"), ("x" * 33, "bad_range")]:
        assert frame_reason(data, node=node) == reason


# == frames: signatures =============================================================================


def test_unsigned_frame_in_a_signed_run() -> None:
    with pytest.raises(SignatureError) as info:
        decode_frame(encode_frame(frame()), run_id=RUN, node="alice", keys=KEYS)
    assert info.value.reason == "unsigned"
    # verify=False reads a stored frame, and stored frames of a signed run carry their signature
    assert frame_reason(encode_frame(frame()), KEYS, check=False) == "unsigned"


def test_a_long_unsigned_frame_in_a_signed_run() -> None:
    # Nothing marks a signature but its place, so the last 64 records are taken for one.
    data = encode_frame(frame(qs=b"\x01" * 100))
    assert frame_reason(data, KEYS) == "bad_signature"


def test_signature_of_another_key() -> None:
    forged = sign_frame(frame(), KEY_B)  # bob's key, a frame found as alice's
    assert frame_reason(encode_frame(forged), KEYS) == "bad_signature"


def test_unknown_signer() -> None:
    data = encode_frame(sign_frame(frame(node="mallory"), KEY_A))
    assert frame_reason(data, KEYS, node="mallory") == "unknown_signer"
    assert frame_reason(encode_frame(signed()), {}) == "unknown_signer"
    with pytest.raises(SignatureError):
        decode_frame(data, run_id=RUN, node="mallory", keys=KEYS)


def test_bad_public_key_in_the_key_map() -> None:
    assert frame_reason(encode_frame(signed()), {"alice": b"\x00" * 5}) == "bad_signature"
    assert frame_reason(encode_frame(signed()), {"alice": b"\x00" * 32}) == "bad_signature"


def test_the_signature_binds_the_node() -> None:
    data = encode_frame(signed())
    assert frame_reason(data, KEYS, node="bob") == "bad_signature"
    # even where both names have the same key
    same = {"alice": KEY_A.public_bytes(), "alicf": KEY_A.public_bytes()}
    assert frame_reason(data, same, node="alicf") == "bad_signature"
    assert decode_frame(data, run_id=RUN, node="alice", keys=same) == signed()


def test_the_signature_binds_the_run() -> None:
    data = encode_frame(signed())
    assert frame_reason(data, KEYS, run_id=OTHER_RUN) == "bad_signature"
    assert decode_frame(data, run_id=OTHER_RUN, node="alice", keys=KEYS, verify=False) == (
        frame(run_id=OTHER_RUN, signature=signed().signature)
    )


@pytest.mark.parametrize(
    "change",
    [{"first_seq": 301}, {"clock": 4}, {"qs": bytes([1, 0xFF, 127, 0x81, 1])}],
    ids=["first_seq", "clock", "qs"],
)
def test_tampered_header_or_bytes(change: dict[str, Any]) -> None:
    tampered = frame(**change, signature=signed().signature)
    assert frame_reason(encode_frame(tampered), KEYS) == "bad_signature"


def test_tampered_signature() -> None:
    sig = signed().signature
    assert sig is not None
    for i in (0, 31, 32, 63):
        bad = bytearray(sig)
        bad[i] ^= 0x01
        assert frame_reason(encode_frame(frame(signature=bytes(bad))), KEYS) == "bad_signature"


def test_verify_false_skips_only_the_signature_check() -> None:
    for data, node in [
        (encode_frame(sign_frame(frame(), KEY_B)), "alice"),  # a wrong key
        (encode_frame(frame(signature=b"\x00" * 64)), "alice"),  # a signature of zeros
        (encode_frame(sign_frame(frame(node="mallory"), KEY_A)), "mallory"),  # not in the keys
    ]:
        out = decode_frame(data, run_id=RUN, node=node, keys=KEYS, verify=False)
        assert encode_frame(out) == data
    # everything else is still checked
    body = bytes.fromhex("02 0a 03 0180")
    sig = KEY_A.sign(signed_bytes(RUN, "alice", body))
    assert frame_reason(body + sig, KEYS, check=False) == "bad_range"
    assert frame_reason(b"\x01" + body[1:] + sig, KEYS, check=False) == "bad_version"
    assert frame_reason(bytes.fromhex("02 8000 03 01") + sig, KEYS, check=False) == "malformed"
    assert frame_reason(encode_frame(frame()), KEYS, check=False) == "unsigned"


# == bundles ========================================================================================

frame_bodies = st.binary(max_size=200)
bundle_entries = st.lists(st.tuples(node_ids, frame_bodies), min_size=1, max_size=30)


@settings(max_examples=150, deadline=None)
@given(entries=bundle_entries)
@example(entries=[("n" * 32, b"")])
@example(entries=[("a", b"\x01" * MAX_FRAME_BYTES)] * 3)
def test_bundles_round_trip(entries: list[tuple[str, bytes]]) -> None:
    data = encode_bundle(entries)
    assert data[0] == BUNDLE_V2
    assert decode_bundle(data) == entries
    assert decode_bundle(bytearray(data)) == entries  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None)
@given(fs=st.lists(frames(run_id=RUN), min_size=1, max_size=8))
def test_a_bundle_carries_signed_frames_byte_for_byte(fs: list[Frame]) -> None:
    bodies = [encode_frame(sign_frame(f, KEY_A)) for f in fs]
    entries = decode_bundle(encode_bundle([(f.node, b) for f, b in zip(fs, bodies, strict=True)]))
    assert [body for _, body in entries] == bodies
    for (node, body), f in zip(entries, fs, strict=True):
        keys = {node: KEY_A.public_bytes()}
        assert decode_frame(body, run_id=RUN, node=node, keys=keys) == sign_frame(f, KEY_A)


def test_bundle_wire_form_written_out() -> None:
    a = bytes.fromhex("02 00 00 01")
    b = bytes.fromhex("02 ac02 03") + b"\x01" * 200
    data = encode_bundle([("a", a), ("bob", b)])
    assert data == bytes.fromhex("03 01") + b"a" + b"\x04" + a + b"\x03bob" + b"\xcc\x01" + b
    assert decode_bundle(data) == [("a", a), ("bob", b)]


def test_every_truncation_of_a_bundle_is_rejected_or_a_shorter_bundle() -> None:
    entries = [(f.node, encode_frame(signed(f))) for f in (frame(), frame(node="bob"))]
    data = encode_bundle(entries)
    boundary = len(encode_bundle(entries[:1]))
    for n in range(len(data)):
        if n == boundary:  # cut between two entries: a bundle of the first
            assert decode_bundle(data[:n]) == entries[:1]
            continue
        with pytest.raises(DecodeError) as info:
            decode_bundle(data[:n])
        assert info.value.reason == "truncated"


def test_an_empty_frame_is_an_entry_the_frame_decoder_refuses() -> None:
    ((node, body),) = decode_bundle(bytes.fromhex("03 01") + b"a" + b"\x00")
    assert (node, body) == ("a", b"")
    assert frame_reason(body, node=node) == "truncated"


ENTRY = b"\x01a\x04" + bytes.fromhex("02 00 00 01")  # one good entry

BUNDLE_CASES: list[tuple[bytes, str, str]] = [
    (b"", "truncated", "empty"),
    (b"\x03", "truncated", "no entries"),
    (b"\x02" + ENTRY, "bad_version", "a frame is not a bundle"),
    (b"\x04" + ENTRY, "bad_version", "v4"),
    (b"\x04", "bad_version", "v4 without entries"),
    (b"\x00" + ENTRY, "bad_version", "zero"),
    (b"\x03\x00\x00", "bad_range", "empty node id"),
    (b"\x03\x21" + b"a" * 33 + b"\x00", "bad_range", "node id of 33 bytes"),
    (b"\x03\xff" + b"a" * 255 + b"\x00", "bad_range", "node id of 255 bytes"),
    (b"\x03\x03a/b\x00", "bad_range", "node id with a slash"),
    (b"\x03\x03a+b\x00", "bad_range", "node id with a plus"),
    (b"\x03\x02\xff\xfe\x00", "bad_range", "node id not UTF-8"),
    (b"\x03\x02\xc3\xa9\x00", "bad_range", "node id not ASCII"),
    (b"\x03\x05ali", "truncated", "node id cut"),
    (b"\x03\x01a", "truncated", "no length"),
    (b"\x03\x01a\x80", "truncated", "length cut"),
    (b"\x03\x01a\x05\x02\x00", "truncated", "frame cut"),
    (b"\x03" + ENTRY + b"\x01b\x05\x02", "truncated", "second entry cut"),
    (b"\x03" + ENTRY + b"\x01", "truncated", "second entry's node id cut"),
    (b"\x03\x01a\x84\x00" + bytes.fromhex("02 00 00 01"), "malformed", "length not minimal"),
    (b"\x03\x01a" + b"\x80" * 10 + b"\x00", "malformed", "length longer than 10 bytes"),
    (b"\x03\x01a" + varint.encode(MAX_FRAME_BYTES + 1), "oversized", "entry over a frame"),
    (b"\x03\x01a" + b"\xff" * 9 + b"\x7f", "bad_range", "length over 2**64"),
    (b"\x03" + ENTRY * (MAX_MESSAGE_BYTES // len(ENTRY) + 1), "oversized", "over 1 MiB"),
]


@pytest.mark.parametrize(
    ("data", "reason"), [c[:2] for c in BUNDLE_CASES], ids=[c[2] for c in BUNDLE_CASES]
)
def test_bad_bundle(data: bytes, reason: str) -> None:
    assert bundle_reason(data) == reason


def bundle_reason(data: bytes) -> str:
    with pytest.raises(DecodeError) as info:
        decode_bundle(data)
    return info.value.reason


def test_the_largest_bundle() -> None:
    entry = b"\x01a\x00"  # the smallest entry
    n, rest = divmod(MAX_MESSAGE_BYTES - 1, len(entry))
    assert rest == 0
    data = b"\x03" + entry * n
    assert len(data) == MAX_MESSAGE_BYTES
    assert len(decode_bundle(data)) == n
    assert bundle_reason(data + entry) == "oversized"


def _bundle_any(data: bytes) -> None:
    try:
        entries = decode_bundle(data)
    except ProtocolError as exc:
        reason = exc.reason
    else:
        assert entries
        assert encode_bundle(entries) == data  # one bundle, one byte string
        return
    assert reason in REASONS


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200) | st.binary(max_size=200).map(lambda b: b"\x03" + b))
@example(data=b"\x03\x01a\x00" * 1000)
def test_any_bytes_are_a_bundle_or_a_protocol_error(data: bytes) -> None:
    _bundle_any(data)


@settings(max_examples=150, deadline=None)
@given(entries=bundle_entries, where=st.integers(min_value=0), mask=st.integers(1, 255))
def test_flipped_byte_of_a_bundle_never_escapes(
    entries: list[tuple[str, bytes]], where: int, mask: int
) -> None:
    data = bytearray(encode_bundle(entries))
    data[where % len(data)] ^= mask
    _bundle_any(bytes(data))
