"""Version vectors: digest, dominance, and their laws against two reference functions (the
merge of vectors and what one lacks of another), which only these tests use."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from seedswarm.protocol import vv

from .strategies import node_ids

vectors = st.dictionaries(node_ids, st.integers(0, 2**63), max_size=8)


def merge_max(vectors: Iterable[vv.VersionVector]) -> dict[str, int]:
    """The vector that holds what any of ``vectors`` holds (a reference for the laws)."""
    out: dict[str, int] = {}
    for v in vectors:
        for n, s in v.items():
            if s > out.get(n, 0):
                out[n] = s
    return vv.normalise(out)


def missing(mine: vv.VersionVector, theirs: vv.VersionVector) -> dict[str, tuple[int, int]]:
    """Per node, the range ``[first, end)`` that ``theirs`` holds and ``mine`` lacks."""
    return {n: (mine.get(n, 0), s) for n, s in sorted(theirs.items()) if s > mine.get(n, 0)}


def test_digest_is_the_documented_hash() -> None:
    packed = msgpack.packb({"a": 3, "b": 10}, use_bin_type=True)
    expected = hashlib.sha256(b"seedswarm/vv/v1" + packed).hexdigest()[:16]
    assert vv.digest({"b": 10, "a": 3}) == expected
    assert len(vv.digest({})) == 16
    int(vv.digest({}), 16)  # hex


@settings(max_examples=100, deadline=None)
@given(v=vectors, order=st.randoms(use_true_random=False))
def test_digest_is_order_independent_and_ignores_zeros(
    v: dict[str, int], order: random.Random
) -> None:
    items = list(v.items())
    order.shuffle(items)
    shuffled = dict(items)
    assert vv.digest(shuffled) == vv.digest(v)
    with_zero = {**v, "zzz-not-there": 0}
    if v.get("zzz-not-there", 0) == 0:
        assert vv.digest(with_zero) == vv.digest(v)
    assert vv.digest(v) == vv.digest(vv.normalise(v))


def test_digest_distinguishes_vectors() -> None:
    seen = {vv.digest({}), vv.digest({"a": 1}), vv.digest({"a": 2}), vv.digest({"b": 1}),
            vv.digest({"a": 1, "b": 1})}  # fmt: skip
    assert len(seen) == 5
    assert vv.digest({"a": 0}) == vv.digest({})


def test_normalise_and_total() -> None:
    assert vv.normalise({"b": 2, "a": 0, "c": 1}) == {"b": 2, "c": 1}
    assert list(vv.normalise({"b": 2, "a": 5})) == ["a", "b"]
    assert vv.total({"a": 3, "b": 4, "c": 0}) == 7
    assert vv.total({}) == 0


def test_merge_max() -> None:
    assert merge_max([]) == {}
    assert merge_max([{"a": 3, "b": 1}, {"a": 1, "c": 4}, {"b": 0, "d": 0}]) == {
        "a": 3, "b": 1, "c": 4,
    }  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(a=vectors, b=vectors)
def test_merge_dominates_missing_laws(a: dict[str, int], b: dict[str, int]) -> None:
    m = merge_max([a, b])
    assert m == merge_max([b, a])
    assert vv.dominates(m, a)
    assert vv.dominates(m, b)
    assert vv.dominates(a, a)
    assert vv.dominates(a, {})
    assert missing(a, a) == {}
    # What b has beyond a, added to a, gives the merge.
    filled = dict(a)
    for node, (first, end) in missing(a, b).items():
        assert first == a.get(node, 0) < end == b[node]
        filled[node] = end
    assert vv.normalise(filled) == m
    assert vv.dominates(a, b) == (missing(a, b) == {})


def test_dominates_and_missing() -> None:
    assert vv.dominates({"a": 3, "b": 1}, {"a": 2})
    assert not vv.dominates({"a": 3}, {"a": 2, "b": 1})
    assert vv.dominates({"a": 3}, {"a": 3, "b": 0})
    assert missing({"a": 3}, {"a": 5, "b": 2, "c": 0}) == {"a": (3, 5), "b": (0, 2)}
    assert missing({"a": 5}, {"a": 3}) == {}
    assert list(missing({}, {"c": 1, "a": 1, "b": 1})) == ["a", "b", "c"]
