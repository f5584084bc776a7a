"""Small building blocks: record bytes, frames, varints, canonical msgpack, node keys, names,
errors."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from seedswarm.protocol import canonical, errors, varint
from seedswarm.protocol.ids import check_node_id, check_run_name
from seedswarm.protocol.records import Frame, byte_to_q, q_to_byte
from seedswarm.protocol.signing import NodeKey, verify

from .strategies import KEY_A, RUN

# == record bytes and frames ========================================================================


def test_record_bytes_are_twos_complement() -> None:
    for q in range(-127, 128):
        b = q_to_byte(q)
        assert 0 <= b <= 255
        assert b != 0x80
        assert byte_to_q(b) == q
    assert q_to_byte(-1) == 0xFF
    assert byte_to_q(0x81) == -127
    for q in (-128, 128, 1000):
        with pytest.raises(ValueError, match="out of range"):
            q_to_byte(q)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"run_id": b"short"}, "bad_range"),
        ({"run_id": RUN + b"\x00"}, "bad_range"),
        ({"node": ""}, "bad_range"),
        ({"node": "a+b"}, "bad_range"),
        ({"node": "x" * 33}, "bad_range"),
        ({"node": b"a"}, "bad_type"),
        ({"qs": b""}, "bad_range"),
        ({"qs": b"\x01" * 4097}, "bad_range"),
        ({"qs": b"\x01\x80"}, "bad_range"),
        ({"first_seq": -1}, "bad_range"),
        ({"first_seq": 2**63}, "bad_range"),
        ({"first_seq": 2**63 - 1, "qs": b"\x01\x01"}, "bad_range"),
        ({"clock": -1}, "bad_range"),
        ({"clock": 2**63}, "bad_range"),
        ({"signature": b"\x00" * 65}, "bad_signature"),
        ({"signature": b"\x00" * 63}, "bad_signature"),
        ({"signature": b""}, "bad_signature"),
    ],
)
def test_frame_constructor_validates(changes: dict[str, Any], reason: str) -> None:
    fields: dict[str, Any] = {"run_id": RUN, "node": "a", "first_seq": 0, "clock": 0, "qs": b"\x01"}
    fields.update(changes)
    with pytest.raises(errors.DecodeError) as info:
        Frame(**fields)
    assert info.value.reason == reason


def test_last_seq_may_be_the_last_of_the_seq_space() -> None:
    f = Frame(RUN, "a", 2**63 - 2, 2**63 - 1, b"\x01\x01")
    assert f.end_seq == 2**63
    assert Frame(RUN, "a", 2**63 - 4096, 0, b"\x01" * 4096).end_seq == 2**63


# == varints ========================================================================================

VARINTS: list[tuple[int, str]] = [
    (0, "00"),
    (1, "01"),
    (127, "7f"),
    (128, "8001"),
    (300, "ac02"),
    (16383, "ff7f"),
    (16384, "808001"),
    (2**63 - 1, "ffffffffffffffff7f"),
    (2**63, "80808080808080808001"),
    (2**64 - 1, "ffffffffffffffffff01"),
]


@pytest.mark.parametrize(("value", "wire"), VARINTS)
def test_varint_wire_form(value: int, wire: str) -> None:
    data = bytes.fromhex(wire)
    assert varint.encode(value) == data
    assert varint.decode(data, 0) == (value, len(data))


@settings(max_examples=200, deadline=None)
@given(
    value=st.integers(0, 2**64 - 1) | st.integers(0, 2**14),
    before=st.binary(max_size=4),
    after=st.binary(max_size=4),
)
@example(value=2**64 - 1, before=b"", after=b"")
def test_varint_round_trip(value: int, before: bytes, after: bytes) -> None:
    data = varint.encode(value)
    assert len(data) == max(1, -(-value.bit_length() // 7)) <= varint.MAX_VARINT_BYTES
    assert all(b & 0x80 for b in data[:-1])
    assert not data[-1] & 0x80
    buf = before + data + after
    assert varint.decode(buf, len(before)) == (value, len(before) + len(data))
    assert varint.decode(memoryview(buf), len(before)) == (value, len(before) + len(data))


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=10))
def test_varints_in_a_row(values: list[int]) -> None:
    data = b"".join(varint.encode(v) for v in values)
    pos, out = 0, []
    while pos < len(data):
        v, pos = varint.decode(data, pos)
        out.append(v)
    assert out == values


@settings(max_examples=200, deadline=None)
@given(value=st.integers(0, 2**56), pad=st.integers(1, 3))
@example(value=0, pad=1)
def test_varint_shortest_form_only(value: int, pad: int) -> None:
    """The same value with trailing zero groups is not a varint: one value, one encoding."""
    data = bytearray(varint.encode(value))
    data[-1] |= 0x80
    wide = bytes(data) + b"\x80" * (pad - 1) + b"\x00"
    with pytest.raises(errors.DecodeError) as info:
        varint.decode(wide, 0)
    assert info.value.reason == "malformed"


@settings(max_examples=100, deadline=None)
@given(value=st.integers(128, 2**64 - 1))
def test_every_truncated_varint(value: int) -> None:
    data = varint.encode(value)
    for n in range(len(data)):
        with pytest.raises(errors.DecodeError) as info:
            varint.decode(data[:n], 0)
        assert info.value.reason == "truncated"
        with pytest.raises(errors.DecodeError):
            varint.decode(b"\x01" + data[:n], 1)


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        ("", "truncated"),
        ("80", "truncated"),
        ("ff", "truncated"),
        ("8000", "malformed"),
        ("ff00", "malformed"),
        ("ffffffffffffffffff00", "malformed"),
        ("8080808080808080808000", "malformed"),  # 11 bytes
        ("8080808080808080808001", "malformed"),
        ("ffffffffffffffffffff", "malformed"),  # 10 bytes and no end
        ("80808080808080808002", "bad_range"),  # 2**64
        ("ffffffffffffffffff7f", "bad_range"),  # 2**70 - 1
    ],
)
def test_bad_varints(wire: str, reason: str) -> None:
    with pytest.raises(errors.DecodeError) as info:
        varint.decode(bytes.fromhex(wire), 0)
    assert info.value.reason == reason


@settings(max_examples=100, deadline=None)
@given(limit=st.integers(1, 2**64) | st.integers(1, 300), value=st.integers(0, 2**64))
@example(limit=2**63, value=2**63 - 1)
@example(limit=1, value=0)
def test_varint_limit(limit: int, value: int) -> None:
    below = value % limit
    assert varint.decode(varint.encode(below), 0, limit=limit)[0] == below
    for value in (limit, limit + 1, 2 * limit):
        with pytest.raises(errors.DecodeError) as info:
            varint.decode(varint.encode(value), 0, limit=limit)
        assert info.value.reason == "bad_range"


def test_varints_are_unsigned() -> None:
    with pytest.raises(ValueError, match="unsigned"):
        varint.encode(-1)


# == canonical msgpack, keys, names, errors =========================================================


def test_canonical_packb_sorts_maps_at_every_depth() -> None:
    a = canonical.packb({"b": 1, "a": {"y": 2, "x": [{"d": 1, "c": 2}]}, "é": 0})
    b = canonical.packb({"é": 0, "a": {"x": ({"c": 2, "d": 1},), "y": 2}, "b": 1})
    assert a == b
    value = msgpack.unpackb(a, raw=False)
    assert list(value) == ["a", "b", "é"]
    assert list(value["a"]["x"][0]) == ["c", "d"]
    assert canonical.packb(1.0) == b"\xcb" + struct.pack(">d", 1.0)  # floats as float64
    assert canonical.packb(1) == b"\x01"  # integers in their shortest form
    assert canonical.packb(300) == b"\xcd\x01\x2c"
    assert canonical.packb(b"x") == b"\xc4\x01x"  # bin, not str
    assert canonical.sha256(b"ab", b"c") == canonical.sha256(b"abc")


def test_node_keys() -> None:
    key = NodeKey.from_hex(KEY_A.private_hex())
    assert key.public_bytes() == KEY_A.public_bytes()
    assert len(key.public_bytes()) == 32
    assert key.public_hex() == key.public_bytes().hex()
    sig = key.sign(b"message")
    assert len(sig) == 64
    assert verify(key.public_bytes(), b"message", sig)
    assert not verify(key.public_bytes(), b"messagE", sig)
    assert not verify(NodeKey.generate().public_bytes(), b"message", sig)
    assert not verify(b"\x00" * 3, b"message", sig)
    assert not verify(key.public_bytes(), b"message", sig[:10])
    assert NodeKey.generate().public_bytes() != NodeKey.generate().public_bytes()


@pytest.mark.parametrize("text", ["", "zz" * 32, "01" * 31, "01" * 33])
def test_bad_private_key(text: str) -> None:
    with pytest.raises(errors.SignatureError):
        NodeKey.from_hex(text)


def test_names() -> None:
    assert check_node_id("node_1-A") == "node_1-A"
    assert check_node_id("x" * 32) == "x" * 32
    assert check_run_name("r" * 64) == "r" * 64
    for bad in ("", "a/b", "a+b", "a#", "a b", "x" * 33, "ñ", "a\n"):
        with pytest.raises(errors.DecodeError) as info:
            check_node_id(bad)
        assert info.value.reason == "bad_range"
    with pytest.raises(errors.DecodeError):
        check_run_name("r" * 65)
    for value in (b"node", None, 5):
        with pytest.raises(errors.DecodeError) as info:
            check_node_id(value)
        assert info.value.reason == "bad_type"


def test_error_hierarchy_and_reasons() -> None:
    for cls in (errors.DecodeError, errors.WrongRunError, errors.SignatureError):
        assert issubclass(cls, errors.ProtocolError)
    assert issubclass(errors.ConflictError, errors.ProtocolError)
    assert issubclass(errors.ProtocolError, errors.SeedswarmError)
    assert issubclass(errors.ManifestError, errors.SeedswarmError)
    assert not issubclass(errors.ManifestError, errors.ProtocolError)
    assert errors.ProtocolError("x").reason == "malformed"
    assert errors.WrongRunError("x").reason == "wrong_run"
    assert errors.SignatureError("x").reason == "bad_signature"
    assert errors.SignatureError("x", reason="unsigned").reason == "unsigned"
    assert errors.ConflictError("x").reason == "equivocation"
    assert errors.DecodeError("x", reason="oversized").reason == "oversized"
    assert errors.DecodeError("x").reason == "malformed"


def test_a_wrong_run_error_names_the_run() -> None:
    exc = errors.WrongRunError("another run", run_id=RUN)
    assert exc.run_id == RUN
    assert exc.reason == "wrong_run"
    assert str(exc) == "another run"
    assert errors.WrongRunError("x").run_id == b""
