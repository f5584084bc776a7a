"""bench noise's per-group arithmetic (daemon/bench/noise.py), in isolation: the Hutchinson
sample on a quadratic whose Hessian is known (a stand-in task model that only computes
``1/2 sum a_i w_i^2``, so the curvature it must find is ``sum a_i``), the folding of layer
numbers, and the merit the report ranks groups by. The measurement on a real model is
tests/integration/test_bench.py."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from seedswarm.daemon.bench.noise import _groups, _z_hz, group_of, merit


@dataclass
class Quadratic:
    """Loss ``1/2 sum_i a_i w_i^2`` over ``params``: Hessian diag(a), whatever the batch."""

    params: list[torch.Tensor]
    curvatures: list[torch.Tensor]

    def classify_loss_with_grad(self, batch: object) -> torch.Tensor:
        return sum(
            (0.5 * a * p * p).sum() for p, a in zip(self.params, self.curvatures, strict=True)
        )  # type: ignore[return-value]


def test_hutchinson_finds_the_trace_of_a_diagonal_hessian_and_leaves_the_weights() -> None:
    torch.manual_seed(0)
    params = [torch.randn(5, requires_grad=True), torch.randn(2, 3, requires_grad=True)]
    curvatures = [torch.tensor([1.0, 2.0, 0.0, 4.0, 0.5]), torch.full((2, 3), 3.0)]
    before = [p.detach().clone() for p in params]
    zhz = _z_hz(Quadratic(params, curvatures), None, params, seed=7)
    # z_i^2 = 1 for a Rademacher z: each weight's sample is its own a_i, to rounding
    want = torch.cat([a.reshape(-1) for a in curvatures]).to(torch.float64)
    assert torch.allclose(zhz, want, rtol=1e-3, atol=1e-3)
    for p, w in zip(params, before, strict=True):
        assert torch.equal(p.detach(), w)  # put back bit for bit


def test_groups_fold_layers_and_split_the_figures_exactly() -> None:
    assert group_of("encoder.layer.11.attention.self.key.bias") == (
        "encoder.layer.*.attention.self.key.bias"
    )
    assert group_of("transformer.h.0.ln_1.weight") == "transformer.h.*.ln_1.weight"
    assert group_of("pooler.dense.bias") == "pooler.dense.bias"
    names = ["l.0.a", "l.1.a", "l.0.b"]
    params = [torch.zeros(2), torch.zeros(2), torch.zeros(3)]
    g = torch.tensor(
        [[1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]],
        dtype=torch.float64,
    )  # group l.*.a has all the gradient, l.*.b none
    zhz = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]] * 2, dtype=torch.float64)
    by = {x.group: x for x in _groups(names, params, g, zhz)}
    assert set(by) == {"l.*.a", "l.*.b"}
    assert (by["l.*.a"].weights, by["l.*.b"].weights) == (4, 3)
    assert (by["l.*.a"].curvature, by["l.*.b"].curvature) == (4.0, 0.0)
    # mean (2, 0, 1, 0): ||mean||^2 = 5; spread: 2 * (1^2) / 1 = 2; unbiased ||g||^2 = 5 - 2/2
    assert (by["l.*.a"].grad_sq, by["l.*.a"].noise_sq) == (4.0, 2.0)
    assert by["l.*.b"].without == 1.0  # a group with no gradient and no curvature costs nothing
    assert math.isnan(by["l.*.a"].without)  # nothing left to train without it


def test_merit_prefers_signal_over_noise_and_curvature() -> None:
    assert merit(1.0, 2.0, 4.0) == 1.0 / 8.0
    assert merit(1.0, 4.0, 4.0) < merit(1.0, 2.0, 4.0)  # more batch noise
    assert merit(1.0, 2.0, 8.0) < merit(1.0, 2.0, 4.0)  # more curvature
    assert math.isnan(merit(-0.1, 2.0, 4.0))  # an unresolved gradient ranks nothing
