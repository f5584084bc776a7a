"""RelayWatch alone (protocol/relay_watch.py): which relays a node follows, and when it stops.
The session's use of it, over real frames and bundles, is tested in test_relays.py."""

from __future__ import annotations

from seedswarm.protocol.relay_watch import Late, RelayWatch


def watch() -> RelayWatch:
    return RelayWatch(["r0", "r1"], relay_timeout=10.0, relay_echo=5.0, distrust_for=600.0)


def test_only_a_relay_the_run_names_and_whose_bundles_come_is_followed() -> None:
    w = watch()
    for r in ("r0", "r9"):
        w.bundle_came(r, 0.0)
    assert not w.trusted("r9", 0.0)
    assert w.up(1.0, lambda r: True) == ["r0"]
    assert w.up(1.0, lambda r: r != "r0") == []  # its presence says it is gone
    assert w.up(10.5, lambda r: True) == []  # no bundle for relay_timeout


def test_a_followed_relay_that_brings_no_own_frame_back_is_late_once() -> None:
    w = watch()
    w.bundle_came("r0", 0.0)
    assert w.up(0.0, lambda r: True) == ["r0"]
    assert w.check(own_stored=8, now=1.0) == []  # durable at 1.0: due by 6.0
    w.echoed("r0", 4)  # half of it came back
    assert w.check(own_stored=8, now=5.9) == []
    assert w.check(own_stored=8, now=6.0) == [Late("r0", 4, 8)]
    w.echoed("r0", 8)
    assert w.check(own_stored=8, now=6.1) == []


def test_a_caught_relay_is_not_followed_until_its_time_out_ends_then_checked_afresh() -> None:
    w = watch()
    w.bundle_came("r0", 0.0)
    w.up(0.0, lambda r: True)
    w.echoed("r0", 8)
    w.distrust("r0", 1.0, "tampered")
    assert w.distrusted() == {"r0": "tampered"}
    w.bundle_came("r0", 2.0)
    assert w.up(2.0, lambda r: True) == []
    assert not w.trusted("r0", 600.9)
    w.bundle_came("r0", 601.0)
    assert w.up(601.0, lambda r: True) == ["r0"]
    assert w.distrusted() == {}
    # what it echoed before it was caught counts no more: own records 0..7, durable since
    # 601.5, must come back again
    assert w.check(own_stored=8, now=601.5) == []
    assert w.check(own_stored=8, now=606.5) == [Late("r0", 0, 8)]


def test_the_relays_that_brought_a_nodes_records_are_blamed_once() -> None:
    w = watch()
    w.delivered("n1", "r1")
    w.delivered("n1", "r0")
    assert w.blame("n1") == ["r0", "r1"]
    assert w.blame("n1") == []


def test_the_own_marks_it_keeps_do_not_grow_with_the_run() -> None:
    w = watch()
    for i in range(10_000):
        w.check(own_stored=i, now=float(i))
    assert len(w._own_at) <= 4 * 5 + 1
