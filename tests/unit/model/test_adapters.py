"""LoRA adapters through peft: names, seeded initial values, a frozen base hashed alone, exact
arithmetic on the adapter's tensors, and a run that learns and replays in any order."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from seedswarm.model.data import sample_batch
from seedswarm.model.engine import Engine
from seedswarm.model.errors import ModelError
from seedswarm.model.hashing import BASE_DOMAIN, hash_tensors
from seedswarm.model.hyper import Hyper
from seedswarm.model.loading import load
from seedswarm.model.tasks import TaskModel, prepare
from seedswarm.protocol.adapter import lora_a_init
from seedswarm.protocol.manifest import AdapterSpec, TaskSpec

from .helpers import (
    CAUSAL,
    assert_same_state,
    colour_data,
    random_records,
)

LORA = Hyper(lr=1e-3, unit_exp=-12, adapter="lora", lora_rank=4, lora_alpha=8.0)
SPEC = AdapterSpec(kind="lora", rank=4, alpha=8.0, targets=("c_attn",))
NAMES = [f"transformer.h.{i}.attn.c_attn.lora_{ab}.weight" for i in (0, 1) for ab in "AB"]


def _lora_engine(hyper: Hyper = LORA, task: TaskSpec = CAUSAL, kernel: str = "auto") -> Engine:
    return Engine.build("lora", "tiny", task, hyper, kernel=kernel, kernel_threads=2)


def test_adapter_tensors_are_named_after_the_module_and_seeded_from_philox() -> None:
    tm = TaskModel(load("tiny"), CAUSAL, init_seed=11, adapter=SPEC)
    named = tm.adapter_weights()
    assert [n for n, _ in named] == NAMES
    shapes = {n: tuple(p.shape) for n, p in named}
    assert shapes[NAMES[0]] == (4, 64)  # A: (rank, in)
    assert shapes[NAMES[1]] == (192, 4)  # B: (out, rank); c_attn is GPT-2's fused q, k, v
    for index, (name, p) in enumerate(named):
        if ".lora_A." in name:
            want = lora_a_init(11, index, *p.shape)
            assert p.detach().numpy().tobytes() == want.tobytes(), name
        else:
            assert not p.detach().any(), name
    # the base keeps its names; nothing of peft's (base_layer, default) shows
    base = [n for n, _ in tm.base_weights()]
    assert base == sorted(n for n, _ in load("tiny").model.named_parameters())
    assert [n for n, _ in tm.named_weights()] == sorted(base + NAMES)
    assert tm.trainable_candidates() == named


def test_attaching_leaves_the_global_generator_alone() -> None:
    loaded = load("tiny")
    state = torch.random.get_rng_state()
    TaskModel(loaded, CAUSAL, init_seed=3, adapter=SPEC)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_the_adapted_model_starts_as_the_base_and_the_base_hash_is_the_base_alone() -> None:
    e = _lora_engine()
    assert e.manifest.adapter == SPEC  # peft's default target for GPT-2, made explicit
    assert [n for n, _ in e.trainable] == NAMES
    plain = load("tiny")
    ids = torch.arange(40).view(2, 20)
    assert torch.equal(
        e.task_model.backbone(input_ids=ids).logits, plain.model(input_ids=ids).logits
    )
    # the base hash is over the base as loaded (nothing of it trains, so nothing is snapped)
    assert e.manifest.base_hash == hash_tensors(BASE_DOMAIN, sorted(plain.model.named_parameters()))
    assert e.base_hash() == e.manifest.base_hash
    # the adapter's initial values are the state's start: A snapped to its grid, B zero
    grid_a, grid_b = e.grids[0], e.grids[1]
    assert (grid_a.name, grid_b.name) == (NAMES[0], NAMES[1])
    want = np.round(lora_a_init(0, 0, 4, 64).astype(np.float64) / 2.0**grid_a.exp)
    state = e.trainable_state()
    assert state[NAMES[0]].tolist() == want.astype(np.int64).tolist()
    assert not state[NAMES[1]].any()
    assert grid_b.exp == e.manifest.grid_min_exp  # B is all zero: the finest grid allowed
    assert Engine.build("lora", "tiny", CAUSAL, LORA).fingerprint() == e.fingerprint()


def test_records_move_only_the_adapter_and_replay_in_any_order() -> None:
    e = _lora_engine()
    base = {n: p.detach().clone() for n, p in e.task_model.base_weights()}
    records = random_records(300, rng_seed=5)
    e.apply(records, batch=64)
    for n, p in e.task_model.base_weights():
        assert torch.equal(p, base[n]), n
    b = dict(e.task_model.adapter_weights())[NAMES[1]]
    assert b.detach().any()  # B moved off zero
    for kernel in ("torch", "auto"):
        other = _lora_engine(kernel=kernel)
        shuffled = records[:]
        random.Random(kernel).shuffle(shuffled)
        other.apply(shuffled, batch=17)
        assert_same_state(e, other, kernel)
    # the opened run (as a joining node has it) replays to the same state
    joined = Engine.open(e.manifest)
    joined.apply(records[::-1])
    assert_same_state(e, joined, "open")


def test_lowrank_directions_and_a_trainable_subset_of_the_adapter() -> None:
    hyper = dataclasses.replace(LORA, direction="lowrank", trainable=r"lora_B")
    e = _lora_engine(hyper)
    assert [n for n, _ in e.trainable] == [NAMES[1], NAMES[3]]
    a_before = dict(e.task_model.adapter_weights())[NAMES[0]].detach().clone()
    records = random_records(100, rng_seed=9)
    e.apply(records)
    assert torch.equal(dict(e.task_model.adapter_weights())[NAMES[0]], a_before)
    other = _lora_engine(hyper)
    other.apply(records[::-1], batch=7)
    assert_same_state(e, other)
    with pytest.raises(ModelError, match="no adapter tensor matches"):
        _lora_engine(dataclasses.replace(LORA, trainable="ln_f"))


def test_targets(bert_embed_dir: Path) -> None:
    e = _lora_engine(dataclasses.replace(LORA, lora_targets=("c_fc", "c_attn", "c_fc")))
    assert e.manifest.adapter is not None
    assert e.manifest.adapter.targets == ("c_attn", "c_fc")  # sorted, once each
    assert len(e.trainable) == 8
    # peft's defaults for a BERT encoder
    spec = TaskSpec(
        kind="classify",
        seq_len=32,
        scorer="embed",
        labels=("a", "b"),
        label_words=("x", "y"),
        temperature=0.1,
    )
    bert = Engine.build("b", str(bert_embed_dir), spec, LORA)
    assert bert.manifest.adapter is not None
    assert bert.manifest.adapter.targets == ("query", "value")
    with pytest.raises(ModelError, match="no module of this model matches"):
        _lora_engine(dataclasses.replace(LORA, lora_targets=("q_proj",)))
    with pytest.raises(ModelError, match="all be linear layers"):
        _lora_engine(dataclasses.replace(LORA, lora_targets=("c_attn", "lm_head")))


def test_save_pretrained_writes_a_peft_adapter(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    e = _lora_engine()
    e.apply(random_records(20, rng_seed=1))
    e.save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert sorted(tensors) == ["base_model.model." + n for n in NAMES]
    for n, p in e.trainable:
        assert torch.equal(tensors["base_model.model." + n], p.detach())
    assert (tmp_path / "adapter_config.json").is_file()
    assert (tmp_path / "tokenizer.json").is_file()


LORA_RUN = Hyper(lr=3e-2, epsilon=1e-2, unit_exp=-12, adapter="lora", lora_rank=4, lora_alpha=8.0)


@pytest.mark.slow
def test_a_lora_run_learns_and_a_shuffled_replay_matches(tmp_path: Path) -> None:
    """MeZO's LoRA recipe scaled to the tiny model: a larger lr and epsilon than dense runs.
    The replay's export is what the stepping node holds: verify says so."""
    from seedswarm.model.export import export
    from seedswarm.model.verify import verify_export

    task = TaskSpec(kind="completion", seq_len=64)
    e = Engine.build("lora-run", "tiny", task, LORA_RUN, kernel_threads=2)
    examples = prepare(colour_data(400), task, e.task_model.tokenizer)
    held, train = examples.subset(range(336, 400)), examples.subset(range(336))
    before = e.evaluate(held, generate=False)["loss"]
    records = []
    for seq in range(300):
        seed = e.seed_of("n0", seq)
        batch = e.task_model.make_batch(train.subset(sample_batch(seed, len(train), 16)))
        (q,) = e.step([seed], batch).qs
        records.append((seq, q))
    after = e.evaluate(held, generate=False)["loss"]
    assert before - after > 0.1, f"held-out completion loss {before:.3f} -> {after:.3f}"
    from seedswarm.protocol.records import Record

    log = [Record("n0", seq, q, seq) for seq, q in records]
    random.Random(3).shuffle(log)
    replayed = Engine.open(e.manifest)
    replayed.apply(log, batch=41)
    assert_same_state(e, replayed, "shuffled replay")
    assert replayed.fingerprint() == e.fingerprint()
    assert np.isfinite(after)
    vv = {"n0": len(log)}
    export(replayed, tmp_path / "adapter", vv=vv, evals=replayed.evaluate(held, generate=False))
    verdict = verify_export(tmp_path / "adapter", e, vv=vv)
    assert verdict.ok, verdict.reason
    assert verdict.tensors == 4 + len(e.task_model.base_weights())  # the adapter and its base


