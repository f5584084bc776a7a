"""The /status rates from the node's Stats, as logic in isolation (no node, no broker)."""

from __future__ import annotations

import time

import pytest

from seedswarm.daemon.node.progress import RATE_WINDOW_S, Stats


def test_rates_count_every_pass_in_the_window_however_many() -> None:
    s = Stats(started=time.monotonic() - 2 * RATE_WINDOW_S)
    for i in range(5000):  # a fast node: far more passes than any fixed-size buffer would keep
        s.record_pass(applied=3 if i % 2 else 1, stepped=i % 2 == 0)
    steps, records = s.rates(time.monotonic())
    assert steps == pytest.approx(2500 / RATE_WINDOW_S)
    assert records == pytest.approx((2500 * 3 + 2500 * 1) / RATE_WINDOW_S)


def test_rates_forget_passes_older_than_the_window() -> None:
    s = Stats(started=time.monotonic() - 3 * RATE_WINDOW_S)
    long_ago = time.monotonic() - 2 * RATE_WINDOW_S
    s.passes.extend((long_ago, 100, True) for _ in range(10))
    s.record_pass(applied=4, stepped=True)
    assert len(s.passes) == 1  # the old ones are trimmed, not only skipped
    assert s.rates(time.monotonic()) == pytest.approx((1 / RATE_WINDOW_S, 4 / RATE_WINDOW_S))
    # and once nothing happened for a whole window, both rates are 0
    assert s.rates(time.monotonic() + 2 * RATE_WINDOW_S) == (0.0, 0.0)
