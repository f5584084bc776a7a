"""The snapshot audit: the exact state of chosen blocks from a known state and the log."""

from __future__ import annotations

import dataclasses
import random

from seedswarm.model.audit import Block, audit, choose_blocks, total_blocks

from .helpers import HYPER, random_records, tiny_engine


def test_the_audit_recomputes_every_block_of_a_replay_bit_for_bit() -> None:
    donor, joiner = tiny_engine(), tiny_engine()
    records = random_records(120, rng_seed=3)
    donor.apply(records)
    snapshot = donor.trainable_state()
    every = choose_blocks(joiner, total_blocks(joiner), random.Random(0))
    assert len(every) == total_blocks(joiner)
    result = audit(joiner, snapshot, records, every)
    assert result.passed
    assert result.elements == joiner.numel
    # and the joiner's own weights were not touched
    assert joiner.fingerprint() == tiny_engine().fingerprint()


def test_the_audit_starts_from_any_state_the_joiner_holds() -> None:
    donor, joiner = tiny_engine(), tiny_engine()
    records = random_records(80, rng_seed=4)
    donor.apply(records)
    joiner.apply(records[:30])  # the joiner already holds part of it
    blocks = choose_blocks(joiner, 40, random.Random(1))
    assert audit(joiner, donor.trainable_state(), records[30:], blocks).passed


def test_one_altered_element_is_caught_when_its_block_is_audited() -> None:
    donor, joiner = tiny_engine(), tiny_engine()
    records = random_records(50, rng_seed=5)
    donor.apply(records)
    snapshot = donor.trainable_state()
    t = next(i for i, g in enumerate(joiner.grids) if g.numel > 2 * 128)
    name = joiner.trainable[t][0]
    snapshot[name].view(-1)[130] += 1  # one grid step, in block 1
    bad = Block(t, 1)
    result = audit(joiner, snapshot, records, [Block(t, 0), bad, Block(t, 2)])
    assert result.mismatches == (bad,)
    assert not result.passed


def test_the_detection_rate_of_one_altered_element_is_k_over_b() -> None:
    """Drawn without replacement, k of B blocks find the one altered block with probability
    k / B: over 400 secret draws the rate lies within 4 standard deviations of it."""
    engine = tiny_engine()
    b_total = total_blocks(engine)
    altered = Block(1, 0)
    k = 64
    hits = sum(altered in choose_blocks(engine, k, random.Random(seed)) for seed in range(400))
    p = k / b_total
    sd = (400 * p * (1 - p)) ** 0.5
    assert abs(hits - 400 * p) <= 4 * sd, (hits, 400 * p)


def test_the_audit_recomputes_low_rank_matrices_bit_for_bit() -> None:
    """With low-rank directions a matrix's z is a b^T: blocks that cross rows, and columns
    longer than a sign block, come out exact too."""
    lowrank = dataclasses.replace(HYPER, direction="lowrank")
    donor, joiner = tiny_engine(hyper=lowrank), tiny_engine(hyper=lowrank)
    assert joiner.layout.matrices, "the tiny model has matrices"
    records = random_records(90, rng_seed=6)
    donor.apply(records)
    every = choose_blocks(joiner, total_blocks(joiner), random.Random(2))
    assert audit(joiner, donor.trainable_state(), records, every).passed
    # and a dense replay is not what a low-rank run holds
    dense = tiny_engine()
    dense.apply(records)
    assert not audit(joiner, dense.trainable_state(), records, every).passed


def test_the_audit_is_exact_far_beyond_fp32s_range() -> None:
    """A state whose elements are far beyond 2**24 grid steps (where fp32 weights would round)
    is audited exactly: one step off in the low bits of a huge element is caught."""
    donor, joiner = tiny_engine(), tiny_engine()
    for e in (donor, joiner):
        e.state[::7] += 2**45  # the same made-up start on both, then loaded as their state
        e.load_trainable_state(e.trainable_state())
    records = random_records(60, rng_seed=7)
    donor.apply(records)
    every = choose_blocks(joiner, total_blocks(joiner), random.Random(3))
    snapshot = donor.trainable_state()
    assert audit(joiner, snapshot, records, every).passed
    name, t = next((n, i) for i, (n, p) in enumerate(joiner.trainable) if p.numel() > 7)
    snapshot[name].view(-1)[7] += 1  # 2**45 + x + 1: the same fp32 weight, another state
    assert audit(joiner, snapshot, records, every).mismatches == (Block(t, 0),)
