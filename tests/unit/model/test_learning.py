"""Learning sanity: the exact ZO engine lowers the tiny GPT-2's loss on held-out text.

Seeds, batches and data are all derived deterministically, so this cannot flake: the same run
gives the same bytes and the same losses every time (on a given torch version).
"""

from __future__ import annotations

import pytest

from seedswarm.model import data
from seedswarm.model.tasks import prepare

from .helpers import CAUSAL, HYPER, tiny_engine

HELD_OUT = 64
STEPS = 300
BATCH = 16


@pytest.mark.slow
def test_zo_steps_lower_held_out_loss_on_patterns() -> None:
    assert (HYPER.lr, HYPER.unit_exp) == (3e-3, -12)
    e = tiny_engine()
    examples = prepare(data.read("builtin:patterns"), CAUSAL, e.task_model.tokenizer)
    n_train = len(examples) - HELD_OUT
    held = examples.subset(range(n_train, len(examples)))
    before = e.evaluate(held)["loss"]
    assert 5.0 < before < 6.0  # about ln(259) for an untrained byte-level model
    qs: list[int] = []
    for seq in range(STEPS):
        seed = e.seed_of("learner", seq)
        idx = data.sample_batch(seed, n_train, BATCH)  # training chunks only
        qs.extend(e.step([seed], e.task_model.make_batch(examples.subset(idx))).qs)
    after = e.evaluate(held)["loss"]
    assert before - after > 0.5, f"held-out loss {before:.3f} -> {after:.3f}"
    assert sum(1 for q in qs if q) > STEPS // 2  # the bytes carry information
    assert e.headroom().bits > 30  # the int64 state is nowhere near its end
