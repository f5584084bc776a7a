"""The engine on the built-in tiny GPT-2: replicas agree bit for bit by construction.

Every test compares fingerprints AND the raw bits of every trainable tensor.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from seedswarm.model import data
from seedswarm.model.engine import Engine
from seedswarm.model.errors import ModelError
from seedswarm.model.grid import grid_exponent
from seedswarm.model.hashing import BASE_DOMAIN, hash_tensors
from seedswarm.model.hyper import Hyper
from seedswarm.model.kernels import CpuKernelBackend
from seedswarm.model.loading import byte_tokenizer, load
from seedswarm.model.tasks import Examples, prepare
from seedswarm.protocol.errors import ManifestError
from seedswarm.protocol.manifest import Manifest, TaskSpec
from seedswarm.protocol.philox import signs
from seedswarm.protocol.records import Record

from .helpers import (
    C_KERNEL_ERROR,
    CAUSAL,
    HYPER,
    assert_same_bits,
    assert_same_state,
    random_records,
    requires_c,
    tiny_engine,
)

KERNELS = ["torch", pytest.param("cpu", marks=requires_c)]


@pytest.fixture(scope="module")
def chunks() -> Examples:
    return prepare(data.read("builtin:patterns"), CAUSAL, byte_tokenizer())


def _batch(engine: Engine, examples: Examples, seed: int, size: int = 8) -> dict[str, torch.Tensor]:
    idx = data.sample_batch(seed, len(examples), size)
    return engine.task_model.make_batch(examples.subset(idx))


def test_tiny_engine_shape() -> None:
    e = tiny_engine()
    if isinstance(e.backend, CpuKernelBackend):
        assert e.backend.threads == 2  # conftest: the multi-threaded kernel path runs
    names = [n for n, _ in e.trainable]
    assert names == sorted(names)
    assert [g.name for g in e.grids] == names
    assert [g.tensor_id for g in e.grids] == list(range(len(names)))
    assert e.numel == sum(p.numel() for _, p in e.trainable) > 100_000
    assert e.manifest.model == "tiny"
    assert e.manifest.grid_min_exp == HYPER.unit_exp - 8
    assert e.backend.name in ("torch", "cpu")


def test_replay_is_independent_of_order_batching_and_backend() -> None:
    """Runs on the torch backend everywhere, and across both backends where C is built."""
    records = random_records(100, rng_seed=1)
    main = "torch" if C_KERNEL_ERROR else "cpu"
    ref = tiny_engine(main)
    base_fp = ref.fingerprint()
    ref.apply(records)  # log order, batches of 256
    assert ref.fingerprint() != base_fp

    shuffled = list(records)
    random.Random(2).shuffle(shuffled)
    variants: list[tuple[str, str, list[Record], int]] = [
        (main, "shuffled, batches of 1", shuffled, 1),
        (main, "shuffled, batches of 7", shuffled, 7),
        (main, "reversed, batches of 256", records[::-1], 256),
        ("torch", "log order, batches of 256", records, 256),
        ("torch", "shuffled, batches of 7", shuffled, 7),
    ]
    for kernel, what, order, batch in variants:
        e = tiny_engine(kernel)
        assert e.fingerprint() == base_fp
        e.apply(order, batch=batch)
        assert_same_state(ref, e, f"{kernel}: {what}")

    # per-node prefixes arriving in separate calls, nodes interleaved differently
    e = tiny_engine(main)
    for node in ("c", "a", "b"):
        mine = [r for r in records if r.node == node]
        half = len(mine) // 2
        e.apply(mine[:half])
        e.apply(mine[half:], batch=3)
    assert_same_state(ref, e)


@pytest.mark.parametrize("kernel", KERNELS)
def test_replay_equals_numpy_reference(kernel: str) -> None:
    """n_t = base_t - sum_r du_t(q_r) * z(seed_r, t) in int64, and theta_t = n_t * 2**e_t."""
    e = tiny_engine(kernel)
    base = e.trainable_state()
    assert all(t.dtype == torch.int64 for t in base.values())
    records = random_records(12, rng_seed=3)
    e.apply(records, batch=5)
    after, weights = e.trainable_state(), e.trainable_weights()
    seeds = [e.seed_of(r.node, r.seq) for r in records]
    for grid in e.grids:
        n = base[grid.name].numpy().reshape(-1)
        acc = np.zeros(n.size, dtype=np.int64)
        for seed, r in zip(seeds, records, strict=True):
            acc -= grid.update_steps(r.q) * signs(seed, grid.tensor_id, n.size).astype(np.int64)
        assert np.array_equal(after[grid.name].numpy().reshape(-1), n + acc), grid.name
        want = np.ldexp((n + acc).astype(np.float64), grid.exp)  # |n| < 2**24 here: exact
        assert np.array_equal(weights[grid.name].numpy().reshape(-1).astype(np.float64), want)


@requires_c
def test_backends_agree_when_a_tensor_update_rounds_to_zero() -> None:
    """Regression: records whose du_t is 0 must leave the bits alone on every backend.

    With unit_exp below the grid, q = +-1 rounds to 0 grid steps. The C kernel writes every
    element of the packed buffer (x + 0), the torch backend skips a tensor whose steps are all
    zero; a snapped -0.0 in the base made the two disagree.
    """
    hyper = Hyper(lr=3e-3, unit_exp=-22, grid_min_exp=-20)
    raw = dict(load("tiny").model.named_parameters())
    rounds_to_zero = sum(int(((p < 0) & (p > -(2.0**-21))).sum()) for p in raw.values())
    assert rounds_to_zero > 0, "the base must hold small negatives that snap to zero"
    records = [Record("a", 0, 1, 0), Record("a", 1, -1, 0), Record("b", 0, 1, 0)]
    engines = [tiny_engine(k, hyper) for k in ("torch", "cpu")]
    for e in engines:
        assert {g.unit_shift for g in e.grids} == {-2}
        assert [
            e.layout.steps_matrix([(e.seed_of(r.node, r.seq), 0, r.q)]).any() for r in records
        ] == [False] * 3
        base = e.trainable_state()
        e.apply(records)
        for name, t in e.trainable_state().items():
            assert_same_bits(t, base[name], f"{e.backend.name}: {name}")
    assert_same_state(engines[0], engines[1])
    # and a real update afterwards still agrees
    for e in engines:
        e.apply([Record("c", 0, 77, 0)])
    assert_same_state(engines[0], engines[1])


@pytest.mark.parametrize("kernel", KERNELS)
def test_step_is_deterministic(kernel: str, chunks: Examples) -> None:
    runs = []
    for _ in range(2):
        e = tiny_engine(kernel)
        results = []
        for seq in range(4):
            seed = e.seed_of("n", seq)
            results.append(e.step([seed], _batch(e, chunks, seed)))
        runs.append((e, results))
    (a, ra), (b, rb) = runs
    assert [r.qs for r in ra] == [r.qs for r in rb]
    assert [(r.losses, r.gs) for r in ra] == [(r.losses, r.gs) for r in rb]
    assert any(r.qs[0] for r in ra)
    assert_same_state(a, b)


@requires_c
def test_step_gives_the_same_bytes_on_every_backend(chunks: Examples) -> None:
    runs = []
    for kernel in ("torch", "cpu"):
        e = tiny_engine(kernel)
        qs = [
            e.step([e.seed_of("n", s)], _batch(e, chunks, e.seed_of("n", s))).qs for s in range(3)
        ]
        runs.append((e, qs))
    assert runs[0][1] == runs[1][1]
    assert_same_state(runs[0][0], runs[1][0])


@pytest.mark.parametrize("kernel", KERNELS)
def test_step_leaves_exactly_its_own_record(kernel: str, chunks: Examples) -> None:
    """Perturb, perturb back and restore are exact: a step == applying its record alone."""
    stepper = tiny_engine(kernel)
    replica = tiny_engine(kernel)
    for seq in range(3):
        seed = stepper.seed_of("me", seq)
        res = stepper.step([seed], _batch(stepper, chunks, seed))
        (q,) = res.qs
        assert q != 0
        assert -127 <= q <= 127
        assert math.isfinite(res.gs[0])
        assert len(res.losses) == 2
        assert res.loss == 0.5 * (res.losses[0] + res.losses[1])
        replica.apply([Record("me", seq, q, seq)])
        assert_same_state(stepper, replica)


def test_step_with_a_vanishing_update_restores_the_base_bits(chunks: Examples) -> None:
    e = tiny_engine(hyper=Hyper(lr=1e-30, unit_exp=-12))
    base = e.trainable_state()
    base_fp = e.fingerprint()
    for seq in range(2):
        seed = e.seed_of("me", seq)
        res = e.step([seed], _batch(e, chunks, seed))
        assert res.qs == (0,)
        assert res.losses[0] != res.losses[1]  # the perturbation did move the loss
    for name, t in e.trainable_state().items():
        assert_same_bits(t, base[name], name)
    assert e.fingerprint() == base_fp


@pytest.mark.parametrize("kernel", KERNELS)
def test_pending_records_in_a_step_equal_applying_them_first(kernel: str, chunks: Examples) -> None:
    peers = random_records(20, rng_seed=5, nodes=("p", "r"))
    seed_engine = tiny_engine(kernel)
    seed = seed_engine.seed_of("me", 0)
    batch = _batch(seed_engine, chunks, seed)

    fused = seed_engine
    res_fused = fused.step([seed], batch, pending=peers)

    separate = tiny_engine(kernel)
    separate.apply(peers)
    res_separate = separate.step([seed], batch)
    assert res_fused == res_separate
    assert_same_state(fused, separate)

    replay = tiny_engine(kernel)
    replay.apply([*peers, Record("me", 0, res_fused.qs[0], 99)][::-1], batch=4)
    assert_same_state(fused, replay)


def _altered(h: str) -> str:
    return h[:-1] + ("0" if h[-1] != "0" else "1")


def test_open_reproduces_the_base_and_refuses_another() -> None:
    built = tiny_engine()
    manifest = Manifest.from_json(built.manifest.to_json())
    assert manifest == built.manifest
    opened = Engine.open(manifest)
    assert opened.base_hash() == manifest.base_hash == built.base_hash()
    assert opened.run_id == built.run_id
    assert_same_state(built, opened)
    records = random_records(30, rng_seed=7)
    built.apply(records)
    opened.apply(records[::-1], batch=9)
    assert_same_state(built, opened)

    with pytest.raises(ManifestError, match="base model mismatch"):
        Engine.open(manifest.replace(base_hash=_altered(manifest.base_hash)))
    # same claimed hash, different base (another init seed): refused too
    with pytest.raises(ManifestError, match="refusing to join"):
        Engine.open(manifest.replace(init_seed=1))


def test_base_hash_is_over_the_snapped_base_and_depends_on_the_init_seed() -> None:
    a, b = tiny_engine(), tiny_engine(hyper=Hyper(lr=3e-3, unit_exp=-12, init_seed=1))
    assert a.manifest.base_hash != b.manifest.base_hash
    assert a.manifest.base_hash == tiny_engine().manifest.base_hash
    assert a.base_hash() == hash_tensors(BASE_DOMAIN, a.task_model.named_weights())
    # the hash covers the snapped values: the raw model hashes differently
    raw = load("tiny").model
    assert a.base_hash() != hash_tensors(BASE_DOMAIN, sorted(raw.named_parameters()))


def test_trainable_regex_selects_a_subset_and_leaves_the_rest_alone() -> None:
    pattern = r"\.ln_|ln_f"
    e = tiny_engine(hyper=Hyper(lr=3e-3, unit_exp=-12, trainable=pattern))
    names = [n for n, _ in e.trainable]
    assert names
    assert all("ln_" in n for n in names)
    assert [g.tensor_id for g in e.grids] == list(range(len(names)))
    base = e.trainable_weights()
    e.apply(random_records(10, rng_seed=11))
    raw = dict(load("tiny").model.named_parameters())
    untouched = 0
    for n, p in e.task_model.named_weights():
        if n in base:
            assert p.dtype == base[n].dtype
            assert not torch.equal(p, base[n]), f"{n} should have moved"
        else:
            assert_same_bits(p.detach(), raw[n].detach(), f"{n} is not trainable")
            untouched += 1
    assert untouched > 10
    with pytest.raises(ModelError, match="no parameter matches"):
        tiny_engine(hyper=Hyper(trainable="no_such_parameter"))


def test_fingerprint_changes_when_one_grid_step_changes() -> None:
    e = tiny_engine()
    fp0 = e.fingerprint()
    name, _ = e.trainable[5]
    at = e.layout.offsets[5] + 17
    e.state[at] += 1
    fp1 = e.fingerprint()
    assert fp1 != fp0
    e.state[at] -= 1
    assert e.fingerprint() == fp0
    # the fingerprint is of the state: one step more at 2**40, where the fp32 weight cannot
    # show it, still changes it
    e.state[at] += 2**40
    fp_big = e.fingerprint()
    e.state[at] += 1
    assert e.fingerprint() != fp_big
    # the fingerprint also names the base: same weights under another base hash differ
    other = tiny_engine()
    other.manifest = other.manifest.replace(base_hash=_altered(other.manifest.base_hash))
    assert other.fingerprint() != fp0
    assert name in e.trainable_state()


def test_trainable_state_round_trip_and_errors() -> None:
    a = tiny_engine()
    a.apply(random_records(25, rng_seed=13))
    state = a.trainable_state()
    b = tiny_engine()
    b.load_trainable_state(state)
    assert_same_state(a, b)
    # the loaded weights are still the packed buffer: updates keep agreeing
    more = random_records(5, rng_seed=14, nodes=("z",))
    a.apply(more)
    b.apply(more)
    assert_same_state(a, b)
    # trainable_state is a copy, not a view
    state[next(iter(state))].add_(1)
    assert_same_state(a, b)

    missing = dict(state)
    missing.pop(next(iter(missing)))
    with pytest.raises(ModelError, match="do not match"):
        b.load_trainable_state(missing)
    wrong = dict(state)
    first = next(iter(wrong))
    wrong[first] = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ModelError, match="shape"):
        b.load_trainable_state(wrong)
    # fp32 weights are not a state (protocol 2's snapshots held them): refused, by name
    floats = dict(state)
    floats[first] = state[first].to(torch.float32)
    with pytest.raises(ModelError, match="int64"):
        b.load_trainable_state(floats)


def test_evaluate_and_headroom(chunks: Examples) -> None:
    e = tiny_engine()
    held = chunks.subset(range(len(chunks) - 40, len(chunks)))
    out = e.evaluate(held, batch_size=16)
    assert out["examples"] == 40.0
    assert abs(out["loss"] - math.log(259)) < 0.3  # an untrained byte model: about uniform
    assert e.evaluate(held, batch_size=7) == pytest.approx(out, rel=1e-5)
    h = e.headroom()
    assert h.tensor in {n for n, _ in e.trainable}
    assert 63 - 24 + HYPER.headroom_exp < h.bits <= 63  # the base fills 24 - h bits at most
    assert h.records > 10**12
    assert h.coarse == 0
    # the bound grows with every record's |du| (and never falls below the measured state)
    e.apply(random_records(50, rng_seed=2))
    bound = e.headroom()
    measured = e.headroom(measure=True)
    assert bound.bits <= measured.bits
    assert bound.records <= measured.records


def test_save_pretrained_round_trip(tmp_path: Path) -> None:
    e = tiny_engine()
    e.apply(random_records(10, rng_seed=17))
    e.save_pretrained(tmp_path / "out")
    loaded = load(str(tmp_path / "out"), kind="lm")
    saved = dict(loaded.model.named_parameters())
    for name, t in e.trainable_weights().items():
        assert_same_bits(saved[name].detach(), t, name)
    # the engine's parameters are still views of its buffer after the save
    fp = e.fingerprint()
    e.apply([Record("x", 0, 5, 0)])
    assert e.fingerprint() != fp
    assert loaded.tokenizer("abc")["input_ids"] == byte_tokenizer()("abc")["input_ids"]


def test_classification_engine_on_tiny() -> None:
    spec = TaskSpec(
        kind="classify",
        seq_len=32,
        scorer="lm",
        labels=("negative", "positive"),
        label_words=(" terrible", " great"),
        template="{text} It was",
    )
    e = tiny_engine(task=spec)
    ex = Examples(texts=("good film", "bad film", "fine", "awful"), labels=(1, 0, 1, 0))
    out = e.evaluate(ex, batch_size=3)
    assert out["examples"] == 4.0
    assert 0.0 <= out["accuracy"] <= 1.0
    assert out["loss"] > 0
    seed = e.seed_of("n", 0)
    res = e.step([seed], e.task_model.make_batch(ex))
    replica = tiny_engine(task=spec)
    replica.apply([Record("n", 0, res.qs[0], 0)])
    assert_same_state(e, replica)


def test_grids_come_from_the_base_as_loaded(tmp_path: Path) -> None:
    """docs/PROTOCOL.md §5: e_t from max|theta0_t| of the base as loaded, not as snapped.

    A maximum of 1 - 2**-24 snaps up to 1.0, which alone would give a grid twice as coarse.
    """
    raw = load("tiny")
    named = dict(raw.model.named_parameters())
    with torch.no_grad():
        bias = named["transformer.ln_f.bias"]
        bias[0] = 1.0 - 2.0**-24
        bias[1] = -0.3
        bias[2] = 3 * 2.0**-22  # an odd multiple of the finer grid's step
    raw.model.save_pretrained(str(tmp_path / "crafted"))  # type: ignore[operator]
    raw.tokenizer.save_pretrained(str(tmp_path / "crafted"))
    originals = {n: p.detach().clone() for n, p in named.items()}

    hyper = Hyper(lr=3e-3, unit_exp=-12, grid_min_exp=-28)
    built = Engine.build("t", str(tmp_path / "crafted"), CAUSAL, hyper)
    opened = Engine.open(built.manifest, model_ref=str(tmp_path / "crafted"))
    for e in (built, opened):
        for g in e.grids:
            m = float(originals[g.name].abs().max())
            want = grid_exponent(m, headroom_exp=3, grid_min_exp=-28)
            assert g.exp == want, g.name
            assert g.unit_shift == -12 - want
        (g,) = [g for g in e.grids if g.name == "transformer.ln_f.bias"]
        assert g.exp == -21
        for name, t in e.trainable_weights().items():
            exp = next(x.exp for x in e.grids if x.name == name)
            spec_snap = originals[name].double().mul(2.0**-exp).round().mul(2.0**exp).float()
            assert_same_bits(t, spec_snap.add(0.0), name)
    assert_same_state(built, opened)


def test_a_grid_too_fine_for_the_update_unit_is_refused_at_load() -> None:
    """One record must move a tensor by fewer than 2**24 grid steps (a batch's exact sum);
    a run that breaks this is refused when it loads, not in the middle of a replay."""
    with pytest.raises(ModelError, match="too fine for the update unit"):
        tiny_engine(hyper=Hyper(lr=3e-3, unit_exp=-12, grid_min_exp=-40))


def test_a_decaying_rate_folds_into_the_bytes_and_ends_at_the_budget(chunks: Examples) -> None:
    """The schedule reads the records the step's view holds: the same losses give the byte of
    lr_t (protocol/schedule.py), and from the budget on every record is 0."""
    from seedswarm.model.replica import Replica
    from seedswarm.protocol.quantize import quantize_gradient
    from seedswarm.protocol.schedule import lr_at

    hyper = Hyper(lr=3e-3, unit_exp=-12, schedule="decay", budget=12)
    e = tiny_engine(hyper=hyper)
    assert (e.manifest.schedule, e.manifest.budget) == ("decay", 12)
    replica = Replica(e, "me", chunks, batch_size=8)
    qs = []
    for _ in range(14):
        held = sum(replica.vv.values())
        out = replica.step()
        (q,) = out.qs
        qs.append(q)
        assert lr_at(3e-3, "decay", 12, held) <= 3e-3
    assert any(qs[:6])
    assert qs[12:] == [0, 0]  # the budget is spent: the rate is 0
    # the byte is quantise(lr_t * g): a step's g at held 6 gives the byte of half the rate
    seed = e.seed_of("x", 0)
    assert quantize_gradient(40.0, lr=lr_at(3e-3, "decay", 12, 6), unit_exp=-12, seed=seed) == (
        quantize_gradient(20.0, lr=3e-3, unit_exp=-12, seed=seed)
    )


def test_a_growing_batch_follows_the_decaying_rate(chunks: Examples) -> None:
    """``batch_growth``: a step's batch is ``batch_size / rate fraction``, capped at
    ``batch_size * growth`` (to a multiple of 8 once it is 8 or more); the records mean what
    they meant, so a replica that only applies them reaches the same weights."""
    from seedswarm.model.replica import Replica, grown_batch
    from seedswarm.protocol.records import Record

    assert [grown_batch(64, 4.0, f) for f in (1.0, 0.8, 0.5, 0.3, 0.25, 0.1, 0.0)] == [
        64, 80, 128, 216, 256, 256, 256,
    ]  # fmt: skip
    assert (grown_batch(64, 1.5, 0.0), grown_batch(2, 4.0, 0.5), grown_batch(5, 2.0, 0.0)) == (
        96, 4, 10,
    )  # fmt: skip
    with pytest.raises(ValueError, match="at least 1"):
        Replica(tiny_engine(), "me", chunks, batch_size=8, batch_growth=0.5)

    hyper = Hyper(lr=3e-3, unit_exp=-12, schedule="decay", budget=10)
    stepper = Replica(tiny_engine(hyper=hyper), "me", chunks, batch_size=4, batch_growth=3.0)
    sizes, records = [], []
    for _ in range(12):
        want = grown_batch(4, 3.0, stepper.engine.rate_fraction(sum(stepper.vv.values())))
        out = stepper.step()
        assert out.examples == want
        sizes.append(out.examples)
        records.append(Record("me", out.first_seq, out.qs[0], 0))
    assert (sizes[0], sizes[-2:]) == (4, [12, 12])
    assert sizes == sorted(sizes)
    assert len(set(sizes)) > 2  # it grew through sizes between, not in one jump
    replayer = Replica(tiny_engine(hyper=hyper), "replay")
    replayer.apply(records)
    assert replayer.fingerprint() == stepper.fingerprint()

    constant = Replica(tiny_engine(), "me", chunks, batch_size=8, batch_growth=2.0)
    assert {constant.step().examples for _ in range(3)} == {8}  # no decay, no growth
