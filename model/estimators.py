"""How a step's losses become projected gradients, one per direction (pure float64, no torch).

Two estimators (the manifest's ``estimator``); both give one ``g`` per record, and the record's
byte is ``q = quantize_gradient(g, lr, unit_exp, seed)`` (protocol/quantize.py) either way:

  * ``spsa``  one direction, two forward passes:  g = (L+ - L-) / (2 eps)
  * ``fzoo``  K directions, K + 1 forward passes (FZOO, arXiv 2506.09034): one unperturbed loss
              l0 and K one-sided losses l_i = L(theta + eps z_i);
                  g_i = (l_i - l0) / (K * sigma),  sigma = the sample standard deviation of
                  l_1 .. l_K,
              so that the update -lr * sum_i g_i z_i is a normalised-SGD step whose size does not
              depend on eps or on the scale of the loss (lr is a step per weight, not per unit of
              gradient).

Every operation is one IEEE-754 binary64 operation, rounded to nearest even, in the order the
code writes it (docs/PROTOCOL.md gives the same steps in words), so another
implementation computes the same ``g`` and hence the same bytes. None of this is needed to
replay a log, only to produce records: a record means the same update whichever estimator made
it. A non-finite loss, or sigma = 0, gives NaN for every direction, which quantises to q = 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def spsa_gradient(loss_plus: float, loss_minus: float, epsilon: float) -> float:
    """The two-sided SPSA projection; NaN when it is not finite (so q = 0)."""
    g = (loss_plus - loss_minus) / (2.0 * epsilon)
    return g if math.isfinite(g) else math.nan


def fzoo_gradients(loss0: float, losses: Sequence[float]) -> tuple[float, ...]:
    """``g_i = (l_i - l0) / (K * sigma)`` for K >= 2 one-sided losses ``losses``.

    mean = (((l_1 + l_2) + l_3) + ... + l_K) / K
    var  = (((l_1 - mean)**2 + (l_2 - mean)**2) + ...) / (K - 1)      (each square: x * x)
    sigma = sqrt(var)                                                 (correctly rounded)
    g_i  = (l_i - l0) / (K * sigma)

    NaN for every i (so q = 0) when a loss is not finite, when all l_i are equal, or when
    sigma is not a positive finite number; a g_i that overflows is NaN too.
    """
    k = len(losses)
    if k < 2:
        raise ValueError("fzoo needs at least two directions (sigma is their spread)")
    values = [float(x) for x in losses]
    nan = (math.nan,) * k
    if not (math.isfinite(loss0) and all(math.isfinite(x) for x in values)):
        return nan
    if min(values) == max(values):  # sigma is 0; the rounded mean could make it look tiny
        return nan
    total = 0.0
    for x in values:
        total += x
    mean = total / k
    sq = 0.0
    for x in values:
        d = x - mean
        sq += d * d
    sigma = math.sqrt(sq / (k - 1))
    if not (sigma > 0.0 and math.isfinite(sigma)):
        return nan
    denom = k * sigma
    out = []
    for x in values:
        g = (x - loss0) / denom
        out.append(g if math.isfinite(g) else math.nan)
    return tuple(out)
