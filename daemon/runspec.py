"""From settings to a run: building (or reading) the manifest, the engine, the examples.

Nodes that are given the same run settings build the same manifest, hence the same run id,
without exchanging a file. A manifest file (``--manifest``) overrides all of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seedswarm.model.data import RawData, read, shard_indices
from seedswarm.model.engine import Engine, Hyper
from seedswarm.model.loading import TINY, detect_kind
from seedswarm.model.tasks import Examples, default_task, prepare
from seedswarm.protocol.manifest import Manifest, TaskSpec
from seedswarm.protocol.signing import NodeKey

from .datadir import read_manifest_file
from .errors import ConfigError
from .settings import RunSettings

# Hyper-parameters measured to learn on each kind of model (see README, "Choosing lr and u").
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"lr": 3e-3, "unit_exp": -12, "seq_len": 64, "estimator": "spsa"},
    # MiniLM on SST-2, batch 16, SPSA: dev accuracy 69.6% -> 75.2% in 1500 steps, still rising;
    # lr 1e-4 peaked at 75.3% after 250 steps and then diverged (55.5% at 1000).
    "default": {"lr": 3e-5, "unit_exp": -18, "seq_len": 128, "estimator": "fzoo"},
}
# FZOO, K = 8, on MiniLM/SST-2 (seedswarm bench learn): training biases and LayerNorms only,
# lr 1e-2 and u = 2^-15, 0.61x SPSA's forward passes to SPSA's final loss, 76.0% dev at 9 min.
FZOO = {"lr": 1e-2, "unit_exp": -15, "directions": 8, "trainable": r"bias|LayerNorm|layer_norm"}


@dataclass(frozen=True, slots=True)
class RunPlan:
    manifest: Manifest | None  # None: build it from the spec (needs the model)
    model_ref: str
    task: TaskSpec | None
    hyper: Hyper | None
    raw: RawData


def _split(text: str) -> tuple[str, ...]:
    if not text:
        return ()
    sep = "|" if "|" in text else ","
    return tuple(s.strip() if sep == "," else s for s in text.split(sep))


def plan_run(run: RunSettings) -> RunPlan:
    """Read the data and work out the task and hyper-parameters the settings describe."""
    raw = read(run.data)
    if run.manifest:
        manifest = read_manifest_file(Path(run.manifest))
        model_ref = run.model if run.model != TINY else manifest.model
        return RunPlan(manifest, model_ref, None, None, raw)
    preset = PRESETS["tiny" if run.model == TINY else "default"]
    task_kind = run.task
    if task_kind == "auto":
        task_kind = "classify" if raw.is_classification else "causal_lm"
    if task_kind == "classify" and not raw.is_classification:
        raise ConfigError("--task classify needs data with a 'label' column")
    seq_len = int(run.seq_len or preset["seq_len"])
    if task_kind == "causal_lm":
        task = TaskSpec(kind="causal_lm", seq_len=seq_len)
        raw = RawData(raw.texts, None)
    else:
        scorer = run.scorer
        if scorer == "auto":
            scorer = detect_kind(run.model)
        task = default_task(
            raw,
            scorer=scorer,
            seq_len=seq_len,
            labels=_split(run.labels),
            label_words=_split(run.label_words),
            template=run.template,
            temperature=run.temperature,
        )
    estimator = preset["estimator"] if run.estimator == "auto" else run.estimator
    if estimator == "fzoo":
        # its own scale: lr is a step per weight and record, not per unit of gradient
        preset = {**preset, **FZOO} if run.model != TINY else {**preset, "directions": 8}
    elif run.directions:
        raise ConfigError("--directions is for --estimator fzoo (spsa takes one per step)")
    hyper = Hyper(
        epsilon=run.epsilon,
        lr=run.lr or float(preset["lr"]),
        unit_exp=run.unit_exp or int(preset["unit_exp"]),
        headroom_exp=run.headroom_exp,
        trainable=run.trainable or str(preset.get("trainable", "")),
        init_seed=run.init_seed,
        estimator=estimator,
        directions=run.directions or int(preset.get("directions", 1)),
        direction=run.direction,
    )
    return RunPlan(None, run.model, task, hyper, raw)


def parse_keys(text: str) -> tuple[tuple[str, str], ...]:
    """``n0=HEX,n1=HEX`` or ``@file`` (one ``node=HEX`` per line) -> sorted (node, key) pairs."""
    if not text:
        return ()
    if text.startswith("@"):
        try:
            text = Path(text[1:]).expanduser().read_text(encoding="utf-8").replace("\n", ",")
        except OSError as exc:
            raise ConfigError(f"--keys {text}: {exc.strerror}") from exc
    pairs: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        node, sep, key = item.partition("=")
        if not sep or not re.fullmatch(r"[0-9a-f]{64}", key.strip()):
            raise ConfigError(f"--keys: {item[:40]!r} is not node=PUBLIC_KEY (64 hex digits)")
        pairs[node.strip()] = key.strip()
    return tuple(sorted(pairs.items()))


def open_engine(
    plan: RunPlan,
    run: RunSettings,
    *,
    device: str,
    kernel: str,
    kernel_threads: int = 0,
    keys: tuple[tuple[str, str], ...] = (),
) -> Engine:
    """The run's engine: the manifest's (checked against the base), or a new one."""
    keys = keys or parse_keys(run.keys)
    if plan.manifest is not None:
        return Engine.open(
            plan.manifest,
            model_ref=plan.model_ref,
            device=device,
            kernel=kernel,
            kernel_threads=kernel_threads,
        )
    assert plan.task is not None
    assert plan.hyper is not None
    return Engine.build(
        run.name,
        plan.model_ref,
        plan.task,
        plan.hyper,
        keys=keys,
        device=device,
        kernel=kernel,
        kernel_threads=kernel_threads,
    )


def training_examples(plan: RunPlan, engine: Engine, shard: tuple[int, int]) -> Examples:
    """This node's shard of the training data, prepared for the run's task."""
    ex = prepare(plan.raw, engine.manifest.task, engine.task_model.tokenizer)
    return ex.subset(shard_indices(len(ex), shard))


def held_out_examples(ref: str, engine: Engine, limit: int = 0) -> Examples:
    """Held-out data (``--eval``), prepared for the run's task; the first ``limit`` only."""
    ex = prepare(read(ref), engine.manifest.task, engine.task_model.tokenizer)
    return ex.subset(range(min(limit, len(ex)))) if limit else ex


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available here (use cpu or auto)")
    return name


def load_key(manifest: Manifest, node: str, key_file: str) -> NodeKey | None:
    """This node's signing key in a signed run (None in an open run), checked against the
    public key the manifest lists for it."""
    keys = dict(manifest.keys)
    if not keys:
        return None
    if node not in keys:
        raise ConfigError(f"node {node} is not one of the run's writers ({', '.join(keys)})")
    if not key_file:
        raise ConfigError("this run is signed: give this node's private key with --key-file")
    try:
        text = Path(key_file).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--key-file {key_file}: {exc.strerror}") from exc
    key = NodeKey.from_hex(text)
    if key.public_hex() != keys[node]:
        raise ConfigError(f"--key-file {key_file} is not the key the run lists for {node}")
    return key
