"""Presence and want messages: round trips, and garbage that only ever raises ProtocolError."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from seedswarm.protocol.codec import MAX_MESSAGE_BYTES, unpack_strict
from seedswarm.protocol.errors import DecodeError, ProtocolError, WrongRunError
from seedswarm.protocol.messages import (
    MAX_VV_NODES,
    MAX_WANT,
    Presence,
    Want,
    encode_presence,
    encode_want,
    message_from_value,
)
from seedswarm.protocol.records import SEQ_LIMIT

from .strategies import OTHER_RUN, RUN, msgpack_values, node_ids


def decode(data: bytes) -> Presence | Want:
    return message_from_value(unpack_strict(data, max_bytes=MAX_MESSAGE_BYTES), run_id=RUN)


def reason_of(value: Any) -> str:
    with pytest.raises(ProtocolError) as info:
        message_from_value(value, run_id=RUN)
    return info.value.reason


MANIFEST_DICT: dict[str, Any] = {
    "format": 1,
    "name": "run-1",
    "task": {"kind": "causal_lm", "seq_len": 128},
    "epsilon": 0.001,
    "keys": {},
}

presences = st.builds(
    Presence,
    node=node_ids,
    run_id=st.just(RUN),
    alive=st.booleans(),
    held=st.dictionaries(node_ids, st.integers(0, SEQ_LIMIT), max_size=6),
    http=st.text(max_size=512),
    steps=st.integers(0, 2**64 - 1),
    loss=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    manifest=st.none() | st.just(MANIFEST_DICT),
)

wants = st.builds(
    Want,
    requester=node_ids,
    run_id=st.just(RUN),
    node=node_ids,
    first=st.integers(0, SEQ_LIMIT - 1),
    count=st.integers(1, MAX_WANT),
)


@settings(max_examples=100, deadline=None)
@given(p=presences)
def test_presence_round_trip(p: Presence) -> None:
    assert decode(encode_presence(p)) == p


@settings(max_examples=100, deadline=None)
@given(w=wants)
def test_want_round_trip(w: Want) -> None:
    assert decode(encode_want(w)) == w


def test_encodings_are_canonical_maps() -> None:
    p = Presence("a", RUN, True, {"b": 2, "a": 1})
    q = Presence("a", RUN, True, {"a": 1, "b": 2})
    assert encode_presence(p) == encode_presence(q)
    value = msgpack.unpackb(encode_want(Want("a", RUN, "b", 5, 7)), raw=False)
    assert value == {"v": 1, "t": "want", "from": "a", "run": RUN, "node": "b", "first": 5,
                     "count": 7}  # fmt: skip
    assert list(value) == sorted(value)


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_becomes_none(loss: float) -> None:
    p = decode(encode_presence(Presence("a", RUN, True, loss=loss)))
    assert isinstance(p, Presence)
    assert p.loss is None


def test_integer_loss_becomes_float() -> None:
    value = msgpack.unpackb(encode_presence(Presence("a", RUN, True)), raw=False)
    value["loss"] = 3
    p = message_from_value(value, run_id=RUN)
    assert isinstance(p, Presence)
    assert p.loss == 3.0
    assert isinstance(p.loss, float)


def test_long_http_is_cut() -> None:
    p = decode(encode_presence(Presence("a", RUN, True, http="h" * 2000)))
    assert isinstance(p, Presence)
    assert p.http == "h" * 512


def test_wrong_run() -> None:
    for data in (
        encode_presence(Presence("a", OTHER_RUN, True)),
        encode_want(Want("a", OTHER_RUN, "b", 0, 1)),
    ):
        with pytest.raises(WrongRunError) as info:
            decode(data)
        assert info.value.reason == "wrong_run"


def _presence_value() -> dict[str, Any]:
    value: dict[str, Any] = msgpack.unpackb(
        encode_presence(Presence("a", RUN, True, {"b": 3}, "http://x", 5, 0.5, MANIFEST_DICT)),
        raw=False,
    )
    return value


def _want_value() -> dict[str, Any]:
    value: dict[str, Any] = msgpack.unpackb(encode_want(Want("a", RUN, "b", 5, 7)), raw=False)
    return value


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("v", 2, "bad_version"),
        ("v", "1", "bad_type"),
        ("v", True, "bad_type"),
        ("t", "gossip", "malformed"),
        ("t", 1, "bad_type"),
        ("run", RUN.hex(), "bad_type"),
        ("node", "a/b", "bad_range"),
        ("node", 1, "bad_type"),
        ("alive", 1, "bad_type"),
        ("alive", None, "bad_type"),
        ("held", [], "bad_type"),
        ("held", {"b": -1}, "bad_range"),
        ("held", {"b": SEQ_LIMIT + 1}, "bad_range"),
        ("held", {"b": True}, "bad_range"),
        ("held", {"b": 1.0}, "bad_range"),
        ("held", {"b/c": 1}, "bad_range"),
        ("held", {b"b": 1}, "bad_type"),
        ("held", {f"n{i}": 1 for i in range(MAX_VV_NODES + 1)}, "oversized"),
        ("http", 5, "bad_type"),
        ("steps", -1, "bad_range"),
        ("steps", 1.0, "bad_type"),
        ("steps", False, "bad_type"),
        ("loss", "0.5", "bad_type"),
        ("loss", True, "bad_type"),
        ("manifest", [], "bad_type"),
        ("manifest", "run-1", "bad_type"),
    ],
)
def test_bad_presence_field(key: str, value: Any, reason: str) -> None:
    msg = _presence_value()
    msg[key] = value
    assert reason_of(msg) == reason


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("from", "", "bad_range"),
        ("from", None, "bad_type"),
        ("node", "x" * 33, "bad_range"),
        ("first", -1, "bad_range"),
        ("first", SEQ_LIMIT, "bad_range"),
        ("first", 1.0, "bad_type"),
        ("count", 0, "bad_range"),
        ("count", MAX_WANT + 1, "bad_range"),
        ("count", True, "bad_type"),
        ("run", None, "bad_type"),
    ],
)
def test_bad_want_field(key: str, value: Any, reason: str) -> None:
    msg = _want_value()
    msg[key] = value
    assert reason_of(msg) == reason


@pytest.mark.parametrize("key", ["v", "t", "run", "node", "alive", "held", "http", "steps"])
def test_missing_presence_field(key: str) -> None:
    msg = _presence_value()
    del msg[key]
    assert reason_of(msg) == "malformed"


@pytest.mark.parametrize("key", ["v", "t", "run", "from", "node", "first", "count"])
def test_missing_want_field(key: str) -> None:
    msg = _want_value()
    del msg[key]
    assert reason_of(msg) == "malformed"


def test_optional_presence_fields() -> None:
    msg = _presence_value()
    del msg["loss"], msg["manifest"]
    p = message_from_value(msg, run_id=RUN)
    assert isinstance(p, Presence)
    assert p.loss is None
    assert p.manifest is None


@pytest.mark.parametrize("value", [[], [1, 2], "presence", b"want", 1, None, 2.5, True])
def test_not_a_map(value: Any) -> None:
    with pytest.raises(DecodeError) as info:
        message_from_value(value, run_id=RUN)
    assert info.value.reason == "bad_type"


def _check_garbage(value: Any) -> None:
    try:
        message_from_value(value, run_id=RUN)
    except DecodeError:
        return
    except WrongRunError:
        pytest.fail("random garbage cannot be a well-formed message of another run")
    pytest.fail("random garbage cannot be a well-formed message")


@settings(max_examples=150, deadline=None)
@given(value=msgpack_values)
def test_garbage_values_are_decode_errors(value: Any) -> None:
    _check_garbage(value)
    # and the same after a trip through the bytes, for whatever unpacks
    data = msgpack.packb(value, use_bin_type=True)
    try:
        unpacked = unpack_strict(data, max_bytes=MAX_MESSAGE_BYTES)
    except DecodeError:
        return
    _check_garbage(unpacked)


@settings(max_examples=100, deadline=None)
@given(
    kind=st.sampled_from(["presence", "want"]),
    extra=st.dictionaries(
        st.sampled_from(["v", "run", "node", "from", "first", "count", "alive", "held",
                         "http", "steps", "loss", "manifest"]),
        msgpack_values,
    ),
)  # fmt: skip
@example(kind="want", extra={"v": 1, "run": RUN, "count": 2**64 - 1})
def test_plausible_garbage_only_raises_protocol_errors(kind: str, extra: dict[str, Any]) -> None:
    """Maps that look like messages, with random field values: a message or a ProtocolError."""
    base = _presence_value() if kind == "presence" else _want_value()
    base.update(extra)
    try:
        msg = message_from_value(base, run_id=RUN)
    except ProtocolError:
        return
    assert isinstance(msg, Presence if kind == "presence" else Want)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_any_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    try:
        decode(data)
    except ProtocolError:
        return
