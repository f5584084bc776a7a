"""The byte quantiser: a projected gradient becomes one signed byte, unbiasedly.

    x  = (lr * g) * 2**-unit_exp                        (IEEE float64)
    xc = min(127, max(-127, x))                         (NaN gives q = 0)
    f  = floor(xc);  frac = xc - f                      (exact in float64)
    U  = philox word 0 of counter (0, 0, 0, STREAM_QUANTISER) under the record's seed, / 2**32
    q  = f + (1 if U < frac else 0)

so E[q] = xc: stochastic rounding, unbiased wherever the clip is not active. The draw comes from
the record's own Philox stream, so the byte is a pure function of (g, lr, unit, seed).
"""

from __future__ import annotations

import math

from .philox import STREAM_QUANTISER, stream_word

Q_MAX = 127


def quantize_scaled(x: float, seed: int) -> int:
    """Stochastically round ``x`` (already divided by the update unit) to an int in [-127, 127]."""
    if math.isnan(x):
        return 0
    xc = min(float(Q_MAX), max(-float(Q_MAX), x))
    f = math.floor(xc)
    frac = xc - f
    u = stream_word(seed, STREAM_QUANTISER) / 2.0**32
    q = int(f) + (1 if u < frac else 0)
    return max(-Q_MAX, min(Q_MAX, q))


def quantize_gradient(g: float, *, lr: float, unit_exp: int, seed: int) -> int:
    """The record byte for projected gradient ``g``: q = round(lr * g / 2**unit_exp)."""
    x = lr * g
    try:
        scaled = math.ldexp(x, -unit_exp)
    except OverflowError:  # |x| * 2**-unit_exp beyond float64: the clip takes it anyway
        scaled = math.copysign(math.inf, x)
    return quantize_scaled(scaled, seed)
