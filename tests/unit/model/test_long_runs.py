"""Runs longer than protocol 2's exact range: replicas still agree bit for bit.

Protocol 2 kept fp32 weights on a grid and was exact only while every tensor stayed below 2**24
grid steps; past that, two orders of the same records gave two fingerprints. These tests take a
tiny model's tensors far past that point in a few thousand records (a coarse update unit, so
each record moves them by up to 2**22 grid steps) and check that any order, any batching and
any backend still give one state, one set of weights and one fingerprint.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from seedswarm.model.engine import Engine
from seedswarm.model.hyper import Hyper
from seedswarm.protocol.philox import signs
from seedswarm.protocol.records import Record

from .helpers import C_KERNEL_ERROR, CAUSAL, assert_same_state

# ln_f's weights are ~1: e_t = 1 + 3 - 24 = -20, so u = 2**-5 is 2**15 grid steps; its bias (0)
# and the small c_proj matrix sit on grid_min_exp = -21, 2**16 steps. A record of q = 127 moves
# an element by up to 127 * 2**16 ~ 2**23 steps: 2**24 is crossed within a few records of one
# sign, or a few dozen random ones.
COARSE = Hyper(lr=3e-3, unit_exp=-5, grid_min_exp=-21, trainable=r"ln_f|h\.0\.attn\.c_proj\.weight")
RECORDS = 3000


def _records(n: int, *, worst: bool, seed: int) -> list[Record]:
    rng = random.Random(seed)
    nodes = ("a", "b", "c", "d")
    seqs = dict.fromkeys(nodes, 0)
    out = []
    for clock in range(n):
        node = rng.choice(nodes)
        q = 127 if worst else max(-127, min(127, round(rng.gauss(0, 60))))
        out.append(Record(node, seqs[node], q, clock))
        seqs[node] += 1
    return out


def _engine(kernel: str, direction: str) -> Engine:
    hyper = Hyper(**{**{f: getattr(COARSE, f) for f in COARSE.__slots__}, "direction": direction})
    return Engine.build("long", "tiny", CAUSAL, hyper, kernel=kernel, kernel_threads=2)


@pytest.mark.parametrize("direction", ["dense", "lowrank"])
@pytest.mark.parametrize("worst", [False, True], ids=["realistic", "worst-case"])
def test_shuffled_replay_agrees_far_past_two_to_the_24(worst: bool, direction: str) -> None:
    """The C kernel (the torch backend where it is not built) against itself in other orders
    and batchings, and against the torch backend."""
    kernel = "torch" if C_KERNEL_ERROR else "cpu"
    records = _records(RECORDS, worst=worst, seed=11)
    ref = _engine(kernel, direction)
    assert max(abs(g.update_steps(127)) for g in ref.grids) > 2**21
    ref.apply(records, batch=256)
    # the run did cross protocol 2's limit, by far
    steps = ref.trainable_state()
    top = max(int(t.abs().max()) for t in steps.values())
    assert top > 2**27 if worst else top > 2**25
    h = ref.headroom(measure=True)
    assert h.coarse > 0, "some tensor's weights are now coarser than its grid"
    assert h.bits > 20, "and the int64 state is nowhere near its end"
    assert h.records > 10**9

    shuffled = list(records)
    random.Random(3).shuffle(shuffled)
    for kernel_b, order, batch in (
        (kernel, shuffled, 1),
        (kernel, shuffled[::-1], 97),
        ("torch", shuffled, 256),
    ):
        other = _engine(kernel_b, direction)
        other.apply(order, batch=batch)
        assert_same_state(ref, other, f"{kernel_b}, batch {batch}")

    # the weights are the state's fp32 image, element by element
    for (name, p), g in zip(ref.trainable, ref.grids, strict=True):
        n = steps[name].reshape(-1).numpy()
        want = np.ldexp(n.astype(np.float32).astype(np.float64), g.exp).astype(np.float32)
        assert np.array_equal(p.detach().reshape(-1).numpy(), want), name


def test_fp32_accumulation_would_have_split_these_replicas() -> None:
    """The same records summed as protocol 2 did (fp32 weights, += per batch) in two orders
    give different bits: the test above really is beyond the old exact range."""
    records = _records(RECORDS, worst=False, seed=11)
    e = _engine("torch", "dense")
    _, p = e.trainable[0]
    g = e.grids[0]
    seeds = [e.seed_of(r.node, r.seq) for r in records]

    z = {s: torch.from_numpy(signs(s, g.tensor_id, p.numel()).astype(np.float32)) for s in seeds}
    results = []
    for order in (list(range(RECORDS)), random.Random(3).sample(range(RECORDS), RECORDS)):
        w = p.detach().reshape(-1).clone()
        for i in order:
            w -= float(g.update_steps(records[i].q)) * g.scale * z[seeds[i]]
        results.append(w)
    assert not torch.equal(results[0], results[1])
