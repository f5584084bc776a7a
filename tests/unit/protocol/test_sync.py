"""SyncPlanner: which peer to ask for which range, and when to ask again."""

from __future__ import annotations

from seedswarm.protocol.sync import PeerView, Request, SyncPlanner


def peers(*views: PeerView) -> dict[str, PeerView]:
    return {v.node: v for v in views}


def test_asks_the_node_itself_from_our_prefix() -> None:
    p = SyncPlanner("me")
    view = peers(PeerView("a", True, {"a": 10}), PeerView("b", True, {"a": 12}))
    assert p.plan({"a": 3}, view, now=0.0) == [Request("a", "a", 3, 7)]


def test_without_the_node_asks_the_peer_that_holds_most() -> None:
    p = SyncPlanner("me")
    view = peers(
        PeerView("a", False, {"a": 20}),  # gone: not asked
        PeerView("b", True, {"a": 8}),
        PeerView("c", True, {"a": 12}),
        PeerView("d", True, {"a": 12}),
    )
    assert p.plan({}, view, now=0.0) == [Request("c", "a", 0, 12)]


def test_one_request_per_node_in_node_order() -> None:
    p = SyncPlanner("me")
    view = peers(PeerView("b", True, {"b": 4, "a": 2}), PeerView("a", True, {"a": 1, "c": 9}))
    # "a" holds fewer of its own records than "b" does, but the author is asked first
    assert p.plan({"c": 9}, view, now=0.0) == [Request("a", "a", 0, 1), Request("b", "b", 0, 4)]


def test_retries_after_retry_after_rotating_targets() -> None:
    p = SyncPlanner("me", retry_after=3.0)
    view = peers(PeerView("b", True, {"x": 5}), PeerView("c", True, {"x": 9}))
    held = {"x": 2}
    assert p.plan(held, view, now=100.0) == [Request("c", "x", 2, 7)]
    assert p.plan(held, view, now=101.0) == []  # in flight
    assert p.plan(held, view, now=102.9) == []
    assert p.plan(held, view, now=103.0) == [Request("b", "x", 2, 3)]  # the next holder
    assert p.plan(held, view, now=104.0) == []
    assert p.plan(held, view, now=106.0) == [Request("c", "x", 2, 7)]  # and round again


def test_one_request_in_flight_until_its_answer_is_complete() -> None:
    p = SyncPlanner("me", retry_after=3.0)
    view = peers(PeerView("b", True, {"x": 5}), PeerView("c", True, {"x": 9}))
    assert p.plan({"x": 2}, view, now=0.0) == [Request("c", "x", 2, 7)]
    # part of the answer arrived: the rest is still on its way, asking again would duplicate it
    assert p.plan({"x": 4}, view, now=0.5) == []
    # the answer is complete and the peers hold more: the next range goes out at once
    more = peers(PeerView("b", True, {"x": 5}), PeerView("c", True, {"x": 20}))
    assert p.plan({"x": 9}, more, now=0.6) == [Request("c", "x", 9, 11)]


def test_progress_resets_the_rotation() -> None:
    p = SyncPlanner("me", retry_after=3.0)
    view = peers(PeerView("b", True, {"x": 5}), PeerView("c", True, {"x": 9}))
    assert p.plan({"x": 2}, view, now=0.0) == [Request("c", "x", 2, 7)]
    # a partial answer, then silence: after retry_after the rest is asked for, from the best
    # holder again (attempt 0), since the last target did answer
    assert p.plan({"x": 4}, view, now=3.5) == [Request("c", "x", 4, 5)]


def test_never_asks_for_its_own_records() -> None:
    p = SyncPlanner("me")
    view = peers(PeerView("a", True, {"me": 50, "a": 1}))
    assert p.plan({}, view, now=0.0) == [Request("a", "a", 0, 1)]
    # its own presence, echoed back by the broker, is no peer either
    own = peers(PeerView("me", True, {"z": 5}))
    assert p.plan({}, own, now=0.0) == []


def test_caps_count_at_max_request() -> None:
    p = SyncPlanner("me", max_request=100)
    view = peers(PeerView("a", True, {"a": 10_000}))
    assert p.plan({"a": 50}, view, now=0.0) == [Request("a", "a", 50, 100)]


def test_nothing_when_up_to_date() -> None:
    p = SyncPlanner("me")
    view = peers(PeerView("a", True, {"a": 10, "b": 3}), PeerView("b", True, {"b": 2}))
    assert p.plan({"a": 10, "b": 3}, view, now=0.0) == []
    assert p.plan({"a": 11, "b": 5}, view, now=0.0) == []
    assert p.plan({}, {}, now=0.0) == []


def test_a_fill_clears_the_inflight_request() -> None:
    p = SyncPlanner("me", retry_after=3.0)
    view = peers(PeerView("a", True, {"a": 10}))
    assert p.plan({"a": 0}, view, now=0.0) == [Request("a", "a", 0, 10)]
    assert p.plan({"a": 10}, view, now=1.0) == []
    # the peer moved on; we ask again at once, not after retry_after
    later = peers(PeerView("a", True, {"a": 15}))
    assert p.plan({"a": 10}, later, now=1.5) == [Request("a", "a", 10, 5)]


def test_forget() -> None:
    p = SyncPlanner("me", retry_after=3.0)
    view = peers(PeerView("a", True, {"a": 10}))
    assert p.plan({}, view, now=0.0) == [Request("a", "a", 0, 10)]
    assert p.plan({}, view, now=1.0) == []
    p.forget("a")
    p.forget("never-asked")
    assert p.plan({}, view, now=1.0) == [Request("a", "a", 0, 10)]
