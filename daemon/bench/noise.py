"""``seedswarm bench noise``: how much of a batch's gradient is sampling noise, by batch size.

Theory of operation. A zeroth-order step learns from one number a direction: the batch
gradient ``g_B`` projected on a random ``z``. Whatever part of ``g_B`` is sampling noise
(``g_B - g``, with ``g`` the gradient over all the data) is projected too, and costs as much
of the step as the signal. This benchmark measures that part on the run's trainable weights,
by backprop (a measurement, not a way of training): at the base model and at the run's
current model (its newest snapshot and the log after it), ``n`` gradients of batches of
``B0`` examples (the first batch size asked), drawn as a node draws them, give

    s2 = sum_b ||g_b - mean||^2 / (n - 1)        E||g_B0 - g||^2, unbiased
    g2 = ||mean||^2 - s2 / n                     ||g||^2, unbiased (the mean's own noise off)
    E||g_B||^2 / ||g||^2 = 1 + (s2 * B0 / B) / g2     for each batch size B asked

(sampling with replacement: a batch's noise falls as 1/B). The last figure is how much
larger a step's projected quantity is than its signal: 1 means a batch is as good as all the
data, 30 that the signal is a thirtieth of what each record carries. A larger batch costs
forward passes per record, not records: on a thin link the trade a run should make where this
ratio is large (docs/LEARNING.md, "Batch size").
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seedswarm.daemon.errors import ConfigError

from .settings import BenchSettings, sizes


@dataclass(frozen=True, slots=True)
class NoisePoint:
    """The gradient noise at one model."""

    where: str  # "base" or "after N records"
    records: int
    loss: float  # mean batch loss over the n batches
    grad_sq: float  # ||g||^2, unbiased
    noise_sq: float  # E||g_B0 - g||^2 at the first batch size
    ratios: tuple[tuple[int, float], ...]  # (B, E||g_B||^2 / ||g||^2)

    def to_json(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "records": self.records,
            "loss": self.loss,
            "grad_sq": self.grad_sq,
            "noise_sq": self.noise_sq,
            "ratios": {str(b): (r if math.isfinite(r) else None) for b, r in self.ratios},
        }


@dataclass(frozen=True, slots=True)
class NoiseResult:
    run: str
    data: str
    trainable: int  # weights the gradients cover
    batches: int
    points: tuple[NoisePoint, ...]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "data": self.data,
            "trainable": self.trainable,
            "batches": self.batches,
            "points": [p.to_json() for p in self.points],
            "seconds": self.seconds,
        }


def bench_noise(s: BenchSettings) -> NoiseResult:
    from seedswarm.daemon.store import snapshots
    from seedswarm.daemon.store.datadir import DataDir
    from seedswarm.model.data import read, sample_batch
    from seedswarm.model.engine import Engine
    from seedswarm.model.replica import Replica
    from seedswarm.model.tasks import prepare

    if not s.noise_run:
        raise ConfigError("bench noise needs --noise-run DIR: a train --out or a node's data dir")
    batch_sizes = sizes(s.noise_sizes, "--noise-sizes", "16,32,64,128")
    run_dir = DataDir(Path(s.noise_run))
    manifest, log, _ = run_dir.load()
    if manifest.task.kind != "classify":
        raise ConfigError(
            f"bench noise measures classification runs; {s.noise_run} is a {manifest.task.kind}"
        )
    data = s.noise_data or _run_data(run_dir)
    t0 = time.perf_counter()
    engine = Engine.open(manifest, device="cpu", kernel="torch")
    examples = prepare(read(data), manifest.task, engine.task_model.tokenizer)
    replica = Replica(engine, "noise")
    b0 = batch_sizes[0]
    # the batches a node would draw, from seeds no run uses for its own steps
    draws = [
        sample_batch(engine.seed_of("noise", i), len(examples), b0) for i in range(s.noise_batches)
    ]
    base = _point(engine, examples, draws, batch_sizes, "base", 0)
    snapshots.restore(replica, run_dir.snapshots, log.held())
    replica.catch_up(log)
    held = sum(replica.vv.values())
    points = (base, _point(engine, examples, draws, batch_sizes, f"after {held} records", held))
    return NoiseResult(
        run=s.noise_run,
        data=data,
        trainable=engine.numel,
        batches=s.noise_batches,
        points=points,
        seconds=time.perf_counter() - t0,
    )


def _run_data(run_dir: Any) -> str:
    inputs = run_dir.inputs()
    if inputs is None or not inputs.data:
        raise ConfigError(f"{run_dir.root} does not say what data it trained on: --noise-data FILE")
    return str(inputs.data)


def _point(
    engine: Any,
    examples: Any,
    draws: list[list[int]],
    batch_sizes: list[int],
    where: str,
    records: int,
) -> NoisePoint:
    tm = engine.task_model
    params = [p for _, p in engine.trainable]
    grads, losses = [], []
    for p in params:
        p.requires_grad_(True)
    try:
        for idx in draws:
            batch = tm.make_batch(examples.subset(idx))
            loss = tm.classify_loss_with_grad(batch)
            gs = torch.autograd.grad(loss, params, allow_unused=True)
            # a trainable tensor the scorer never reads (a pooler's bias) has gradient 0
            flat = [
                (g if g is not None else torch.zeros_like(p)).reshape(-1)
                for g, p in zip(gs, params, strict=True)
            ]
            grads.append(torch.cat(flat).to(torch.float64))
            losses.append(float(loss.detach()))
    finally:
        for p in params:
            p.requires_grad_(False)
    g = torch.stack(grads)
    n = g.shape[0]
    mean = g.mean(0)
    noise_sq = float(((g - mean) ** 2).sum(1).sum()) / (n - 1)
    grad_sq = float(mean @ mean) - noise_sq / n
    b0 = batch_sizes[0]
    ratios = tuple(
        (b, 1.0 + (noise_sq * b0 / b) / grad_sq if grad_sq > 0 else math.inf) for b in batch_sizes
    )
    return NoisePoint(where, records, sum(losses) / n, grad_sq, noise_sq, ratios)


def print_noise(r: NoiseResult) -> str:
    sizes_ = [b for b, _ in r.points[0].ratios]
    head = (
        f"gradient noise of {r.run} ({r.trainable:,} trainable weights), {r.batches} batches "
        f"of {sizes_[0]} from {r.data} at each point, by backprop ({r.seconds:.0f} s)"
    )
    columns = f"{'model':<22} {'batch loss':>10} {'||g||^2':>10} {'E||gB-g||^2':>12}  " + (
        "  ".join(f"{'B=' + str(b):>7}" for b in sizes_)
    )
    rows = [
        f"{p.where:<22} {p.loss:>10.4f} {p.grad_sq:>10.3e} {p.noise_sq:>12.3e}  "
        + (
            "  ".join(f"{ratio:>7.2f}" for _, ratio in p.ratios)
            if p.grad_sq > 0
            else "unresolved: the noise hides the gradient; more --noise-batches"
        )
        for p in r.points
    ]
    foot = [
        "B=...: E||g_B||^2 / ||g||^2, what a step projects over its signal (1: as good as all the",
        "data); a larger batch costs forward passes per record, not records",
    ]
    return "\n".join([head, "", columns, *rows, "", *foot])
