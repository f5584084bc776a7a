"""OrderedLog: a set of records keyed by (node, seq), contiguous prefixes, and a total order."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seedswarm.protocol.errors import ConflictError, ProtocolError
from seedswarm.protocol.log import MAX_CLOCK_JUMP, Offered, OrderedLog, OrderKey
from seedswarm.protocol.records import Frame, Record, q_to_byte

from .strategies import RUN


def fr(node: str, first: int, qs: list[int], clock: int) -> Frame:
    return Frame(RUN, node, first, clock, bytes(q_to_byte(q) for q in qs))


def key(r: Record) -> OrderKey:
    return (r.clock, r.node, r.seq)


# --- offers ---------------------------------------------------------------------------------


def test_in_order_frames() -> None:
    log = OrderedLog()
    got = log.offer(fr("a", 0, [1, 2, 3], clock=1))
    assert [(r.seq, r.q, r.clock) for r in got.new] == [(0, 1, 1), (1, 2, 1), (2, 3, 1)]
    assert got.duplicates == 0
    assert not got.beyond_gap
    assert log.held() == {"a": 3}
    assert log.next_seq("a") == 3
    assert log.next_seq("nobody") == 0
    assert log.held_count() == 3
    assert log.max_clock == 1
    assert log.get("a", 1) == Record("a", 1, 2, 1)
    assert log.get("a", 3) is None
    assert log.get("a", -1) is None
    assert log.get("b", 0) is None
    assert log.records("a", 1, 10) == [Record("a", 1, 2, 1), Record("a", 2, 3, 1)]
    assert log.records("a", -5, 1) == [Record("a", 0, 1, 1)]
    assert log.records("b", 0, 10) == []


def test_duplicates_are_counted_not_stored_twice() -> None:
    log = OrderedLog()
    log.offer(fr("a", 0, [1, 2, 3], clock=1))
    again = log.offer(fr("a", 0, [1, 2, 3], clock=1))
    assert again.new == ()
    assert again.duplicates == 3
    partly = log.offer(fr("a", 2, [3, 4, 5], clock=1))
    assert [r.seq for r in partly.new] == [3, 4]
    assert partly.duplicates == 1
    assert log.held_count() == 5


def test_a_frame_beyond_the_prefix_is_not_kept() -> None:
    """Nobody can park records at a node's future seqs: such a frame only says where the
    author is (gap filling asks for the range)."""
    log = OrderedLog()
    late = log.offer(fr("a", 4, [5, 6], clock=3))
    assert late == Offered((), 0, beyond_gap=True)
    assert log.held() == {}
    assert log.held_count() == 0
    assert log.max_clock == 0  # nothing of it counts
    assert list(log.ordered()) == []
    log.offer(fr("a", 0, [1, 2], clock=1))
    assert log.offer(fr("a", 4, [5, 6], clock=3)).beyond_gap  # still beyond
    log.offer(fr("a", 2, [3, 4], clock=2))
    assert [r.seq for r in log.offer(fr("a", 4, [5, 6], clock=3)).new] == [4, 5]
    assert [(r.seq, r.q, r.clock) for r in log.records("a", 0, 6)] == [
        (0, 1, 1), (1, 2, 1), (2, 3, 2), (3, 4, 2), (4, 5, 3), (5, 6, 3),
    ]  # fmt: skip


def _snapshot(log: OrderedLog) -> tuple[object, ...]:
    nodes = ["a", "b"]
    return (
        log.held(),
        log.held_count(),
        log.max_clock,
        list(log.ordered()),
        [log.next_seq(n) for n in nodes],
        [log.provisional(n) for n in nodes],
        [[log.get(n, s) for s in range(12)] for n in nodes],
    )


def test_equivocation_is_rejected_atomically() -> None:
    log = OrderedLog()
    log.offer(fr("a", 0, [1, 2, 3, 4, 5], clock=1))
    before = _snapshot(log)
    # seqs 3..4 are duplicates, 5..7 would be new, 4 contradicts: nothing is stored
    with pytest.raises(ConflictError) as info:
        log.offer(fr("a", 3, [4, -5, 6, 7, 8], clock=1))
    assert info.value.reason == "equivocation"
    assert _snapshot(log) == before
    # the honest frame is still welcome
    assert log.offer(fr("a", 5, [6, 7, 8], clock=2)).new
    assert log.held() == {"a": 8}


def test_same_record_with_another_clock_is_equivocation() -> None:
    log = OrderedLog()
    log.offer(fr("a", 0, [1, 2], clock=5))
    with pytest.raises(ConflictError) as info:
        log.offer(fr("a", 1, [2], clock=6))
    assert info.value.reason == "equivocation"
    assert log.records("a", 0, 2)[1].clock == 5


def test_a_frame_may_not_jump_the_clock() -> None:
    log = OrderedLog()
    log.offer(fr("a", 0, [1], clock=7))
    assert log.offer(fr("b", 0, [1], clock=7 + MAX_CLOCK_JUMP)).new  # exactly the limit: fine
    with pytest.raises(ProtocolError) as info:
        log.offer(fr("c", 0, [1], clock=7 + 2 * MAX_CLOCK_JUMP + 1))
    assert info.value.reason == "clock_jump"
    assert log.next_seq("c") == 0
    assert log.max_clock == 7 + MAX_CLOCK_JUMP
    assert MAX_CLOCK_JUMP == 2**32  # docs/PROTOCOL.md §9 gives the number


def test_clock_regression() -> None:
    log = OrderedLog()
    log.offer(fr("a", 0, [1, 1], clock=5))
    before = _snapshot(log)
    with pytest.raises(ConflictError) as info:
        log.offer(fr("a", 2, [1], clock=4))  # just after, with an earlier clock
    assert info.value.reason == "clock_regression"
    assert _snapshot(log) == before
    assert log.offer(fr("a", 2, [1], clock=5)).new  # an equal clock is fine


# --- trust: authors' records and third parties' copies ----------------------------------------


def test_a_third_partys_copy_is_provisional_until_its_author_confirms_it() -> None:
    log = OrderedLog()
    log.offer(fr("a", 0, [1, 2], clock=1))
    log.offer(fr("a", 2, [3, 4, 5], clock=2), provisional=True)
    assert log.held() == {"a": 5}
    assert log.provisional("a") == 3
    log.offer(fr("a", 2, [3, 4], clock=2))  # the author's copy of part of it
    assert log.provisional("a") == 1
    log.offer(fr("a", 4, [5, 6], clock=2))  # and of the rest, and one more record
    assert log.provisional("a") == 0
    assert log.held() == {"a": 6}


def test_an_author_frame_beyond_the_trusted_part_confirms_nothing_before_it() -> None:
    log = OrderedLog()
    log.offer(fr("a", 0, [1, 2, 3, 4], clock=1), provisional=True)
    log.offer(fr("a", 2, [3, 4, 5], clock=1))  # the author's, but seqs 0..1 stay unconfirmed
    assert log.held() == {"a": 5}
    assert log.provisional("a") == 5


def test_retract_gives_back_the_provisional_records_only() -> None:
    log = OrderedLog()
    log.offer(fr("a", 0, [1, 2], clock=1))
    log.offer(fr("a", 2, [3, 4], clock=2), provisional=True)
    log.offer(fr("b", 0, [9], clock=3))
    gone = log.retract("a")
    assert gone == [Record("a", 2, 3, 2), Record("a", 3, 4, 2)]
    assert log.held() == {"a": 2, "b": 1}
    assert log.held_count() == 3
    assert log.provisional("a") == 0
    assert log.retract("a") == []
    assert log.retract("nobody") == []
    # the author's own copy is welcome afterwards, whatever the third party had said
    assert [r.q for r in log.offer(fr("a", 2, [7, 8], clock=4)).new] == [7, 8]
    assert [r.clock for r in log.records("a", 0, 4)] == [1, 1, 4, 4]


def test_a_node_of_only_provisional_records_retracts_to_nothing() -> None:
    log = OrderedLog()
    log.offer(fr("a", 0, [1, 2, 3], clock=5), provisional=True)
    assert [r.seq for r in log.retract("a")] == [0, 1, 2]
    assert log.held() == {}
    assert list(log.ordered()) == []
    assert log.offer(fr("a", 0, [4], clock=1)).new  # its clock order starts afresh


# --- own records ----------------------------------------------------------------------------


def own(log: OrderedLog, qs: list[int], clock: int, node: str = "me") -> Frame:
    f = fr(node, log.next_seq(node), qs, clock=clock)
    log.add_own(f)
    return f


def test_add_own() -> None:
    log = OrderedLog()
    log.offer(fr("b", 0, [1], clock=7))
    f = own(log, [1, -1, 127], clock=log.max_clock + 1)
    assert (f.node, f.first_seq, f.clock, [r.q for r in f.records()]) == ("me", 0, 8, [1, -1, 127])
    assert log.held() == {"b": 1, "me": 3}
    assert log.max_clock == 8
    g = own(log, [0], clock=8)
    assert g.first_seq == 3
    assert log.held_count() == 5
    # the own frame, signed and relayed back, is a duplicate
    assert log.offer(Frame(RUN, "me", 0, 8, f.qs)).duplicates == 3


def test_add_own_rejects_and_changes_nothing() -> None:
    log = OrderedLog()
    own(log, [1], clock=5)
    before = (log.held(), log.held_count(), log.max_clock, list(log.ordered()))
    with pytest.raises(ConflictError) as info:
        own(log, [1], clock=4)
    assert info.value.reason == "clock_regression"
    with pytest.raises(ConflictError, match="starts at 0"):
        log.add_own(fr("me", 0, [1], clock=6))  # a seq already taken
    with pytest.raises(ConflictError, match="starts at 3"):
        log.add_own(fr("me", 3, [1], clock=6))  # a hole
    assert (log.held(), log.held_count(), log.max_clock, list(log.ordered())) == before
    assert log.offer(fr("me", 5, [1], clock=9)).beyond_gap  # nothing parks at own future seqs
    own(log, [1], clock=9)
    assert log.held() == {"me": 2}


# --- the total order ------------------------------------------------------------------------


def test_ordered_is_clock_node_seq() -> None:
    log = OrderedLog()
    log.offer(fr("b", 0, [1, 2], clock=1))
    log.offer(fr("a", 0, [3], clock=2))
    log.offer(fr("a", 1, [4], clock=2))
    log.offer(fr("b", 2, [5], clock=2))
    log.offer(fr("a", 2, [6], clock=3))
    got = [(r.clock, r.node, r.seq) for r in log.ordered()]
    assert got == [(1, "b", 0), (1, "b", 1), (2, "a", 0), (2, "a", 1), (2, "b", 2), (3, "a", 2)]
    assert [key(r) for r in log.ordered(after=(2, "a", 1))] == [(2, "b", 2), (3, "a", 2)]
    assert [key(r) for r in log.ordered(after=(2, "a", 99))] == [(2, "b", 2), (3, "a", 2)]
    assert [key(r) for r in log.ordered(after=(1, "c", 0))] == got[2:]
    assert list(log.ordered(after=(3, "a", 2))) == []
    assert list(log.ordered(after=(-1, "", -1))) == list(log.ordered())


# --- delivery order does not matter (hypothesis) --------------------------------------------

NODES = ["a", "b", "c"]


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Frame], list[Frame]]:
    """Honest frames of several nodes, and a delivery: shuffled, with duplicates and parts."""
    originals: list[Frame] = []
    for node in NODES[: draw(st.integers(1, len(NODES)))]:
        seq, clock = 0, draw(st.integers(0, 5))
        for _ in range(draw(st.integers(0, 6))):
            qs = draw(st.lists(st.integers(-127, 127), min_size=1, max_size=5))
            originals.append(fr(node, seq, qs, clock))
            seq += len(qs)
            clock += draw(st.integers(0, 3))
    delivery = list(originals)
    for f in originals:
        for _ in range(draw(st.integers(0, 2))):  # relayed copies, whole or in part
            lo = draw(st.integers(0, f.count - 1))
            hi = draw(st.integers(lo + 1, f.count))
            delivery.append(Frame(RUN, f.node, f.first_seq + lo, f.clock, f.qs[lo:hi]))
    return originals, draw(st.permutations(delivery))


@settings(max_examples=150, deadline=None)
@given(history=histories(), probes=st.lists(st.tuples(st.integers(-1, 25), st.sampled_from(
    ["", "a", "aa", "b", "c", "d"]), st.integers(-1, 40)), max_size=5))  # fmt: skip
def test_delivery_order_does_not_matter(
    history: tuple[list[Frame], list[Frame]], probes: list[OrderKey]
) -> None:
    originals, delivery = history
    expected = sorted((r for f in originals for r in f.records()), key=key)
    reference = OrderedLog()
    for f in originals:
        reference.offer(f)

    log = OrderedLog()
    new_total = 0
    pending = delivery
    while pending:  # what came beyond a gap is sent again, as gap filling would ask for it
        again = []
        for f in pending:
            got = log.offer(f)
            new_total += len(got.new)
            if got.beyond_gap:
                again.append(f)
            # At every moment the ordered view is exactly the contiguous records, in order.
            prefix = [r for r in expected if r.seq < log.next_seq(r.node)]
            assert list(log.ordered()) == prefix
            assert log.held_count() == len(prefix)
        assert len(again) < len(pending)  # every round moves some prefix on
        pending = again

    assert new_total == len(expected)
    assert log.held() == reference.held()
    assert log.held() == {n: log.next_seq(n) for n in NODES if log.next_seq(n)}
    assert list(log.ordered()) == expected == list(reference.ordered())
    assert log.max_clock == reference.max_clock
    for r in expected:
        assert log.get(r.node, r.seq) == r

    # Cursor pagination: pages of any size, resumed from the last key, give the whole order.
    for size in (1, 2, 7):
        pages: list[Record] = []
        cursor: OrderKey | None = None
        while page := list(itertools.islice(log.ordered(after=cursor), size)):
            pages.extend(page)
            cursor = key(page[-1])
        assert pages == expected
    for probe in probes:
        assert list(log.ordered(after=probe)) == [r for r in expected if key(r) > probe]
