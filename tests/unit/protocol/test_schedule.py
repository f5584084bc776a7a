"""The learning-rate schedule (protocol/schedule.py, docs/PROTOCOL.md §6) and its manifest
fields: a smooth step from lr to 0 over the planned budget, in plain binary64."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from seedswarm.protocol.errors import ManifestError
from seedswarm.protocol.manifest import Manifest, TaskSpec
from seedswarm.protocol.schedule import lr_at

BASE = Manifest(name="t", model="tiny", base_hash="0" * 64, task=TaskSpec(kind="causal_lm"))


def test_constant_is_lr_whatever_the_records() -> None:
    assert lr_at(1e-2, "constant", 0, 10**9) == 1e-2


@pytest.mark.parametrize(
    ("held", "want"),
    [(0, 1.0), (250, 0.84375), (500, 0.5), (750, 0.15625), (1000, 0.0), (10**6, 0.0)],
)
def test_decay_is_the_smooth_step_by_hand(held: int, want: float) -> None:
    assert lr_at(1.0, "decay", 1000, held) == want


@given(st.integers(1, 10**9), st.integers(0, 2 * 10**9))
def test_decay_falls_monotonically_from_lr_to_zero(budget: int, held: int) -> None:
    lr = lr_at(1e-2, "decay", budget, held)
    assert 0.0 <= lr <= 1e-2
    assert lr_at(1e-2, "decay", budget, held + 1) <= lr
    # within a few ulp of lr of the exact rational value of the formula: near the end of the
    # budget 1 - x^2 (3 - 2x) cancels, so the error is a few ulp of 1 (times lr), not of the
    # result
    x = Fraction(min(held, budget), budget)
    exact = Fraction(1e-2) * (1 - x * x * (3 - 2 * x))
    assert math.isclose(lr, float(exact), rel_tol=1e-15, abs_tol=1e-2 * 2**-50)


def test_the_manifest_carries_the_schedule_only_when_it_is_not_constant() -> None:
    assert "schedule" not in BASE.to_dict()
    assert "budget" not in BASE.to_dict()
    decayed = BASE.replace(schedule="decay", budget=10_000)
    d = decayed.to_dict()
    assert (d["schedule"], d["budget"]) == ("decay", 10_000)
    assert Manifest.from_dict(d) == decayed
    assert decayed.run_id() != BASE.run_id()


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"schedule": "cosine", "budget": 10}, "schedule must be one of"),
        ({"schedule": "decay", "budget": 0}, "needs a budget"),
        ({"schedule": "constant", "budget": 5}, "a budget goes with schedule decay"),
        ({"schedule": "decay", "budget": -1}, "needs a budget"),
    ],
)
def test_bad_schedules_are_refused(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        BASE.replace(**changes)
