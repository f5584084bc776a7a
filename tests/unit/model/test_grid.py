"""The exact grid (model/grid.py, protocol/grid.py): exponents, snapping, step counts, the
int64 state and the weights derived from it, and headroom."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seedswarm.model.grid import (
    FP32_BITS,
    TensorGrid,
    grid_exponent,
    headroom,
    make_grid,
    snap_,
    steps_of,
    weights_of_,
)
from seedswarm.protocol.grid import (
    STATE_MAX,
    fp32_of_int,
    headroom_bits,
    records_left,
    weight,
    wrap,
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
    assert Fraction(max_abs) * 2**headroom < Fraction(2) ** (FP32_BITS + e)
    assert Fraction(max_abs) * 2**headroom >= Fraction(2) ** (FP32_BITS + e - 1)


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


def test_headroom_of_the_int64_state() -> None:
    assert headroom_bits(0, 1) == 63.0
    assert headroom_bits(2**40 - 1, 1) == pytest.approx(23.0)
    assert headroom_bits(2**62 - 8, 8) == pytest.approx(1.0)
    # records of the largest update left: (2**63 - 1 - max - eps) // (127 * 2**shift)
    assert records_left(0, 1, 0) == (STATE_MAX - 1) // 127
    assert records_left(2**20, 3, 6) == (STATE_MAX - 2**20 - 3) // (127 * 64)
    assert records_left(STATE_MAX, 1, 0) == 0
    grids = [TensorGrid("a", 0, -21, 4, 33, 6), TensorGrid("b", 1, -10, 4, 1, -5)]
    h = headroom(grids, [2**21, 2**30])
    assert h.tensor == "a"  # fewest records left: a moves 127 * 64 a record, b 4
    assert h.records == records_left(2**21, 33, 6)
    assert h.bits == pytest.approx(63 - math.log2(2**30 + 1))  # b has the largest |n|
    assert h.coarse == 1  # b's |n| is beyond 2**24: its weights are coarser than its grid
    # the default grid (h = 3, unit 2**-15) of a weight of 0.5 lasts ~10**15 worst-case records
    (g,) = make_grid([("w", torch.tensor([0.5]))], epsilon=1e-3, unit_exp=-15, headroom_exp=3,
                     grid_min_exp=-23)  # fmt: skip
    assert headroom([g], [2**20]).records > 10**15


@pytest.mark.parametrize(
    ("n", "want"),
    [
        (0, 0.0),
        (2**24 - 1, 2.0**24 - 1),
        (2**24, 2.0**24),
        (2**24 + 1, 2.0**24),  # a tie: to the even significand
        (2**24 + 3, 2.0**24 + 4),  # a tie: up to even
        (2**24 + 2, 2.0**24 + 2),
        (-(2**24) - 1, -(2.0**24)),
        (2**25 + 2, 2.0**25),  # tie at ulp 4: 2**25 + 2 -> 2**25 (even)
        (2**25 + 3, 2.0**25 + 4),
        (2**53 + 1, 2.0**53),
        (2**62 + 2**38 + 1, 2.0**62 + 2**39),  # just above half an ulp (2**38): up
        (STATE_MAX, 2.0**63),
        (-(2**63), -(2.0**63)),
    ],
)
def test_fp32_of_int_rounds_to_nearest_even(n: int, want: float) -> None:
    assert fp32_of_int(n) == want
    # numpy's int64 -> float32 conversion is the same IEEE rounding
    assert float(np.array([n], dtype=np.int64).astype(np.float32)[0]) == want


@settings(max_examples=500, deadline=None)
@given(n=st.integers(min_value=-(2**63), max_value=2**63 - 1), exp=st.integers(-100, 60))
def test_weights_of_the_state_equal_the_integer_reference(n: int, exp: int) -> None:
    """torch's int64 -> fp32 (the torch backend and the engine rewrite weights with it) is the
    integer reference's round to nearest even, times an exact power of two."""
    out = torch.empty(3)
    weights_of_(out, torch.tensor([n, -n if n > -(2**63) else 0, 0], dtype=torch.int64), exp)
    assert out[0].item() == weight(n, exp)
    assert not bool(torch.signbit(out[2])), "zero is +0"


def test_wrap_is_twos_complement() -> None:
    assert wrap(STATE_MAX + 1) == -(2**63)
    assert wrap(-(2**63) - 1) == STATE_MAX
    assert wrap(5) == 5


def test_steps_of_and_weights_of_round_trip_on_the_grid() -> None:
    gen = torch.Generator().manual_seed(7)
    t = torch.randn(1000, generator=gen)
    n = steps_of(t, -20)
    assert n.dtype == torch.int64
    w = torch.empty_like(t)
    weights_of_(w, n, -20)
    snapped = t.clone()
    snap_(snapped, -20)
    assert_same_bits(w, snapped, "weights of the state are the snapped base")
    assert torch.equal(steps_of(w, -20), n)
