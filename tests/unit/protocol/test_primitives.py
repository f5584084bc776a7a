"""Small building blocks: record bytes, frames, canonical msgpack, node keys, names, errors."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest

from seedswarm.protocol import canonical, errors
from seedswarm.protocol.codec import decode_frame, encode_frame
from seedswarm.protocol.ids import check_node_id, check_run_name
from seedswarm.protocol.records import Frame, byte_to_q, q_to_byte
from seedswarm.protocol.signing import NodeKey, verify

from .strategies import KEY_A, RUN


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
        ({"node": ""}, "bad_range"),
        ({"node": "a+b"}, "bad_range"),
        ({"qs": b""}, "bad_range"),
        ({"qs": b"\x01" * 4097}, "bad_range"),
        ({"qs": b"\x01\x80"}, "bad_range"),
        ({"first_seq": -1}, "bad_range"),
        ({"first_seq": 2**63 - 1, "qs": b"\x01\x01"}, "bad_range"),
        ({"clock": -1}, "bad_range"),
        ({"clock": 2**63}, "bad_range"),
        ({"signature": b"\x00" * 65}, "bad_signature"),
    ],
)
def test_frame_constructor_validates(changes: dict[str, Any], reason: str) -> None:
    fields: dict[str, Any] = {"run_id": RUN, "node": "a", "first_seq": 0, "clock": 0, "qs": b"\x01"}
    fields.update(changes)
    with pytest.raises(errors.DecodeError) as info:
        Frame(**fields)
    assert info.value.reason == reason


def test_last_seq_may_be_the_last_of_the_seq_space() -> None:
    f = Frame(RUN, "a", 2**63 - 2, 0, b"\x01\x01")
    assert f.end_seq == 2**63


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


def test_non_canonical_encodings_of_a_frame_decode_to_the_same_frame() -> None:
    # The signature covers the re-encoded header, so a relay that re-encodes keeps it valid;
    # it also means one frame has more than one accepted byte string (see the report).
    f = Frame(RUN, "a", 10, 3, b"\x01")
    wide = bytes.fromhex("9701c408") + RUN + bytes.fromhex("a161cf000000000000000a03c40101c0")
    assert wide != encode_frame(f)
    assert decode_frame(wide, run_id=RUN, keys=None) == f


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
    assert check_run_name("r" * 64) == "r" * 64
    for bad in ("", "a/b", "a+b", "a#", "a b", "x" * 33, "ñ"):
        with pytest.raises(errors.DecodeError):
            check_node_id(bad)
    with pytest.raises(errors.DecodeError):
        check_run_name("r" * 65)
    with pytest.raises(errors.DecodeError) as info:
        check_node_id(b"node")
    assert info.value.reason == "bad_type"


def test_error_hierarchy_and_reasons() -> None:
    assert issubclass(errors.DecodeError, errors.ProtocolError)
    assert issubclass(errors.ProtocolError, errors.SeedswarmError)
    assert issubclass(errors.ManifestError, errors.SeedswarmError)
    assert not issubclass(errors.ManifestError, errors.ProtocolError)
    assert errors.ProtocolError("x").reason == "malformed"
    assert errors.WrongRunError("x").reason == "wrong_run"
    assert errors.SignatureError("x").reason == "bad_signature"
    assert errors.ConflictError("x").reason == "equivocation"
    assert errors.DecodeError("x", reason="oversized").reason == "oversized"
    assert errors.DecodeError("x").reason == "malformed"
