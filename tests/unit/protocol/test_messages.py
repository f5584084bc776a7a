"""Control messages (v2): presence, want, vv request and vv round-trip open and signed, their
wire form is the documented msgpack array, and garbage only ever raises ProtocolError."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from seedswarm.protocol import codec
from seedswarm.protocol.codec import (
    MAX_MESSAGE_BYTES,
    MESSAGE_DOMAIN,
    decode_message,
    encode_message,
)
from seedswarm.protocol.errors import DecodeError, ProtocolError, SignatureError, WrongRunError
from seedswarm.protocol.messages import (
    CONTENT_BYTES,
    DIGEST_BYTES,
    FINGERPRINT_BYTES,
    MAX_HTTP,
    MAX_VV_NODES,
    MAX_WANT,
    Control,
    Presence,
    SnapshotAdvert,
    Vv,
    VvRequest,
    Want,
    decode_control,
    encode_presence,
    encode_vv,
    encode_vv_request,
    encode_want,
)
from seedswarm.protocol.records import SEQ_LIMIT, SIGNATURE_BYTES
from seedswarm.protocol.signing import NodeKey, verify

from .strategies import KEY_A, KEY_B, OTHER_RUN, RUN, msgpack_leaves, msgpack_values, node_ids

Keys = Mapping[str, bytes] | None

KEYS: Mapping[str, bytes] = {"alice": KEY_A.public_bytes(), "bob": KEY_B.public_bytes()}

# docs/PROTOCOL.md §9: the reasons a decoder may give for bytes it refuses
REASONS = {
    "oversized", "truncated", "malformed", "bad_type", "bad_range", "bad_version",
    "wrong_run", "unsigned", "bad_signature", "unknown_signer",
}  # fmt: skip

# == building and reading messages ==================================================================


def sender_of(c: Control) -> str:
    if isinstance(c, Presence):
        return c.node
    if isinstance(c, Want | VvRequest):
        return c.requester
    return c.sender


def encode(c: Control, key: NodeKey | None = None) -> bytes:
    if isinstance(c, Presence):
        return encode_presence(c, key)
    if isinstance(c, Want):
        return encode_want(c, key)
    if isinstance(c, VvRequest):
        return encode_vv_request(c, key)
    return encode_vv(c, key)


def decode(data: bytes, keys: Keys = None, *, sender: str = "alice") -> Control:
    return decode_control(data, sender=sender, run_id=RUN, keys=keys)


def reason_of(data: bytes, keys: Keys = None, *, sender: str = "alice") -> str:
    with pytest.raises(ProtocolError) as info:
        decode(data, keys, sender=sender)
    assert info.value.reason in REASONS
    return info.value.reason


def packed(value: Any) -> bytes:
    out: bytes = msgpack.packb(value, use_bin_type=True)
    return out


def signed_packed(value: Any, key: NodeKey = KEY_A, sender: str = "alice") -> bytes:
    """A msgpack value signed as the spec says (not as the codec does)."""
    body = packed(value)
    name = sender.encode()
    return body + key.sign(MESSAGE_DOMAIN + RUN + bytes([len(name)]) + name + body)


snapshots = st.builds(
    SnapshotAdvert,
    vv_digest=st.binary(min_size=DIGEST_BYTES, max_size=DIGEST_BYTES),
    fingerprint=st.binary(min_size=FINGERPRINT_BYTES, max_size=FINGERPRINT_BYTES),
    records=st.integers(0, 2**64 - 1),
)
presences = st.builds(
    Presence,
    node=node_ids,
    run_id=st.just(RUN),
    alive=st.booleans(),
    own=st.integers(0, SEQ_LIMIT),
    held_digest=st.binary(min_size=DIGEST_BYTES, max_size=DIGEST_BYTES),
    held_total=st.integers(0, 2**64 - 1),
    steps=st.integers(0, 2**64 - 1),
    loss=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    http=st.text(max_size=MAX_HTTP),
    snapshot=st.none() | snapshots,
    relay=st.booleans(),
)


@st.composite
def wants(draw: st.DrawFn) -> Want:
    count = draw(st.integers(1, MAX_WANT))
    first = draw(st.integers(0, 100) | st.integers(0, SEQ_LIMIT - count))
    return Want(draw(node_ids), RUN, draw(node_ids), first, count)


vv_requests = st.builds(VvRequest, requester=node_ids, run_id=st.just(RUN))


@st.composite
def vvs(draw: st.DrawFn) -> Vv:
    held = draw(st.dictionaries(node_ids, st.integers(1, SEQ_LIMIT), max_size=20))
    digests = st.binary(min_size=CONTENT_BYTES, max_size=CONTENT_BYTES)
    return Vv(draw(node_ids), RUN, held, {n: draw(digests) for n in held})


def cvv(sender: str, held: dict[str, int], fill: int = 0xC0) -> Vv:
    """A vv whose content digests are made up (16 bytes of ``fill`` each)."""
    return Vv(sender, RUN, held, dict.fromkeys(held, bytes([fill]) * CONTENT_BYTES))


controls: st.SearchStrategy[Control] = st.one_of(presences, wants(), vv_requests, vvs())

PRESENCE = Presence(
    "alice", RUN, True, 5, b"\x11" * 8, 9, 4, 0.5, "http://x:1",
    SnapshotAdvert(b"\x22" * 8, b"\x33" * 32, 9),
)  # fmt: skip
WANT = Want("alice", RUN, "bob", 300, 7)
VV_REQUEST = VvRequest("alice", RUN)
VV = cvv("alice", {"bob": 3, "carol": 2**63})
EXAMPLES: list[Control] = [PRESENCE, WANT, VV_REQUEST, VV]
KINDS = ["presence", "want", "vv_request", "vv"]
VV_ENTRY = {"bob": [3, b"\x01" * CONTENT_BYTES]}  # a vv's map: node -> [next seq, content]


# == round trips and the wire form ==================================================================


@settings(max_examples=150, deadline=None)
@given(c=controls)
@example(c=Presence("a", RUN, False))
@example(c=Presence("n" * 32, RUN, True, SEQ_LIMIT, b"\xff" * 8, 2**64 - 1, 2**64 - 1, -0.0))
@example(c=Want("a", RUN, "b", SEQ_LIMIT - MAX_WANT, MAX_WANT))
@example(c=Want("a", RUN, "b", SEQ_LIMIT - 1, 1))
@example(c=Vv("a", RUN, {}, {}))
def test_open_round_trip(c: Control) -> None:
    data = encode(c)
    assert decode_control(data, sender=sender_of(c), run_id=RUN, keys=None) == c


@settings(max_examples=80, deadline=None)
@given(c=controls)
def test_signed_round_trip(c: Control) -> None:
    sender = sender_of(c)
    data = encode(c, KEY_A)
    body, sig = data[:-SIGNATURE_BYTES], data[-SIGNATURE_BYTES:]
    assert body == encode(c)  # a signed message is the open one and its signature
    name = sender.encode()
    assert verify(
        KEY_A.public_bytes(), MESSAGE_DOMAIN + RUN + bytes([len(name)]) + name + body, sig
    )
    keys = {sender: KEY_A.public_bytes()}
    assert decode_control(data, sender=sender, run_id=RUN, keys=keys) == c


WIRE_FORMS: list[tuple[Control, bytes]] = [
    (WANT, b"\x96\x02\xa1w\xc4\x08" + RUN + b"\xa3bob\xcd\x01\x2c\x07"),
    (VV_REQUEST, b"\x93\x02\xa1q\xc4\x08" + RUN),
    (
        cvv("alice", {"bob": 3}, 0xAB),
        b"\x94\x02\xa1v\xc4\x08" + RUN + b"\x81\xa3bob\x92\x03\xc4\x10" + b"\xab" * 16,
    ),
    (
        Presence("alice", RUN, False),
        b"\x9c\x02\xa1p\xc4\x08"
        + RUN
        + b"\xc2\x00\xc4\x08"
        + bytes(8)
        + b"\x00\x00\xc0\xa0\xc0\xc2",
    ),
]


@pytest.mark.parametrize(("c", "wire"), WIRE_FORMS, ids=["want", "vv_request", "vv", "presence"])
def test_wire_form_written_out(c: Control, wire: bytes) -> None:
    assert encode(c) == wire
    assert decode(wire) == c
    sig = KEY_A.sign(b"seedswarm/msg/v2" + RUN + b"\x05alice" + wire)
    assert encode(c, KEY_A) == wire + sig
    assert decode(wire + sig, KEYS) == c


def test_presence_fields_in_order() -> None:
    assert msgpack.unpackb(encode(PRESENCE), raw=False) == [
        2, "p", RUN, True, 5, b"\x11" * 8, 9, 4, 0.5, "http://x:1",
        [b"\x22" * 8, b"\x33" * 32, 9], False,
    ]  # fmt: skip


def test_encode_message_and_decode_message() -> None:
    data = encode_message("x", RUN, [1, "two", b"3"], sender="alice", key=None)
    assert data == packed([2, "x", RUN, 1, "two", b"3"])
    assert decode_message(data, sender="alice", run_id=RUN, keys=None) == (
        "x", RUN, [1, "two", b"3"],
    )  # fmt: skip
    data = encode_message("x", RUN, [], sender="alice", key=KEY_A)
    assert data == signed_packed([2, "x", RUN])
    assert decode_message(data, sender="alice", run_id=RUN, keys=KEYS) == ("x", RUN, [])


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_becomes_none(loss: float) -> None:
    for key, keys in [(None, None), (KEY_A, KEYS)]:
        p = decode(encode_presence(Presence("alice", RUN, True, loss=loss), key), keys)
        assert isinstance(p, Presence)
        assert p.loss is None


def test_integer_loss_becomes_float() -> None:
    fields = msgpack.unpackb(encode(PRESENCE), raw=False)
    fields[8] = 3
    p = decode(packed(fields))
    assert isinstance(p, Presence)
    assert p.loss == 3.0
    assert isinstance(p.loss, float)


def test_empty_vv_entries_are_left_out() -> None:
    c = b"\x01" * CONTENT_BYTES
    got = decode(packed([2, "v", RUN, {"bob": [0, c], "carol": [4, c]}]))
    assert got == Vv("alice", RUN, {"carol": 4}, {"carol": c})


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (3, "bad_type"),  # protocol 2's form: a bare next seq
        ([3], "malformed"),
        ([3, b"\x01" * 16, 0], "malformed"),
        (["3", b"\x01" * 16], "bad_type"),
        ([3, "x" * 16], "bad_type"),
        ([3, b"\x01" * 15], "bad_range"),
        ([3, b"\x01" * 17], "bad_range"),
        ([SEQ_LIMIT + 1, b"\x01" * 16], "bad_range"),
    ],
)
def test_a_vv_entry_is_next_seq_and_content(entry: Any, reason: str) -> None:
    assert reason_of(packed([2, "v", RUN, {"bob": entry}])) == reason


def test_the_largest_vv() -> None:
    held = {f"{i:032d}": SEQ_LIMIT for i in range(MAX_VV_NODES)}
    data = encode_vv(cvv("alice", held), KEY_A)
    assert len(data) <= MAX_MESSAGE_BYTES
    assert decode(data, KEYS) == cvv("alice", held)
    held["x"] = 1
    assert reason_of(encode_vv(cvv("alice", held), KEY_A), KEYS) == "oversized"
    assert reason_of(encode_vv(cvv("alice", held))) == "oversized"


def test_bytearray_and_memoryview_accepted() -> None:
    data = encode(PRESENCE, KEY_A)
    for view in (bytearray(data), memoryview(data)):
        assert decode(view, KEYS) == PRESENCE  # type: ignore[arg-type]


# == field by field: types and ranges ===============================================================

PRESENCE_FIELDS: list[Any] = msgpack.unpackb(encode(PRESENCE), raw=False)[3:]
WANT_FIELDS: list[Any] = ["bob", 300, 7]
SNAP: list[Any] = [b"\x22" * 8, b"\x33" * 32, 9]

FIELD_CASES: list[tuple[str, list[Any], int, Any, str]] = [
    # presence: alive, own, held_digest, held_total, steps, loss, http, snapshot, relay
    ("p", PRESENCE_FIELDS, 8, 1, "bad_type"),
    ("p", PRESENCE_FIELDS, 8, None, "bad_type"),
    ("p", PRESENCE_FIELDS, 8, "relay", "bad_type"),
    ("p", PRESENCE_FIELDS, 0, 1, "bad_type"),
    ("p", PRESENCE_FIELDS, 0, None, "bad_type"),
    ("p", PRESENCE_FIELDS, 0, "true", "bad_type"),
    ("p", PRESENCE_FIELDS, 1, -1, "bad_range"),
    ("p", PRESENCE_FIELDS, 1, SEQ_LIMIT + 1, "bad_range"),
    ("p", PRESENCE_FIELDS, 1, 2**64 - 1, "bad_range"),
    ("p", PRESENCE_FIELDS, 1, -(2**63), "bad_range"),
    ("p", PRESENCE_FIELDS, 1, 5.0, "bad_type"),
    ("p", PRESENCE_FIELDS, 1, True, "bad_type"),
    ("p", PRESENCE_FIELDS, 1, "5", "bad_type"),
    ("p", PRESENCE_FIELDS, 1, None, "bad_type"),
    ("p", PRESENCE_FIELDS, 2, b"\x11" * 7, "bad_range"),
    ("p", PRESENCE_FIELDS, 2, b"\x11" * 9, "bad_range"),
    ("p", PRESENCE_FIELDS, 2, b"", "bad_range"),
    ("p", PRESENCE_FIELDS, 2, "11111111", "bad_type"),
    ("p", PRESENCE_FIELDS, 2, None, "bad_type"),
    ("p", PRESENCE_FIELDS, 2, [17] * 8, "bad_type"),
    ("p", PRESENCE_FIELDS, 3, -1, "bad_range"),
    ("p", PRESENCE_FIELDS, 3, 1.5, "bad_type"),
    ("p", PRESENCE_FIELDS, 3, None, "bad_type"),
    ("p", PRESENCE_FIELDS, 4, -1, "bad_range"),
    ("p", PRESENCE_FIELDS, 4, False, "bad_type"),
    ("p", PRESENCE_FIELDS, 4, b"\x04", "bad_type"),
    ("p", PRESENCE_FIELDS, 5, "0.5", "bad_type"),
    ("p", PRESENCE_FIELDS, 5, True, "bad_type"),
    ("p", PRESENCE_FIELDS, 5, [0.5], "bad_type"),
    ("p", PRESENCE_FIELDS, 5, b"0.5", "bad_type"),
    ("p", PRESENCE_FIELDS, 6, 5, "bad_type"),
    ("p", PRESENCE_FIELDS, 6, None, "bad_type"),
    ("p", PRESENCE_FIELDS, 6, b"http://x:1", "bad_type"),
    ("p", PRESENCE_FIELDS, 6, "h" * (MAX_HTTP + 1), "bad_range"),
    ("p", PRESENCE_FIELDS, 7, [], "bad_type"),
    ("p", PRESENCE_FIELDS, 7, SNAP[:2], "bad_type"),
    ("p", PRESENCE_FIELDS, 7, [*SNAP, 0], "bad_type"),
    ("p", PRESENCE_FIELDS, 7, {"records": 9}, "bad_type"),
    ("p", PRESENCE_FIELDS, 7, "snapshot", "bad_type"),
    ("p", PRESENCE_FIELDS, 7, False, "bad_type"),
    ("p", PRESENCE_FIELDS, 7, [b"\x22" * 7, SNAP[1], 9], "bad_range"),
    ("p", PRESENCE_FIELDS, 7, [b"\x22" * 9, SNAP[1], 9], "bad_range"),
    ("p", PRESENCE_FIELDS, 7, [SNAP[0], b"\x33" * 31, 9], "bad_range"),
    ("p", PRESENCE_FIELDS, 7, [SNAP[0], b"\x33" * 33, 9], "bad_range"),
    ("p", PRESENCE_FIELDS, 7, [SNAP[0], SNAP[1], -1], "bad_range"),
    ("p", PRESENCE_FIELDS, 7, [SNAP[0], SNAP[1], 9.0], "bad_type"),
    ("p", PRESENCE_FIELDS, 7, [SNAP[0], SNAP[1], None], "bad_type"),
    ("p", PRESENCE_FIELDS, 7, ["2" * 8, SNAP[1], 9], "bad_type"),
    ("p", PRESENCE_FIELDS, 7, [SNAP[0], "3" * 32, 9], "bad_type"),
    # want: node, first, count
    ("w", WANT_FIELDS, 0, "", "bad_range"),
    ("w", WANT_FIELDS, 0, "a/b", "bad_range"),
    ("w", WANT_FIELDS, 0, "a+", "bad_range"),
    ("w", WANT_FIELDS, 0, "x" * 33, "bad_range"),
    ("w", WANT_FIELDS, 0, "é", "bad_range"),
    ("w", WANT_FIELDS, 0, b"bob", "bad_type"),
    ("w", WANT_FIELDS, 0, None, "bad_type"),
    ("w", WANT_FIELDS, 0, 5, "bad_type"),
    ("w", WANT_FIELDS, 1, -1, "bad_range"),
    ("w", WANT_FIELDS, 1, SEQ_LIMIT, "bad_range"),
    ("w", WANT_FIELDS, 1, 2**64 - 1, "bad_range"),
    ("w", WANT_FIELDS, 1, 300.0, "bad_type"),
    ("w", WANT_FIELDS, 1, True, "bad_type"),
    ("w", WANT_FIELDS, 1, None, "bad_type"),
    ("w", WANT_FIELDS, 1, SEQ_LIMIT - 6, "bad_range"),  # the 7 records would end past 2**63
    ("w", WANT_FIELDS, 2, 0, "bad_range"),
    ("w", WANT_FIELDS, 2, -1, "bad_range"),
    ("w", WANT_FIELDS, 2, MAX_WANT + 1, "bad_range"),
    ("w", WANT_FIELDS, 2, 2**64 - 1, "bad_range"),
    ("w", WANT_FIELDS, 2, 7.0, "bad_type"),
    ("w", WANT_FIELDS, 2, True, "bad_type"),
    ("w", WANT_FIELDS, 2, "7", "bad_type"),
    # vv: {node: next seq}
    ("v", [VV_ENTRY], 0, [], "bad_type"),
    ("v", [VV_ENTRY], 0, [["bob", 3]], "bad_type"),
    ("v", [VV_ENTRY], 0, None, "bad_type"),
    ("v", [VV_ENTRY], 0, {"b/c": [1, b"\x01" * 16]}, "bad_range"),
    ("v", [VV_ENTRY], 0, {"": [1, b"\x01" * 16]}, "bad_range"),
    ("v", [VV_ENTRY], 0, {"x" * 33: [1, b"\x01" * 16]}, "bad_range"),
    ("v", [VV_ENTRY], 0, {b"bob": [1, b"\x01" * 16]}, "bad_type"),
    ("v", [VV_ENTRY], 0, {"bob": [-1, b"\x01" * 16]}, "bad_range"),
    ("v", [VV_ENTRY], 0, {"bob": [SEQ_LIMIT + 1, b"\x01" * 16]}, "bad_range"),
    ("v", [VV_ENTRY], 0, {"bob": [True, b"\x01" * 16]}, "bad_type"),
    ("v", [VV_ENTRY], 0, {"bob": [1.0, b"\x01" * 16]}, "bad_type"),
    ("v", [VV_ENTRY], 0, {"bob": [None, b"\x01" * 16]}, "bad_type"),
    ("v", [VV_ENTRY], 0, {"bob": [1, b"\x01" * 16], "carol": ["2", b"\x01" * 16]}, "bad_type"),
]


@pytest.mark.parametrize(
    ("kind", "base", "index", "value", "reason"),
    FIELD_CASES,
    ids=[f"{c[0]}{c[2]}-{c[4]}-{i}" for i, c in enumerate(FIELD_CASES)],
)
def test_bad_field(kind: str, base: list[Any], index: int, value: Any, reason: str) -> None:
    fields = list(base)
    fields[index] = value
    msg = [2, kind, RUN, *fields]
    assert reason_of(packed(msg)) == reason
    assert reason_of(signed_packed(msg), KEYS) == reason


def test_field_limits_that_are_valid() -> None:
    for kind, base, index, value in [
        ("p", PRESENCE_FIELDS, 1, SEQ_LIMIT),
        ("p", PRESENCE_FIELDS, 3, 2**64 - 1),
        ("p", PRESENCE_FIELDS, 5, None),
        ("p", PRESENCE_FIELDS, 5, -(2**63)),
        ("p", PRESENCE_FIELDS, 6, "h" * MAX_HTTP),
        ("p", PRESENCE_FIELDS, 6, "é" * MAX_HTTP),
        ("p", PRESENCE_FIELDS, 7, None),
        ("w", WANT_FIELDS, 1, SEQ_LIMIT - 7),
        ("w", WANT_FIELDS, 2, MAX_WANT),
        ("v", [VV_ENTRY], 0, {"bob": [SEQ_LIMIT, b"\x01" * 16]}),
    ]:
        fields = list(base)
        fields[index] = value
        decode(packed([2, kind, RUN, *fields]))


@pytest.mark.parametrize(
    ("kind", "n"),
    [("p", 0), ("p", 8), ("p", 10), ("w", 0), ("w", 2), ("w", 4), ("q", 1), ("v", 0), ("v", 2)],
)
def test_wrong_arity(kind: str, n: int) -> None:
    fields = {"p": PRESENCE_FIELDS, "w": WANT_FIELDS, "q": [], "v": [VV_ENTRY]}[kind]
    msg = [2, kind, RUN, *(list(fields) + [None] * 9)[:n]]
    assert reason_of(packed(msg)) == "malformed"
    assert reason_of(signed_packed(msg), KEYS) == "malformed"


@pytest.mark.parametrize("kind", ["x", "", "P", "presence", "want", "pw", "p\x00"])
def test_unknown_kind(kind: str) -> None:
    assert reason_of(packed([2, kind, RUN])) == "malformed"
    assert reason_of(signed_packed([2, kind, RUN]), KEYS) == "malformed"


HEADER_CASES: list[tuple[Any, str]] = [
    ([1, "q", RUN], "bad_version"),
    ([3, "q", RUN], "bad_version"),
    ([0, "q", RUN], "bad_version"),
    ([-1, "q", RUN], "bad_version"),
    ([2**64 - 1, "q", RUN], "bad_version"),
    (["2", "q", RUN], "bad_type"),
    ([2.0, "q", RUN], "bad_type"),
    ([True, "q", RUN], "bad_type"),
    ([None, "q", RUN], "bad_type"),
    ([2, 113, RUN], "bad_type"),
    ([2, b"q", RUN], "bad_type"),
    ([2, None, RUN], "bad_type"),
    ([2, "q", RUN[:7]], "bad_type"),
    ([2, "q", RUN + b"\x00"], "bad_type"),
    ([2, "q", RUN.hex()], "bad_type"),
    ([2, "q", list(RUN)], "bad_type"),
    ([2, "q", None], "bad_type"),
    ([2, "q"], "bad_type"),
    ([2], "bad_type"),
    ([], "bad_type"),
    ({"v": 2, "t": "q", "run": RUN}, "bad_type"),
    ({"v": 1, "t": "want", "from": "a", "run": RUN, "node": "b", "first": 5}, "bad_type"),
    (2, "bad_type"),
    ("q", "bad_type"),
    (RUN, "bad_type"),
    (None, "bad_type"),
    (1.5, "bad_type"),
]


@pytest.mark.parametrize(("value", "reason"), HEADER_CASES)
def test_bad_header(value: Any, reason: str) -> None:
    assert reason_of(packed(value)) == reason
    assert reason_of(signed_packed(value), KEYS) == reason


# == bytes that are not msgpack =====================================================================


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"\xc1", "malformed"),  # the one byte msgpack never uses
        (b"\x93\x02\xa1q", "truncated"),
        (b"\x93\x02\xa1q\xc4\x08" + RUN[:7], "truncated"),
        (b"\x93\x02\xa1q\xc4\x08" + RUN + b"\x00", "malformed"),  # a stray byte
        (b"\x93\x02\xa1q\xc4\x08" + RUN + b"\x00" * 63, "malformed"),
        (b"\x93\x02\xa1q\xc4\x08" + RUN + b"\x00" * 65, "malformed"),
        (b"\x93\x02\xa1\xff\xc4\x08" + RUN, "malformed"),  # a str that is not UTF-8
        (b"\x94\x02\xa1v\xc4\x08" + RUN + b"\x81\x01\x01", "bad_type"),  # an integer map key
        (b"\x94\x02\xa1v\xc4\x08" + RUN + b"\x81\x91\x01\x01", "bad_type"),  # an array as key
        (b"\x94\x02\xa1v\xc4\x08" + RUN + b"\x82\xa1a\x01\xa1a\x02", "malformed"),  # a key twice
        (b"\xdd\xff\xff\xff\xff", "truncated"),  # 4 billion elements: past the end
        (b"\xdd\x00\x00\x00\x05\x01", "truncated"),
        (b"\xdb\xff\xff\xff\xff", "truncated"),  # a str of 4 GiB
        (b"\xc6\xff\xff\xff\xff", "truncated"),
        (b"\xc9\xff\xff\xff\xff\x05", "truncated"),  # an ext of 4 GiB
        (b"\x91" * 1025 + b"\x00", "malformed"),  # nesting too deep
        (b"\x91" * 5000, "malformed"),
    ],
)
def test_not_a_message(data: bytes, reason: str) -> None:
    assert reason_of(data) == reason


@pytest.mark.parametrize(
    ("ext", "reason"),
    [
        (b"\xc7\x00\x05", "bad_type"),  # an empty ext 5
        (b"\xd4\x05x", "bad_type"),  # ext 5 with data
        (b"\xd6\xff\x00\x00\x00\x00", "bad_type"),  # a msgpack timestamp (ext -1)
        (b"\xc7\x00\xff", "bad_type"),  # ext -1 of a length no timestamp has
        (b"\x81\xa1a\xd6\xff\x00\x00\x00\x00", "bad_type"),  # a timestamp as a map value
        (b"\x91\xd6\xff\x00\x00\x00\x00", "bad_type"),  # ... in an array
    ],
)
def test_extension_types_rejected(ext: bytes, reason: str) -> None:
    """Every extension type is one fault, wherever it is (docs/PROTOCOL.md §9)."""
    data = b"\x94" + packed([2, "v", RUN])[1:] + ext  # an extension type in place of the map
    assert reason_of(data) == reason
    assert reason_of(ext) == reason  # ... or in place of the message


def test_unpack_strict() -> None:
    unpack_strict = codec.unpack_strict
    assert unpack_strict(packed([1, {"a": b"x"}]), max_bytes=10) == [1, {"a": b"x"}]
    for data, max_bytes, reason in [
        (b"\x90" * 11, 10, "oversized"),
        (b"", 10, "truncated"),
        (b"\x92\x01", 10, "truncated"),
        (b"\x01\x02", 10, "malformed"),
    ]:
        with pytest.raises(DecodeError) as info:
            unpack_strict(data, max_bytes=max_bytes)
        assert info.value.reason == reason
    with pytest.raises(DecodeError) as info:
        unpack_strict("a string", max_bytes=10)  # type: ignore[arg-type]
    assert info.value.reason == "bad_type"


def test_oversized() -> None:
    big = packed([2, "p", RUN, "x" * MAX_MESSAGE_BYTES])
    assert reason_of(big) == "oversized"
    assert reason_of(big, KEYS) == "oversized"
    assert reason_of(b"\x00" * (MAX_MESSAGE_BYTES + 1)) == "oversized"


# == signatures =====================================================================================


@pytest.mark.parametrize("c", EXAMPLES, ids=KINDS)
def test_unsigned_message_in_a_signed_run(c: Control) -> None:
    with pytest.raises(SignatureError) as info:
        decode(encode(c), KEYS)
    assert info.value.reason == "unsigned"


@pytest.mark.parametrize("c", EXAMPLES, ids=KINDS)
def test_signed_message_in_an_open_run(c: Control) -> None:
    assert reason_of(encode(c, KEY_A)) == "malformed"


@pytest.mark.parametrize("c", EXAMPLES, ids=KINDS)
def test_signature_of_another_key(c: Control) -> None:
    assert reason_of(encode(c, KEY_B), KEYS) == "bad_signature"
    assert reason_of(encode(c, KEY_A), {"alice": b"\x00" * 5}) == "bad_signature"


@pytest.mark.parametrize("c", EXAMPLES, ids=KINDS)
def test_unknown_signer(c: Control) -> None:
    assert reason_of(encode(c, KEY_A), {"bob": KEY_B.public_bytes()}) == "unknown_signer"
    assert reason_of(encode(c, KEY_A), {}) == "unknown_signer"


@pytest.mark.parametrize("c", EXAMPLES, ids=KINDS)
def test_the_signature_binds_the_sender(c: Control) -> None:
    data = encode(c, KEY_A)
    assert reason_of(data, KEYS, sender="bob") == "bad_signature"
    # even where both names have the same key
    same = {"alice": KEY_A.public_bytes(), "alicf": KEY_A.public_bytes()}
    assert reason_of(data, same, sender="alicf") == "bad_signature"
    assert decode(data, same) == c


def test_the_signature_binds_the_run() -> None:
    # the run id is in the message too; one signed for another run does not verify in this one
    body = packed([2, "q", RUN])
    sig = KEY_A.sign(MESSAGE_DOMAIN + OTHER_RUN + b"\x05alice" + body)
    assert reason_of(body + sig, KEYS) == "bad_signature"


@pytest.mark.parametrize("c", EXAMPLES, ids=KINDS)
def test_every_truncation_of_a_signed_message_is_rejected(c: Control) -> None:
    data = encode(c, KEY_A)
    for n in range(len(data)):
        reason_of(data[:n], KEYS)


@pytest.mark.parametrize("c", EXAMPLES, ids=KINDS)
def test_every_flipped_byte_of_a_signed_message_is_rejected(c: Control) -> None:
    data = encode(c, KEY_A)
    for i in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(data)
            bad[i] ^= mask
            reason_of(bytes(bad), KEYS)


# == another run ====================================================================================


def _other(c: Control) -> Control:
    if isinstance(c, Presence):
        return Presence(c.node, OTHER_RUN, c.alive, c.own, c.held_digest, snapshot=c.snapshot)
    if isinstance(c, Want):
        return Want(c.requester, OTHER_RUN, c.node, c.first, c.count)
    if isinstance(c, VvRequest):
        return VvRequest(c.requester, OTHER_RUN)
    return Vv(c.sender, OTHER_RUN, c.held, c.content)


@pytest.mark.parametrize("c", EXAMPLES, ids=KINDS)
@pytest.mark.parametrize(
    ("key", "keys"),
    [
        (None, None),
        (KEY_A, KEYS),  # a signed run, signed by the sender's key
        (KEY_B, KEYS),  # ... by a key this run does not give the sender
        (KEY_A, {}),  # ... by a node this run does not know
        (None, KEYS),  # an open run's message in a signed run
        (KEY_A, None),  # a signed run's message in an open run
    ],
    ids=[
        "open",
        "signed",
        "signed-other-key",
        "signed-unknown",
        "open-in-signed",
        "signed-in-open",
    ],
)
def test_another_run(c: Control, key: NodeKey | None, keys: Keys) -> None:
    """A message of another run is a WrongRunError naming that run, whatever its signature:
    the node that sent it runs another manifest, which may list other keys, or none."""
    with pytest.raises(WrongRunError) as info:
        decode(encode(_other(c), key), keys)
    assert info.value.reason == "wrong_run"
    assert info.value.run_id == OTHER_RUN
    rest = decode_message(encode(_other(c), key), sender="alice", run_id=RUN, keys=keys)
    assert rest[1] == OTHER_RUN


def test_another_run_is_told_before_its_fields_are_read() -> None:
    for msg in ([2, "zz", OTHER_RUN], [2, "w", OTHER_RUN], [2, "p", OTHER_RUN, None]):
        with pytest.raises(WrongRunError) as info:
            decode(packed(msg), KEYS)
        assert info.value.run_id == OTHER_RUN
    # but it must still be a message: version, kind and run id are checked
    assert reason_of(packed([1, "w", OTHER_RUN])) == "bad_version"
    assert reason_of(packed([2, "w", OTHER_RUN[:7]])) == "bad_type"
    assert reason_of(packed([2, "w", OTHER_RUN]) + b"\x00") == "malformed"


# == garbage ========================================================================================


def _decode_any(data: bytes, keys: Keys) -> None:
    try:
        out = decode(data, keys)
    except ProtocolError as exc:
        error = exc
    else:
        assert isinstance(out, Presence | Want | VvRequest | Vv)
        assert out.run_id == RUN
        assert sender_of(out) == "alice"
        if keys is not None:
            pytest.fail("random input cannot carry a valid signature")
        return
    assert error.reason in REASONS
    if isinstance(error, WrongRunError):
        assert len(error.run_id) == 8
        assert error.run_id != RUN


@settings(max_examples=150, deadline=None)
@given(value=msgpack_values)
def test_any_msgpack_value_decodes_or_raises_protocol_error(value: Any) -> None:
    data = packed(value)
    _decode_any(data, None)
    _decode_any(data, KEYS)
    _decode_any(data + b"\x00" * SIGNATURE_BYTES, KEYS)


# Field values for arrays that look like messages: flatter than msgpack_values (quicker to draw)
# and with the node ids, digests and maps a real field would hold.
field_values: st.SearchStrategy[Any] = st.one_of(
    msgpack_leaves,
    node_ids,
    st.binary(min_size=7, max_size=9),
    st.binary(min_size=31, max_size=33),
    st.lists(msgpack_leaves, max_size=4),
    st.dictionaries(
        node_ids | st.text(max_size=4) | st.binary(max_size=4), msgpack_leaves, max_size=4
    ),
)


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(["p", "w", "q", "v"]),
    fields=st.lists(field_values, max_size=9),
    run=st.sampled_from([RUN, OTHER_RUN]),
)
@example(kind="w", fields=["bob", 2**63 - 1, 4096], run=RUN)
@example(kind="p", fields=[True, 0, b"\0" * 8, 0, 0, 2**64 - 1, "", None], run=RUN)
@example(kind="v", fields=[{"a": 2**64 - 1}], run=RUN)
def test_plausible_garbage_only_raises_protocol_errors(
    kind: str, fields: list[Any], run: bytes
) -> None:
    """Arrays that look like messages, with random fields: a message or a ProtocolError."""
    data = packed([2, kind, run, *fields])
    _decode_any(data, None)
    _decode_any(data, KEYS)
    if run == RUN:
        _decode_any(signed_packed([2, kind, run, *fields], KEY_B), KEYS)


@settings(max_examples=100, deadline=None)
@given(kind=st.sampled_from(["p", "w", "v"]), data=st.data())
def test_one_random_field_only_raises_protocol_errors(kind: str, data: st.DataObject) -> None:
    base = {"p": PRESENCE_FIELDS, "w": WANT_FIELDS, "v": [{"bob": 3}]}[kind]
    fields = list(base)
    fields[data.draw(st.integers(0, len(fields) - 1))] = data.draw(field_values | msgpack_values)
    _decode_any(packed([2, kind, RUN, *fields]), None)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200) | st.binary(max_size=100).map(lambda b: b"\x93\x02" + b))
def test_any_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    _decode_any(data, None)
    _decode_any(data, KEYS)