def test_the_tiny_models_adapter_is_the_documented_one() -> None:
    """docs/PROTOCOL.md §10: the tensor names and the first initial values on the tiny model."""
    doc = (Path(__file__).resolve().parents[3] / "docs" / "PROTOCOL.md").read_text()
    tm = TaskModel(load("tiny", init_seed=7), CAUSAL, init_seed=7, adapter=SPEC)
    named = tm.adapter_weights()
    assert f"`{named[0][0]}` (4, 64)" in doc
    for index in (0, 2):
        label = f"LoRA A, init_seed 7, tensor {index}, in 64, elements 0..3 = "
        line = doc[doc.index(label) + len(label) :].split("\n", 1)[0]
        got = [float(v) for v in named[index][1].detach().reshape(-1)[:4]]
        assert got == [float.fromhex(v) for v in line.split(", ")]


def test_lora_on_a_llama_shaped_model(tmp_path: Path) -> None:
    """Any causal LM transformers loads: a config-built Llama, peft's default targets
    (q_proj, v_proj), a completion task, exact replay, an export that verifies."""
    from seedswarm.model.export import export
    from seedswarm.model.verify import verify_export

    from .helpers import save_tiny_llama

    ref = str(save_tiny_llama(tmp_path / "llama"))
    task = TaskSpec(kind="completion", seq_len=64, template="Q: {prompt}\nA:")
    e = Engine.build("llama", ref, task, LORA_RUN, kernel_threads=2)
    assert e.manifest.adapter is not None
    assert e.manifest.adapter.targets == ("q_proj", "v_proj")
    assert len(e.trainable) == 8
    ex = prepare(colour_data(32), task, e.task_model.tokenizer)
    before = e.evaluate(ex)
    for seq in range(5):
        seed = e.seed_of("n0", seq)
        e.step([seed], e.task_model.make_batch(ex.subset(sample_batch(seed, len(ex), 8))))
    records = random_records(50, rng_seed=2)
    e.apply(records)
    after = e.evaluate(ex)
    assert after["loss"] != before["loss"]
    assert {"exact_match", "f1"} <= set(after)
    joined = Engine.open(e.manifest, model_ref=ref)
    assert joined.base_hash() == e.manifest.base_hash
    out = tmp_path / "export"
    vv = {"a": 0}
    export(e, out, vv=vv)
    assert verify_export(out, e, vv=vv).ok
    assert not verify_export(out, joined, vv=vv).ok  # the steps and records are not in it


def test_engines_built_at_once_in_one_process_build_the_same_run() -> None:
    """torch's CPU generator is one per process: the tiny model's seeded initialisation and
    peft's draws while it injects an adapter take one lock (model/loading.py GLOBAL_RNG).
    Without it two nodes starting side by side on their model threads interleaved their draws,
    and one built another base (a different base hash, so another run id): seen as a hang of
    the in-process LoRA test, one run in three."""
    from concurrent.futures import ThreadPoolExecutor

    task = TaskSpec(kind="causal_lm", seq_len=16)

    def build(i: int) -> tuple[str, str]:
        hyper = Hyper(adapter="lora", lora_rank=4) if i % 2 else Hyper()
        engine = Engine.build("race", "tiny", task, hyper)
        return engine.manifest.base_hash, engine.fingerprint()

    alone = [build(0), build(1)]  # a dense run and a LoRA run, built one at a time
    with ThreadPoolExecutor(max_workers=4) as pool:
        built = list(pool.map(build, range(12)))
    assert built == [alone[i % 2] for i in range(12)]
