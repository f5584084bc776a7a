"""The retained manifest (docs/PROTOCOL.md §7, §9): what a node publishes on manifest/<run id>,
and how a joiner that knows only the run id checks what it gets there."""

from __future__ import annotations

import fnmatch
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seedswarm.protocol import canonical
from seedswarm.protocol.errors import DecodeError, ManifestError, ProtocolError, WrongRunError
from seedswarm.protocol.manifest import RUN_DOMAIN, Manifest, TaskSpec
from seedswarm.protocol.retained import (
    MAX_MANIFEST_BYTES,
    manifest_payload,
    manifest_subscription,
    read_retained_manifest,
)
from seedswarm.protocol.session import Session

from .strategies import KEY_A

OPEN = Manifest(name="t", model="tiny", base_hash="0" * 64, task=TaskSpec(kind="causal_lm"))
SIGNED = OPEN.replace(keys=(("a", KEY_A.public_hex()),), name="signed-run")
PREFIX = "seedswarm"


def read(topic: str, payload: bytes, run_id: bytes) -> Manifest | None:
    return read_retained_manifest(topic, payload, prefix=PREFIX, run_id=run_id)


def reason(topic: str, payload: bytes, run_id: bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        read(topic, payload, run_id)
    return info.value.reason


def topic_of(name: str, run_id: bytes) -> str:
    return f"{PREFIX}/{name}/manifest/{run_id.hex()}"


def _matches(pattern: str, topic: str) -> bool:
    """MQTT's '+' (one level), enough for the one filter a joiner uses."""
    levels, want = topic.split("/"), pattern.split("/")
    return len(levels) == len(want) and all(
        w == "+" or fnmatch.fnmatchcase(t, w) for t, w in zip(levels, want, strict=True)
    )


@pytest.mark.parametrize("m", [OPEN, SIGNED])
def test_a_node_publishes_its_manifest_retained_and_a_joiner_reads_it_back(m: Manifest) -> None:
    out = Session(m, "a").manifest_message()
    assert out.retain
    assert out.kind == "manifest"
    assert out.topic == topic_of(m.name, m.run_id())
    assert out.payload == m.canonical_bytes() == manifest_payload(m)
    assert canonical.sha256(RUN_DOMAIN, out.payload)[:8] == m.run_id()
    sub = manifest_subscription(PREFIX, m.run_id())
    assert sub.qos == 1
    assert _matches(sub.topic, out.topic)  # the joiner knows the run id, not the run's name
    assert not _matches(sub.topic, topic_of(m.name, bytes(8)))
    assert read(out.topic, out.payload, m.run_id()) == m


def test_a_cleared_retained_message_is_no_manifest_and_no_fault() -> None:
    assert read(topic_of("t", OPEN.run_id()), b"", OPEN.run_id()) is None


def test_the_bytes_of_another_run_are_wrong_run() -> None:
    rid = OPEN.run_id()
    with pytest.raises(WrongRunError) as info:
        read(topic_of("t", rid), OPEN.replace(lr=2e-4).canonical_bytes(), rid)
    assert info.value.reason == "wrong_run"
    assert info.value.run_id == OPEN.replace(lr=2e-4).run_id()
    # the JSON text, or the msgpack of the same map in another key order: not the run's bytes
    assert reason(topic_of("t", rid), OPEN.to_json().encode(), rid) == "wrong_run"
    reordered = msgpack.packb(dict(reversed(OPEN.to_dict().items())), use_bin_type=True)
    assert reason(topic_of("t", rid), reordered, rid) == "wrong_run"


def _self_certified(value: Any) -> tuple[bytes, bytes]:
    """Bytes and the run id they hash to (a stand-in for a 64-bit collision)."""
    payload: bytes = msgpack.packb(value, use_bin_type=True)
    return payload, canonical.sha256(RUN_DOMAIN, payload)[:8]


def test_bytes_that_hash_to_the_run_id_are_still_checked() -> None:
    d = OPEN.to_dict()
    payload, rid = _self_certified(dict(reversed(d.items())))  # not canonical: keys unsorted
    assert reason(topic_of("t", rid), payload, rid) == "malformed"
    payload, rid = _self_certified([d])
    assert reason(topic_of("t", rid), payload, rid) == "bad_type"
    payload, rid = _self_certified(d)
    assert reason(topic_of("t", rid), payload + b"\x00", rid) == "wrong_run"
    payload, rid = _self_certified(d)
    assert reason(topic_of("t", rid), payload[:-1], rid) == "wrong_run"
    cut = payload[:-1]
    rid = canonical.sha256(RUN_DOMAIN, cut)[:8]
    assert reason(topic_of("t", rid), cut, rid) == "truncated"
    payload, rid = _self_certified(d | {"format": 4})  # the run's, but a newer protocol
    with pytest.raises(ManifestError, match="format 4"):
        read(topic_of("t", rid), payload, rid)
    payload, rid = _self_certified(d | {"unknown": 1})
    with pytest.raises(ManifestError, match="unknown"):
        read(topic_of("t", rid), payload, rid)


def test_a_manifest_under_another_run_name_is_bad_topic() -> None:
    rid = OPEN.run_id()
    assert reason(topic_of("other", rid), OPEN.canonical_bytes(), rid) == "bad_topic"


@pytest.mark.parametrize(
    "topic",
    [
        f"{PREFIX}/t/manifest/{OPEN.run_id().hex().upper()}",
        f"{PREFIX}/t/manifest/{OPEN.run_id().hex()[:15]}",
        f"{PREFIX}/t/manifest/{bytes(8).hex()}",  # another run id than the one asked for
        f"{PREFIX}/t/manifests/{OPEN.run_id().hex()}",
        f"{PREFIX}/t/manifest/{OPEN.run_id().hex()}/x",
        f"{PREFIX}/t!/manifest/{OPEN.run_id().hex()}",
        f"other/t/manifest/{OPEN.run_id().hex()}",
        f"{PREFIX}/manifest/{OPEN.run_id().hex()}",
    ],
)
def test_topics_that_are_not_this_runs_manifest_topic(topic: str) -> None:
    assert reason(topic, OPEN.canonical_bytes(), OPEN.run_id()) == "bad_topic"


def test_size_limit() -> None:
    rid = OPEN.run_id()
    assert reason(topic_of("t", rid), b"\x80" * (MAX_MANIFEST_BYTES + 1), rid) == "oversized"
    huge = OPEN.replace(model="m" * MAX_MANIFEST_BYTES)
    with pytest.raises(ManifestError, match="1 MiB"):
        manifest_payload(huge)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_manifest_nothing_or_an_error(data: bytes) -> None:
    rid = canonical.sha256(RUN_DOMAIN, data)[:8]  # they hash to the run id: every check runs
    try:
        got = read(topic_of("t", rid), data, rid)
    except (DecodeError, ManifestError):
        return
    assert got is None or got.canonical_bytes() == data
