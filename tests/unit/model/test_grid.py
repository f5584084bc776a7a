"""The exact grid (model/grid.py): exponents, snapping, step counts and headroom."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seedswarm.model.grid import (
    EXACT_BITS,
    TensorGrid,
    grid_exponent,
    headroom_bits,
    make_grid,
    snap_,
)

from .helpers import assert_same_bits, bits


@pytest.mark.parametrize(
    ("max_abs", "headroom", "grid_min", "want"),
    [
        (1.0, 3, -100, -20),  # 1 = 0.5 * 2**1: 1 + 3 - 24
        (0.5, 3, -100, -21),  # a power of two starts its binade
        (math.nextafter(1.0, 0.0), 3, -100, -21),  # just below a power of two: previous binade
        (math.nextafter(1.0, 2.0), 3, -100, -20),
        (0.75, 3, -100, -21),
        (2.0**-10, 3, -100, -30),
        (3.0, 0, -100, -22),  # no headroom: 3 = 0.75 * 2**2
        (3.0, 12, -100, -10),
        (1e-6, 3, -20, -20),  # clamped at grid_min_exp
        (1e-6, 3, -40, -40),  # 1e-6 = 0.52 * 2**-19: -19 + 3 - 24 = -40
        (0.0, 3, -28, -28),  # an all-zero tensor sits on grid_min_exp
        (0.0, 0, -7, -7),
        (2.0**100, 3, -100, 80),
    ],
)
def test_grid_exponent_by_hand(max_abs: float, headroom: int, grid_min: int, want: int) -> None:
    assert grid_exponent(max_abs, headroom_exp=headroom, grid_min_exp=grid_min) == want


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_grid_exponent_refuses_non_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        grid_exponent(bad, headroom_exp=3, grid_min_exp=-28)


@settings(max_examples=200, deadline=None)
@given(
    max_abs=st.floats(min_value=1e-30, max_value=1e30, allow_nan=False, allow_infinity=False),
    headroom=st.integers(min_value=0, max_value=12),
)
def test_grid_exponent_gives_exact_headroom_and_is_tight(max_abs: float, headroom: int) -> None:
    """max * 2**headroom < 2**(24 + e), and (unclamped) not by more than a factor of two."""
    e = grid_exponent(max_abs, headroom_exp=headroom, grid_min_exp=-200)
    assert Fraction(max_abs) * 2**headroom < Fraction(2) ** (EXACT_BITS + e)
    assert Fraction(max_abs) * 2**headroom >= Fraction(2) ** (EXACT_BITS + e - 1)


@pytest.mark.parametrize("exp", [-30, -20, -3, 0, 4])
def test_snap_puts_every_value_on_the_grid_and_is_idempotent(exp: int) -> None:
    gen = torch.Generator().manual_seed(exp + 100)
    t = torch.randn(5000, generator=gen) * math.ldexp(1.0, exp + 12)
    t[:5] = torch.tensor([0.0, -0.0, math.ldexp(-0.3, exp), math.ldexp(0.3, exp), 1e-30])
    orig = t.clone().double()
    snap_(t, exp)
    n = t.double() * math.ldexp(1.0, -exp)
    assert torch.equal(n, n.round()), "every value is a whole number of grid steps"
    assert float((t.double() - orig).abs().max()) <= math.ldexp(0.5, exp)
    # the same as round-half-even in float64
    want = np.round(orig.numpy() / math.ldexp(1.0, exp)) * math.ldexp(1.0, exp)
    assert np.array_equal(t.numpy().astype(np.float64), want)
    again = t.clone()
    snap_(again, exp)
    assert_same_bits(again, t, "snap is idempotent")
    zeros = t == 0
    assert int(zeros.sum()) >= 4
    assert not bool(torch.signbit(t[zeros]).any()), "snapped zeros are +0, never -0"


def test_snap_rounds_ties_to_even() -> None:
    e = -4
    halves = torch.tensor([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5], dtype=torch.float32)
    t = halves * math.ldexp(1.0, e)
    snap_(t, e)
    assert (t * math.ldexp(1.0, -e)).tolist() == [0.0, 2.0, 2.0, 4.0, 0.0, -2.0, -2.0]
    assert bits(t)[[0, 4]].tolist() == [0, 0]  # +0 bit patterns


@pytest.mark.parametrize(
    ("q", "shift", "want"),
    [
        (1, 0, 1),
        (-127, 0, -127),
        (3, 4, 48),
        (-3, 4, -48),
        (127, 8, 127 * 256),
        (0, 8, 0),
        (1, -1, 0),  # 0.5 -> 0 (even)
        (3, -1, 2),  # 1.5 -> 2
        (5, -1, 2),  # 2.5 -> 2
        (-1, -1, 0),
        (-3, -1, -2),
        (-5, -1, -2),
        (2, -2, 0),  # 0.5
        (6, -2, 2),  # 1.5
        (10, -2, 2),  # 2.5
        (7, -2, 2),  # 1.75
        (127, -7, 1),  # 0.99
        (64, -7, 0),  # 0.5
        (127, -20, 0),
    ],
)
def test_update_steps_by_hand(q: int, shift: int, want: int) -> None:
    g = TensorGrid("w", 0, -20, 10, 1, shift)
    assert g.update_steps(q) == want


@settings(max_examples=300, deadline=None)
@given(q=st.integers(min_value=-127, max_value=127), shift=st.integers(min_value=-30, max_value=30))
def test_update_steps_is_q_times_two_to_shift_rounded_half_even(q: int, shift: int) -> None:
    g = TensorGrid("w", 0, -20, 10, 1, shift)
    assert g.update_steps(q) == round(Fraction(q) * Fraction(2) ** shift)  # Fraction: half-even


def test_make_grid_tensor_ids_steps_and_scales() -> None:
    named = [
        ("a.bias", torch.zeros(3)),
        ("b.weight", torch.tensor([0.1, -0.7, 0.2])),
        ("c.weight", torch.tensor([3.0, 1.0])),
        ("d.empty", torch.zeros(0)),
        ("e.big", torch.tensor([200.0])),
    ]
    grids = make_grid(named, epsilon=1e-3, unit_exp=-20, headroom_exp=3, grid_min_exp=-28)
    assert [g.tensor_id for g in grids] == [0, 1, 2, 3, 4]
    assert [g.name for g in grids] == [n for n, _ in named]
    assert [g.numel for g in grids] == [3, 3, 2, 0, 1]
    # 0.7 = 0.7*2**0 -> 0+3-24 = -21; 3 = 0.75*2**2 -> -19; 200 = 0.78*2**8 -> -13
    assert [g.exp for g in grids] == [-28, -21, -19, -28, -13]
    assert [g.unit_shift for g in grids] == [8, 1, -1, 8, -7]
    assert [g.scale for g in grids] == [math.ldexp(1.0, g.exp) for g in grids]
    for g in grids:
        assert g.eps_steps == max(1, round(math.ldexp(1e-3, -g.exp)))
        assert g.eps_steps >= 1
    # an epsilon far below the grid still perturbs by one step
    coarse = make_grid(named, epsilon=1e-12, unit_exp=-20, headroom_exp=3, grid_min_exp=-28)
    assert [g.eps_steps for g in coarse] == [1, 1, 1, 1, 1]


def test_headroom_bits() -> None:
    g = TensorGrid("w", 0, -10, 4, 1, 0)
    assert headroom_bits(torch.zeros(4), g) == 24.0 - math.log2(1)
    t = torch.tensor([0.0, math.ldexp(2**20 - 1, -10), -1.0, 0.5])
    assert headroom_bits(t, g) == pytest.approx(4.0)  # (2**20 - 1) + eps 1 = 2**20 steps
    g8 = TensorGrid("w", 0, -10, 4, 8, 0)
    assert headroom_bits(torch.tensor([math.ldexp(2**23 - 8, -10)]), g8) == pytest.approx(1.0)
    # beyond the exact range: negative
    assert headroom_bits(torch.tensor([math.ldexp(2**25, -10)]), g) < 0
    # a tensor made by make_grid starts with at least headroom_exp doublings left, minus eps
    t = torch.tensor([0.9, -0.3])
    (grid,) = make_grid([("w", t)], epsilon=1e-3, unit_exp=-20, headroom_exp=3, grid_min_exp=-40)
    snap_(t, grid.exp)
    assert 3.0 - 0.01 < headroom_bits(t, grid) <= 4.0
