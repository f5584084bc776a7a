"""SyncPlanner: which peer to ask for which range, and when to ask again."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from seedswarm.protocol.sync import Request, SyncPlanner


class World:
    """What the planner asks of its caller: what we hold, and who may be asked."""

    def __init__(self, held: Mapping[str, int] | None = None, dead: set[str] | None = None):
        self.held = dict(held or {})
        self.dead = dead or set()

    def holds(self) -> Callable[[str], int]:
        return lambda node: self.held.get(node, 0)

    def eligible(self) -> Callable[[str, str], bool]:
        return lambda holder, node: holder not in self.dead


def plan(p: SyncPlanner, w: World, now: float, **kw: int) -> list[Request]:
    return p.plan(w.holds(), w.eligible(), now, **kw)


def claims(p: SyncPlanner, w: World, *triples: tuple[str, str, int]) -> None:
    for holder, node, end in triples:
        p.claim(holder, node, end, w.held.get(node, 0))


def test_asks_the_node_itself_from_our_prefix() -> None:
    p, w = SyncPlanner("me"), World({"a": 3})
    claims(p, w, ("a", "a", 10), ("b", "a", 12))
    assert plan(p, w, 0.0) == [Request("a", "a", 3, 7)]


def test_without_the_node_asks_the_holder_that_claims_most() -> None:
    p, w = SyncPlanner("me"), World(dead={"a"})
    claims(p, w, ("a", "a", 20), ("b", "a", 8), ("c", "a", 12), ("d", "a", 12))
    assert plan(p, w, 0.0) == [Request("c", "a", 0, 12)]


def test_one_request_per_node_in_node_order() -> None:
    p, w = SyncPlanner("me"), World({"c": 9})
    claims(p, w, ("b", "b", 4), ("b", "a", 2), ("a", "a", 1), ("a", "c", 9))
    # "a" claims fewer of its own records than "b" does, but the author is asked first
    assert plan(p, w, 0.0) == [Request("a", "a", 0, 1), Request("b", "b", 0, 4)]


def test_retries_after_retry_after_rotating_holders() -> None:
    p, w = SyncPlanner("me", retry_after=3.0), World({"x": 2}, dead={"x"})
    claims(p, w, ("b", "x", 5), ("c", "x", 9))
    assert plan(p, w, 100.0) == [Request("c", "x", 2, 7)]
    assert plan(p, w, 101.0) == []  # in flight
    assert plan(p, w, 102.9) == []
    assert plan(p, w, 103.0) == [Request("b", "x", 2, 3)]  # the next holder
    assert plan(p, w, 104.0) == []
    assert plan(p, w, 106.0) == [Request("c", "x", 2, 7)]  # and round again


def test_one_request_in_flight_until_its_answer_is_complete() -> None:
    p, w = SyncPlanner("me", retry_after=3.0), World({"x": 2}, dead={"x"})
    claims(p, w, ("b", "x", 5), ("c", "x", 9))
    assert plan(p, w, 0.0) == [Request("c", "x", 2, 7)]
    w.held["x"] = 4  # part of the answer arrived: asking again would duplicate the rest
    assert plan(p, w, 0.5) == []
    w.held["x"] = 9  # complete, and the holder claims more now: the next range at once
    claims(p, w, ("c", "x", 20))
    assert plan(p, w, 0.6) == [Request("c", "x", 9, 11)]


def test_progress_resets_the_rotation() -> None:
    p, w = SyncPlanner("me", retry_after=3.0), World({"x": 2}, dead={"x"})
    claims(p, w, ("b", "x", 5), ("c", "x", 9))
    assert plan(p, w, 0.0) == [Request("c", "x", 2, 7)]
    # a partial answer, then silence: after retry_after the rest is asked for, from the best
    # holder again (attempt 0), since the last target did answer
    w.held["x"] = 4
    assert plan(p, w, 3.5) == [Request("c", "x", 4, 5)]


def test_never_asks_for_its_own_records() -> None:
    p, w = SyncPlanner("me"), World()
    claims(p, w, ("a", "me", 50), ("a", "a", 1))
    assert plan(p, w, 0.0) == [Request("a", "a", 0, 1)]
    assert p.open_nodes == 1


def test_caps_count_at_max_request() -> None:
    p, w = SyncPlanner("me", max_request=100), World({"a": 50})
    claims(p, w, ("a", "a", 10_000))
    assert plan(p, w, 0.0) == [Request("a", "a", 50, 100)]


def test_nothing_when_up_to_date_and_the_node_leaves_the_open_set() -> None:
    p, w = SyncPlanner("me"), World({"a": 10, "b": 3})
    claims(p, w, ("a", "a", 10), ("a", "b", 3), ("b", "b", 2))
    assert p.open_nodes == 0  # no claim above what we hold: nothing to look at
    assert plan(p, w, 0.0) == []
    claims(p, w, ("b", "b", 5))
    assert p.open_nodes == 1
    w.held["b"] = 5  # it arrived (from anyone): the next plan closes the node
    assert plan(p, w, 0.0) == []
    assert p.open_nodes == 0


def test_an_open_node_waits_while_nobody_may_be_asked() -> None:
    p, w = SyncPlanner("me"), World(dead={"a", "b"})
    claims(p, w, ("a", "a", 10), ("b", "a", 10))
    assert plan(p, w, 0.0) == []
    assert p.open_nodes == 1  # still open: someone may come back
    w.dead = {"a"}
    assert plan(p, w, 1.0) == [Request("b", "a", 0, 10)]


def test_a_fill_clears_the_inflight_request() -> None:
    p, w = SyncPlanner("me", retry_after=3.0), World({"a": 0})
    claims(p, w, ("a", "a", 10))
    assert plan(p, w, 0.0) == [Request("a", "a", 0, 10)]
    w.held["a"] = 10
    assert plan(p, w, 1.0) == []
    # the peer moved on; we ask again at once, not after retry_after
    claims(p, w, ("a", "a", 15))
    assert plan(p, w, 1.5) == [Request("a", "a", 10, 5)]


def test_forget_drops_a_holders_claims() -> None:
    p, w = SyncPlanner("me", retry_after=3.0), World()
    claims(p, w, ("a", "a", 10), ("b", "c", 4))
    assert len(plan(p, w, 0.0)) == 2
    p.forget("a")
    p.forget("never-seen")
    assert p.open_nodes == 1
    assert plan(p, w, 10.0) == [Request("b", "c", 0, 4)]


def test_limit_bounds_the_wants_of_one_plan() -> None:
    p, w = SyncPlanner("me"), World()
    claims(p, w, *[(f"n{i:03d}", f"n{i:03d}", 5) for i in range(300)])
    assert len(plan(p, w, 0.0, limit=64)) == 64
    assert len(plan(p, w, 0.0, limit=64)) == 64  # the next ones, the first are in flight


@settings(max_examples=100, deadline=None)
@given(
    ends=st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 10_000), min_size=1),
    held=st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 10_000)),
)
def test_asking_round_after_round_fetches_every_claimed_record(
    ends: dict[str, int], held: dict[str, int]
) -> None:
    """Fill every request at once; the claims are reached, nothing is asked twice or out of
    the prefix, and the open set empties."""
    p, w = SyncPlanner("me", max_request=4096), World(held)
    for node, end in ends.items():
        p.claim(node, node, end, w.held.get(node, 0))
    for round_ in range(100):
        reqs = plan(p, w, float(round_))
        for r in reqs:
            assert r.first == w.held.get(r.node, 0)
            assert 1 <= r.count <= 4096
            w.held[r.node] = r.first + r.count
        if not reqs:
            break
    for node, end in ends.items():
        assert w.held.get(node, 0) >= end
    plan(p, w, 1000.0)
    assert p.open_nodes == 0
