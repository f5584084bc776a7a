"""From settings to a run: building (or reading) the manifest, the engine, the examples, and
what a node says when it resumes a run its data directory holds.

Nodes that are given the same run settings build the same manifest, hence the same run id,
without exchanging a file. A manifest file (``--manifest``) overrides all of them.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seedswarm.daemon.errors import ConfigError
from seedswarm.daemon.settings import RunSettings
from seedswarm.daemon.store.datadir import DataDir, read_manifest_file
from seedswarm.model.data import RawData, read, shard_indices
from seedswarm.model.engine import Engine
from seedswarm.model.hyper import Hyper
from seedswarm.model.loading import TINY, detect_kind
from seedswarm.model.tasks import Examples, default_task, prepare
from seedswarm.protocol.manifest import Manifest, TaskSpec

log = logging.getLogger("seedswarm.node")

# Hyper-parameters measured to learn on each kind of model (see README, "Choosing lr and u").
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"lr": 3e-3, "unit_exp": -12, "seq_len": 64, "estimator": "spsa"},
    # MiniLM on SST-2, batch 16, SPSA: dev accuracy 69.6% -> 75.2% in 1500 steps, still rising;
    # lr 1e-4 peaked at 75.3% after 250 steps and then diverged (55.5% at 1000).
    "default": {"lr": 3e-5, "unit_exp": -18, "seq_len": 128, "estimator": "fzoo"},
}
# FZOO, K = 8, on MiniLM/SST-2 (seedswarm bench learn): training biases and LayerNorms only,
# lr 1e-2 and u = 2^-15, 0.61x SPSA's forward passes to SPSA's final loss, 76.0% dev at 9 min.
# At batch 64 with the decay (docs/LEARNING.md, "The peak rate at batch 64"), lr 2e-2 trails
# 1e-2 by up to 3.4 points of dev accuracy from 1,000 records on (two seeds) and lr 7e-3 ends
# with a higher dev loss (0.447 against 0.432, one seed): 1e-2 stays.
FZOO: dict[str, Any] = {
    "lr": 1e-2,
    "unit_exp": -15,
    "directions": 8,
    "trainable": r"bias|LayerNorm|layer_norm",
}
# Examples per forward pass when --batch-size is 0. A classification example carries one label,
# so a small batch's gradient is mostly noise: on MiniLM/SST-2 (FZOO, biases and LayerNorms)
# E||g_16 - g||^2 is 6x ||g||^2 at the base and ~80x after 10,000 records (bench noise), and a
# step projects that noise. With 64 examples a step, 2,000 records reach the dev accuracy that
# 10,000 records of 16 reach (78.9% against 78.3% / 78.8%), at about the same compute
# (docs/LEARNING.md, "Batch size"). A causal-LM chunk carries seq_len token losses, and SPSA
# runs (the tiny model's) keep 16.
CLASSIFY_FZOO_BATCH = 64
DEFAULT_BATCH = 16
# LoRA (--adapter lora) on the tiny model, SPSA on prompt -> completion data: lr 3e-2 lowered
# the held-out completion loss 5.56 -> 5.32 in 300 steps (rank 4), where the dense lr (3e-3)
# left it at 5.55 and 1e-1 at 5.50; MeZO's LoRA runs also take a larger lr than its dense ones.
ADAPTER_PRESETS: dict[str, dict[str, Any]] = {"tiny": {"lr": 3e-2}}
# Prompt -> completion on the tiny model (colour questions, SPSA, batch 16, 300 steps): lr 1e-3
# lowered the held-out completion loss 5.60 -> 3.98; the text preset's 3e-3 swung (5.60 -> 4.85
# -> 5.54).
COMPLETION_PRESETS: dict[str, dict[str, Any]] = {"tiny": {"lr": 1e-3}}


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


def plan_run(run: RunSettings, *, planned_steps: int = -1, nodes: int = 1) -> RunPlan:
    """Read the data and work out the task and hyper-parameters the settings describe.

    ``--schedule decay`` decays over ``--budget`` records; where it is not given and the
    command plans its steps (``train --steps``, ``swarm --steps`` with ``nodes`` nodes), the
    budget is what they will write: nodes x steps x records a step (K for FZOO, 1 for SPSA).
    """
    raw = read(run.data)
    if run.manifest:
        manifest = read_manifest_file(Path(run.manifest))
        model_ref = run.model if run.model != TINY else manifest.model
        return RunPlan(manifest, model_ref, None, None, raw)
    preset = PRESETS["tiny" if run.model == TINY else "default"]
    task_kind = _task_kind(run.task, raw)
    seq_len = int(run.seq_len or preset["seq_len"])
    if task_kind == "causal_lm":
        task = TaskSpec(kind="causal_lm", seq_len=seq_len)
        raw = RawData(raw.texts, None)
    elif task_kind == "completion":
        # chats take the tokenizer's chat template; plain prompts the --template, if any
        task = default_task(raw, scorer="lm", seq_len=seq_len, template=run.template)
        preset = {**preset, **COMPLETION_PRESETS.get(run.model, {})}
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
    directions = run.directions or int(preset.get("directions", 1))
    budget = run.budget
    # FZOO steps a fixed size whatever the gradient, so at a constant rate it wanders at a noise
    # floor: a run whose records are planned (train and swarm --steps) decays by default
    # (docs/LEARNING.md); SPSA's steps shrink with the gradient, and stay constant under auto
    plans = run.schedule == "decay" or (run.schedule == "auto" and estimator == "fzoo")
    if plans and not budget:
        if planned_steps > 0:
            budget = nodes * planned_steps * (directions if estimator == "fzoo" else 1)
        elif run.schedule == "decay":
            raise ConfigError(
                "--schedule decay needs --budget RECORDS (the records the whole run plans), "
                "or --steps N with seedswarm train or swarm, which plan it"
            )
    schedule = "decay" if budget and run.schedule != "constant" else "constant"
    adapter = "" if run.adapter == "none" else run.adapter
    if adapter:
        # the adapter is what trains: the preset's subset of the base's tensors does not apply
        preset = {**preset, "trainable": "", **ADAPTER_PRESETS.get(run.model, {})}
    hyper = Hyper(
        schedule=schedule,
        budget=budget if schedule == "decay" else 0,
        epsilon=run.epsilon,
        lr=run.lr or float(preset["lr"]),
        unit_exp=run.unit_exp or int(preset["unit_exp"]),
        headroom_exp=run.headroom_exp,
        trainable=run.trainable or str(preset.get("trainable", "")),
        init_seed=run.init_seed,
        estimator=estimator,
        directions=directions,
        direction=run.direction,
        adapter=adapter,
        lora_rank=run.lora_rank,
        lora_alpha=run.lora_alpha,
        lora_targets=_split(run.lora_targets) if adapter else (),
    )
    return RunPlan(None, run.model, task, hyper, raw)


def _task_kind(task: str, raw: RawData) -> str:
    """The task ``--task`` names, or the one the data implies (``auto``); ConfigError when
    the data cannot feed it."""
    implied = (
        "completion" if raw.is_completion else "classify" if raw.is_classification else "causal_lm"
    )
    if task == "auto" or task == implied:
        return implied
    if task == "classify":
        raise ConfigError("--task classify needs data with a 'label' column")
    if task == "completion":
        raise ConfigError(
            "--task completion needs rows with 'prompt' and 'completion', or 'messages' (a chat)"
        )
    if implied == "completion":
        raise ConfigError(
            "this data has prompt -> completion rows: use --task completion (or auto), which "
            "puts the loss on the completions"
        )
    return task  # causal_lm on labelled text: the texts, labels ignored


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
    relays = [r.strip() for r in run.relays.split(",") if r.strip()]
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
        relays=relays,
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


def say_resuming(me: str, datadir: DataDir, taken: int, limit: int) -> None:
    """--steps is the total of own steps a node's log should hold, so a node restarted on its
    data directory (after a crash, by a supervisor) finishes its run instead of adding one."""
    if not taken:
        return
    if limit < 0:
        log.info("%s: resuming from step %d in %s", me, taken, datadir.root)
    elif taken < limit:
        log.info(
            "%s: resuming from step %d in %s: %d more to reach --steps %d",
            me, taken, datadir.root, limit - taken, limit,
        )  # fmt: skip
    else:
        log.info(
            "%s: %s already holds %d own steps (--steps %d is a total): taking none, "
            "applying and serving the peers' records",
            me, datadir.root, taken, limit,
        )  # fmt: skip


def batch_size_for(asked: int, manifest: Manifest) -> int:
    """``--batch-size``, or (0) the run's default: ``CLASSIFY_FZOO_BATCH`` for a classification
    task trained by FZOO, else ``DEFAULT_BATCH``. A host's own choice (not in the manifest):
    a record means the same update whatever batch made it."""
    if asked:
        return asked
    if manifest.task.kind == "classify" and manifest.estimator == "fzoo":
        return CLASSIFY_FZOO_BATCH
    return DEFAULT_BATCH


def check_batch_growth(growth: float, manifest: Manifest) -> None:
    """Refuse ``--batch-growth`` above 1 on a run whose rate never decays: the batch grows as
    the rate falls (model.replica.grown_batch), so there it would never grow."""
    if growth > 1.0 and manifest.schedule != "decay":
        raise ConfigError(
            f"--batch-growth {growth:g} grows the batch as a decaying rate falls, and this run's "
            f"rate is constant: plan a decay (--steps with train or swarm, or --schedule decay "
            f"--budget RECORDS), or leave --batch-growth at 1"
        )


def planned_elsewhere(existing: Manifest, wanted: Manifest, place: str) -> str | None:
    """What to say when a directory's decayed run is asked for a longer plan (``--steps``
    raised), or None when that is not why the two manifests differ. A decay plans its
    records: past them its rate is 0, so the run cannot grow; the fix is a new run."""
    if existing.schedule != "decay" or existing.differences(wanted) != ["budget"]:
        return None
    return (
        f"{place} holds a run planned for {existing.budget} records, whose learning rate "
        f"decays to 0 there (--schedule auto decays an FZOO run that --steps plans), so it "
        f"cannot take more steps: start a new run elsewhere, or plan with --schedule constant "
        f"to be able to raise --steps later"
    )
