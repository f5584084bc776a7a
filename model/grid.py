"""The exact grid: why replicas agree bit for bit whatever order records arrive in.

Each trainable fp32 tensor t lives on a power-of-two grid 2**e_t: every value is n * 2**e_t with
an integer |n| < 2**24. Sums of such values are exact in fp32 while they stay in that range, so
applying a *set* of records gives the same bits in any order and on any device.

    m_t   = max |theta0_t|                      (the base tensor as loaded, in fp32)
    e_t   = max(frexp_exponent(m_t) + headroom_exp - 24, grid_min_exp)   (grid_min_exp if m_t = 0)
            -> m_t * 2**headroom_exp < 2**(24 + e_t): room for the weights to grow 2**headroom_exp x
    snap  : theta_t = round_half_even(theta0_t / 2**e_t) * 2**e_t
    eps_t = max(1, round_half_even(epsilon / 2**e_t))        perturbation, in grid steps
    du_t  = round_half_even(q * 2**(unit_exp - e_t))         update of a record q, in grid steps

A record (seed, q) changes tensor t by ``-du_t(q) * 2**e_t * z`` with z in {-1, +1}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

EXACT_BITS = 24  # fp32 significand: integers below 2**24 are exact


def grid_exponent(max_abs: float, *, headroom_exp: int, grid_min_exp: int) -> int:
    """The grid exponent of a tensor whose largest magnitude is ``max_abs``."""
    if not math.isfinite(max_abs):
        raise ValueError("a weight is not finite")
    if max_abs == 0.0:
        return grid_min_exp
    _, k = math.frexp(max_abs)  # max_abs = f * 2**k, f in [0.5, 1)
    return max(k + headroom_exp - EXACT_BITS, grid_min_exp)


@dataclass(frozen=True, slots=True)
class TensorGrid:
    """Where one trainable tensor sits: its id in the sign stream, its grid and step sizes."""

    name: str
    tensor_id: int
    exp: int
    numel: int
    eps_steps: int
    unit_shift: int  # unit_exp - exp

    @property
    def scale(self) -> float:
        return math.ldexp(1.0, self.exp)

    def update_steps(self, q: int) -> int:
        """Grid steps of the update of a record with byte ``q`` (before the minus sign)."""
        if self.unit_shift >= 0:
            return q << self.unit_shift
        return round(math.ldexp(q, self.unit_shift))


def snap_(tensor: torch.Tensor, exp: int) -> None:
    """Round ``tensor`` in place to the nearest multiple of 2**exp (ties to even).

    Zeros come out as +0: a small negative weight rounds to -0, which a backend that writes
    every element (x + 0 = +0) and one that skips a tensor whose steps are all zero would
    otherwise leave with different bits.
    """
    with torch.no_grad():
        tensor.mul_(math.ldexp(1.0, -exp)).round_().mul_(math.ldexp(1.0, exp)).add_(0.0)


def make_grid(
    named: list[tuple[str, torch.Tensor]],
    *,
    epsilon: float,
    unit_exp: int,
    headroom_exp: int,
    grid_min_exp: int,
) -> list[TensorGrid]:
    """Grids for the trainable tensors, given sorted by name (the order gives the tensor ids)."""
    out = []
    for tensor_id, (name, t) in enumerate(named):
        max_abs = float(t.detach().abs().max().item()) if t.numel() else 0.0
        exp = grid_exponent(max_abs, headroom_exp=headroom_exp, grid_min_exp=grid_min_exp)
        eps_steps = max(1, round(math.ldexp(epsilon, -exp)))
        out.append(TensorGrid(name, tensor_id, exp, t.numel(), eps_steps, unit_exp - exp))
    return out


def headroom_bits(tensor: torch.Tensor, grid: TensorGrid) -> float:
    """How many doublings the tensor can still take before it leaves its exact range.

    Negative means exactness is already lost. The perturbation's own size is counted in.
    """
    max_steps = float(tensor.detach().abs().max().item()) * math.ldexp(1.0, -grid.exp)
    top = max_steps + grid.eps_steps
    if top <= 0:
        return float(EXACT_BITS)
    return EXACT_BITS - math.log2(top)
