"""``seedswarm bench learn``: what each way of training needs to reach a target, side by side.

One run trains several *arms* on the same data, one after another on the same machine, and
records for each the accuracy (classification) or loss (causal LM) on held-out data against
the records, forward passes and training wall-clock spent so far:

  spsa            two-sided SPSA / MeZO: 2 forward passes per record
  fzoo<K>         the K-direction one-sided estimator (FZOO): K + 1 forward passes per K records
  ...-lowrank     rank-1 directions a*b^T for matrices (the manifest's direction "lowrank")
  ...-2t          the same arm with two torch threads instead of one
  ...-2n          two real ``seedswarm node`` processes (one torch thread each, each pinned to
                  its own core where the machine has two), through a real broker, started by
                  ``seedswarm swarm``; their held-out curve is rebuilt afterwards from their logs
  adamw           the first-order reference: AdamW with backprop, the same scorer and batches

Clocks: an in-process arm's clock runs only while it trains (batching, forward passes, weight
passes); evaluation stops it. The time to load the model is reported apart (``startup_s``).
A swarm arm's clock is the launcher's wall clock from the start of ``seedswarm swarm`` (its
start-up included, and reported), with each node's progress read from ``/status``.

The time to the target is the first evaluation at or past it, so its resolution is
``--eval-every-s``. A missed target is reported as missed, with where the arm ended.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seedswarm.daemon.console import say
from seedswarm.daemon.errors import ConfigError

from .learn_arms import (
    ApplyRates,
    Arm,
    Setup,
    apply_rates,
    backbone_kind,
    run_adamw_arm,
    run_zo_arm,
)
from .learn_report import COLORS, LearnSummary, print_summary, summarise, write_plot
from .learn_swarm import run_swarm_arm
from .settings import BenchSettings

# Settings measured on MiniLM / SST-2 (docs/PROTOCOL.md, "Measurements"): ZO
# arms train the biases and LayerNorms only (31k of 22.7M weights), which learned fastest per
# forward pass and per second; lr of fzoo is a step per weight and per record. The tiny
# model's settings are for smoke tests.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"spsa_lr": 3e-3, "spsa_unit_exp": -12, "fzoo_lr": 3e-3, "fzoo_unit_exp": -12,
             "trainable": ""},
    "default": {"spsa_lr": 1e-3, "spsa_unit_exp": -15, "fzoo_lr": 1e-2, "fzoo_unit_exp": -15,
                "trainable": "bias|LayerNorm"},
}  # fmt: skip


# -- arms --------------------------------------------------------------------------------------


def parse_arms(s: BenchSettings) -> list[Arm]:
    """``spsa``, ``fzoo8``, ``fzoo8-lowrank``, ``spsa-2t``, ``fzoo8-2n``, ``adamw``..."""
    learn = s.learn
    preset = _preset(s)
    arms = []
    for name in filter(None, (a.strip() for a in learn.arms.split(","))):
        base, *mods = name.split("-")
        common: dict[str, Any] = {
            "name": name, "epsilon": learn.epsilon, "batch_size": learn.learn_batch,
            "amp": learn.amp, "trainable": preset["trainable"],
        }  # fmt: skip
        if base == "adamw":
            if mods:
                raise ConfigError(f"--arms: {name!r}: adamw takes no modifiers")
            arms.append(Arm(kind="adamw", lr=learn.fo_lr, threads=1, **common))
            continue
        m = re.fullmatch(r"spsa|fzoo(\d+)", base)
        if m is None:
            raise ConfigError(f"--arms: {name!r}: an arm starts with spsa, fzooK or adamw")
        est = "spsa" if base == "spsa" else "fzoo"
        arm = Arm(
            estimator=est,
            directions=1 if est == "spsa" else int(m.group(1)),
            lr=preset[f"{est}_lr"],
            unit_exp=preset[f"{est}_unit_exp"],
            **common,
        )
        for mod in mods:
            if mod == "lowrank":
                arm = dataclasses.replace(arm, direction="lowrank")
            elif mod == "2t":
                arm = dataclasses.replace(arm, threads=2)
            elif mod == "2n":
                arm = dataclasses.replace(arm, kind="swarm", nodes=2)
            else:
                raise ConfigError(f"--arms: {name!r}: unknown modifier {mod!r}")
        if est == "fzoo" and not 2 <= arm.directions <= 64:
            raise ConfigError(f"--arms: {name!r}: fzoo takes 2 to 64 directions")
        arms.append(arm)
    if not arms:
        raise ConfigError("--arms: name at least one arm, e.g. spsa,fzoo8,adamw")
    return arms


def _preset(s: BenchSettings) -> dict[str, Any]:
    preset = dict(PRESETS["tiny" if s.model == "tiny" else "default"])
    for key in ("spsa_lr", "spsa_unit_exp", "fzoo_lr", "fzoo_unit_exp"):
        if getattr(s.learn, key):
            preset[key] = getattr(s.learn, key)
    if s.learn.trainable != "default":
        preset["trainable"] = s.learn.trainable
    return preset


# -- the command -------------------------------------------------------------------------------


def prepare_setup(s: BenchSettings) -> Setup:
    from seedswarm.daemon.node.startup import plan_run
    from seedswarm.daemon.settings import RunSettings
    from seedswarm.model.data import read
    from seedswarm.model.loading import byte_tokenizer, load
    from seedswarm.model.tasks import prepare

    model = "minilm" if s.model == "opt-125m-config" else s.model
    plan = plan_run(RunSettings(model=model, data=s.data))
    assert plan.task is not None
    task = plan.task
    tokenizer = (
        byte_tokenizer() if model == "tiny" else load(model, kind=backbone_kind(task)).tokenizer
    )
    train = prepare(plan.raw, task, tokenizer)
    if s.eval:
        held = prepare(read(s.eval), task, tokenizer)
    else:  # the last tenth of the training data, which the batches never draw from
        cut = len(train) - max(1, len(train) // 10)
        held = train.subset(range(cut, len(train)))
        train = train.subset(range(cut))
    if s.learn.eval_limit:
        held = held.subset(range(min(s.learn.eval_limit, len(held))))
    return Setup(plan.model_ref, task, train, held, data_ref=s.data, kernel=s.kernel)


@dataclass(frozen=True, slots=True)
class Plot:
    path: str
    drawn_with: str  # matplotlib, or the plain PNG's note
    colors: dict[str, str]  # arm -> #rrggbb (the plain PNG has no legend)


@dataclass(frozen=True, slots=True)
class LearnResult:
    summary: LearnSummary
    model: str
    data: str
    eval: str
    held_out: int
    budget_s: float
    eval_every_s: float
    plot: Plot | None
    apply: ApplyRates | None

    def to_json(self) -> dict[str, Any]:
        out = self.summary.to_json() | {
            "model": self.model,
            "data": self.data,
            "eval": self.eval,
            "held_out": self.held_out,
            "budget_s": self.budget_s,
            "eval_every_s": self.eval_every_s,
        }
        if self.plot is not None:
            out |= {
                "plot": self.plot.path,
                "plot_drawn_with": self.plot.drawn_with,
                "plot_colors": self.plot.colors,
            }
        if self.apply is not None:
            out["apply"] = self.apply.to_json()
        return out


def bench_learn(s: BenchSettings) -> LearnResult:
    arms = parse_arms(s)
    setup = prepare_setup(s)
    results = []
    for arm in arms:
        say(f"bench learn: arm {arm.name}", quiet=s.json)
        if arm.kind == "adamw":
            results.append(run_adamw_arm(arm, setup, s.learn))
        elif arm.kind == "swarm":
            results.append(run_swarm_arm(arm, setup, s.learn))
        else:
            results.append(run_zo_arm(arm, setup, s.learn))
    summary = summarise(results, s.learn.target, setup.classify)
    plot = None
    if s.learn.plot:
        drawn = write_plot(summary, setup.model_ref, Path(s.learn.plot))
        colors = {
            a.name: "#{:02x}{:02x}{:02x}".format(*COLORS[i % len(COLORS)])
            for i, a in enumerate(summary.arms)
        }
        plot = Plot(s.learn.plot, drawn, colors)
    apply = None
    if s.learn.apply_model:
        apply = apply_rates(s.learn.apply_model, s.learn.apply_records, s.repeats, s.kernel)
    return LearnResult(
        summary=summary, model=setup.model_ref, data=s.data, eval=s.eval or "(train tail)",
        held_out=len(setup.held), budget_s=s.learn.budget_s, eval_every_s=s.learn.eval_every_s,
        plot=plot, apply=apply,
    )  # fmt: skip


def print_learn(r: LearnResult) -> str:
    lines = [
        (
            f"model {r.model}, held-out {r.held_out} examples, budget {r.budget_s:.0f} s per arm, "
            f"evaluated every {r.eval_every_s:.0f} s"
        ),
        print_summary(r.summary),
    ]
    if r.plot is not None:
        lines.append(f"plot: {r.plot.path} ({r.plot.drawn_with})")
    if r.apply is not None:
        a = r.apply
        rate = a.to_json()["records_per_s"]
        lines.append(
            f"apply {a.records_per_batch}-record batches on {a.model} ({a.params / 1e6:.1f}M, "
            f"{a.kernel} kernel): dense {rate['dense']:.1f} records/s, low-rank "
            f"{rate['lowrank']:.1f} records/s ({a.seconds['dense'] / a.seconds['lowrank']:.1f}x)"
        )
    return "\n".join(lines)
