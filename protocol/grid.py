"""The exact grid, as plain integers: the reference of docs/PROTOCOL.md §5.

Theory of operation
-------------------
The state of a run is the *set* of records applied to the base. For replicas to agree bit for
bit whatever order and batching they apply that set in, the state must be something whose
additions are exact and order-free. So every trainable element is an integer ``n`` of grid
steps of its tensor's grid ``2**e_t``, held in a 64-bit two's-complement accumulator:

    n     = round_half_even(theta0 / 2**e_t)          the snapped base, once
    n    -= du_t(q) * z                               each record, z in {-1, +1}
    w     = fp32(n) * 2**e_t                          the weight the forward pass uses

Integer addition is associative and commutative, so ``n`` after a set of records is one value
whatever the order; additions wrap modulo 2**64, which keeps that true even at the limit (a
defined outcome, the same on every replica, after at least 2**63 / (127 * 2**8) ~ 2.8e14
records of the largest possible update). The weight is a function of ``n`` alone: ``fp32(n)``
rounds to the nearest fp32, ties to even (IEEE-754's default conversion), and the power-of-two
scale is then exact. While ``|n| < 2**24`` the weight is ``n * 2**e_t`` itself, so a run that
never leaves that range has the same weights as protocol 2 had; beyond it the weight shows
``n`` to fp32's precision while ``n`` keeps every step.

The grid exponent is still chosen from the base's magnitude (``headroom_exp`` bits of fp32
significand above the largest base weight), so it sets the *resolution* of the weights, not
how long a run may last.

Everything here is plain Python integers (exact at any size); it is the oracle that the torch,
C and Triton backends (model/kernels.py) and the audit (model/audit.py) are tested against.
"""

from __future__ import annotations

import math

STATE_BITS = 64  # the accumulator: two's complement, additions wrap modulo 2**64
STATE_MAX = (1 << (STATE_BITS - 1)) - 1
FP32_BITS = 24  # fp32 significand: |n| < 2**24 is a weight with every grid step visible
MAX_Q = 127


def grid_exponent(max_abs: float, *, headroom_exp: int, grid_min_exp: int) -> int:
    """``e_t`` of a tensor whose largest base magnitude (as loaded, in fp32) is ``max_abs``."""
    if not math.isfinite(max_abs):
        raise ValueError("a weight is not finite")
    if max_abs == 0.0:
        return grid_min_exp
    _, k = math.frexp(max_abs)  # max_abs = f * 2**k, f in [0.5, 1)
    return max(k + headroom_exp - FP32_BITS, grid_min_exp)


def eps_steps(epsilon: float, exp: int) -> int:
    """The perturbation ``eps_t`` in grid steps: at least one."""
    return max(1, round(math.ldexp(epsilon, -exp)))


def update_steps(q: int, unit_shift: int) -> int:
    """``du_t(q)``: grid steps of a record with byte ``q``; ``unit_shift = unit_exp - e_t``."""
    if unit_shift >= 0:
        return q << unit_shift
    return round(math.ldexp(q, unit_shift))  # exact in float64, rounded half to even


def snap_steps(value: float, exp: int) -> int:
    """``n`` of a base weight: ``round_half_even(value / 2**exp)``."""
    return round(math.ldexp(value, -exp))


def wrap(n: int) -> int:
    """``n`` as the accumulator holds it: two's complement, modulo 2**64."""
    n &= (1 << STATE_BITS) - 1
    return n - (1 << STATE_BITS) if n > STATE_MAX else n


def fp32_of_int(n: int) -> float:
    """The fp32 nearest to the integer ``n``, ties to even (as a Python float, exactly)."""
    a = abs(n)
    if a < 1 << FP32_BITS:
        return float(n)
    drop = a.bit_length() - FP32_BITS  # bits below the significand
    top, rest = a >> drop, a & ((1 << drop) - 1)
    half = 1 << (drop - 1)
    if rest > half or (rest == half and top & 1):
        top += 1
    return math.copysign(math.ldexp(float(top), drop), n)


def weight(n: int, exp: int) -> float:
    """The fp32 weight of ``n`` grid steps of ``2**exp`` (``inf`` past fp32's range)."""
    w = fp32_of_int(n)
    try:
        out = math.ldexp(w, exp)
    except OverflowError:
        return math.copysign(math.inf, w)
    return out if abs(out) < 2.0**128 else math.copysign(math.inf, w)


def headroom_bits(max_steps: int, eps: int) -> float:
    """Doublings of ``max |n|`` (with a perturbation of ``eps`` on top) left before the
    accumulator's range ends."""
    return (STATE_BITS - 1) - math.log2(max(1, max_steps + eps))


def records_left(max_steps: int, eps: int, unit_shift: int) -> int:
    """Records of the largest update (|q| = 127, all one sign) the tensor can still take
    before ``|n|`` could leave the accumulator's range: a guaranteed lower bound."""
    per = max(1, abs(update_steps(MAX_Q, unit_shift)))
    return max(0, (STATE_MAX - max_steps - eps) // per)
