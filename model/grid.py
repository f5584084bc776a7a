"""The exact grid on tensors: integer grid steps as the state, fp32 weights derived from them.

The arithmetic itself (and why it is exact for any run length) is protocol/grid.py and
docs/PROTOCOL.md §5. In a replica every trainable tensor t is two buffers of the same shape:

    n_t : int64   the state, whole grid steps of 2**e_t (two's complement, wrapping)
    w_t : fp32    the weights the model computes with, always fp32(n_t) * 2**e_t

Every change goes to ``n`` and ``w`` is rewritten from it in the same pass (model/kernels.py),
so ``w`` is a function of the set of records applied, like ``n``.

    m_t   = max |theta0_t|                      (the base tensor as loaded, in fp32)
    e_t   = max(frexp_exponent(m_t) + headroom_exp - 24, grid_min_exp)   (grid_min_exp if m_t = 0)
    n_t   = round_half_even(theta0_t / 2**e_t)
    eps_t = max(1, round_half_even(epsilon / 2**e_t))        perturbation, in grid steps
    du_t  = round_half_even(q * 2**(unit_exp - e_t))         update of a record q, in grid steps
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from seedswarm.protocol.grid import (
    FP32_BITS,
    eps_steps,
    grid_exponent,
    update_steps,
)
from seedswarm.protocol.grid import headroom_bits as _headroom_bits
from seedswarm.protocol.grid import records_left as _records_left

__all__ = [
    "FP32_BITS",
    "Headroom",
    "TensorGrid",
    "grid_exponent",
    "make_grid",
    "snap_",
    "steps_of",
    "weights_of_",
]


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
        return update_steps(q, self.unit_shift)


@dataclass(frozen=True, slots=True)
class Headroom:
    """How far the state is from the end of its exact range, as a guaranteed bound.

    ``bits``: doublings of the largest ``|n|`` left before the 64-bit accumulator ends;
    ``records``: records of the largest update (|q| = 127, one sign) that still fit;
    ``tensor``: the tensor that limits both; ``coarse``: tensors whose ``|n|`` may exceed
    2**24, where the fp32 weight no longer shows every grid step (the state still holds them).
    """

    bits: float
    records: int
    tensor: str
    coarse: int = 0
    max_steps: int = 0  # the largest |n| it was computed from (bounded or measured)


def steps_of(tensor: torch.Tensor, exp: int) -> torch.Tensor:
    """``round_half_even(tensor / 2**exp)`` as int64 (the snapped state of base weights)."""
    with torch.no_grad():
        return tensor.detach().to(torch.float64).mul(math.ldexp(1.0, -exp)).round().to(torch.int64)


def weights_of_(out: torch.Tensor, steps: torch.Tensor, exp: int) -> None:
    """``out = fp32(steps) * 2**exp``: int64 to the nearest fp32 (ties to even), then an exact
    power-of-two scale. Zeros come out as +0."""
    with torch.no_grad():
        out.copy_(steps.to(torch.float32)).mul_(math.ldexp(1.0, exp)).add_(0.0)


def snap_(tensor: torch.Tensor, exp: int) -> None:
    """Round ``tensor`` in place to the nearest multiple of 2**exp (ties to even), +0 for 0."""
    weights_of_(tensor, steps_of(tensor, exp), exp)


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
        out.append(
            TensorGrid(name, tensor_id, exp, t.numel(), eps_steps(epsilon, exp), unit_exp - exp)
        )
    return out


def headroom(grids: list[TensorGrid], max_steps: list[int]) -> Headroom:
    """The headroom of tensors whose largest ``|n|`` is (at most) ``max_steps``."""
    rows = [
        (_headroom_bits(m, g.eps_steps), _records_left(m, g.eps_steps, g.unit_shift), g.name)
        for g, m in zip(grids, max_steps, strict=True)
    ]
    bits = min(r[0] for r in rows)
    records, tensor = min((r[1], r[2]) for r in rows)
    coarse = sum(1 for g, m in zip(grids, max_steps, strict=True) if m + g.eps_steps >= 1 << 24)
    return Headroom(bits, records, tensor, coarse, max(max_steps, default=0))
