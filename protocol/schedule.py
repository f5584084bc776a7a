"""The learning-rate schedule a node folds into its records' bytes (docs/PROTOCOL.md §6).

A record means the same update whatever produced it, so a schedule is no part of replay: it
only says how a node turns a projected gradient into a byte, ``q = quantise(lr_t * g / u)``.
With ``schedule = "decay"`` and a planned budget of B records, the rate falls from ``lr`` to
0 as the run's records accumulate, along a smooth step (the cubic 1 - x^2 (3 - 2x), close to
half a cosine, but plain binary64 arithmetic, so two implementations agree to the bit):

    x    = min(r, B) / B            r: the records the stepping node's model holds (its
                                       version vector's total, the step's own not counted)
    lr_t = lr * (1 - (x * x) * (3 - 2 * x))

A normalised estimator (FZOO) takes steps of a fixed size whatever the gradient, so a
constant rate leaves the weights wandering at a noise floor; decaying it lets them settle
(docs/LEARNING.md has the curves). Past the budget lr_t is 0: the node's records carry 0.
"""

from __future__ import annotations

SCHEDULES = ("constant", "decay")


def lr_at(lr: float, schedule: str, budget: int, held: int) -> float:
    """The rate of a step taken on a model that holds ``held`` records."""
    if schedule == "constant" or budget <= 0:
        return lr
    x = min(held, budget) / budget
    return lr * (1.0 - (x * x) * (3.0 - 2.0 * x))
