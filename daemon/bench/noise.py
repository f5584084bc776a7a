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

With ``--noise-groups`` the same figures come per group of trainable tensors (a tensor's name
with its layer numbers folded: ``encoder.layer.*.attention.self.key.bias``), with the group's
curvature ``tr(H_group)``: Hutchinson's estimate, the mean of ``z . H z`` over the batches with a
Rademacher ``z`` (one a batch, over all groups at once: cross-group terms have mean 0), and
``H z`` from a central difference of two gradients on the same batch (exact for a quadratic).
These say what training only some groups would do. A zeroth-order step along a random
direction over a set S, at its best rate, lowers the loss by about

    merit(S) = ||g_S||^4 / (E||g_B,S||^2 * tr(H_S))

(the descent lemma for ``u = (z . g_B) z``: gain ``lr ||g_S||^2``, cost ``lr^2/2 E||g_B||^2
tr H``), so a group whose gradient is small but whose curvature is small too costs little,
and a group with neither (an attention key bias, which softmax ignores; a tensor the scorer
never reads) costs nothing. The report gives ``merit(all but the group) / merit(all)`` for
each: above 1, leaving the group out would make a record worth more.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seedswarm.daemon.errors import ConfigError

from .settings import BenchSettings, sizes


@dataclass(frozen=True, slots=True)
class GroupNoise:
    """One group's share of the figures at one model (``--noise-groups``)."""

    group: str  # tensor names with layer numbers folded to *
    weights: int
    grad_sq: float  # ||g_group||^2, unbiased
    noise_sq: float  # E||g_B0,group - g_group||^2
    curvature: float  # tr(H_group), Hutchinson
    curvature_se: float  # its standard error over the batches
    without: (
        float  # merit(all but this group) / merit(all) at the first batch size; nan: unresolved
    )

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "weights": self.weights,
            "grad_sq": self.grad_sq,
            "noise_sq": self.noise_sq,
            "curvature": self.curvature,
            "curvature_se": self.curvature_se,
            "without": self.without if math.isfinite(self.without) else None,
        }


@dataclass(frozen=True, slots=True)
class NoisePoint:
    """The gradient noise at one model."""

    where: str  # "base" or "after N records"
    records: int
    loss: float  # mean batch loss over the n batches
    grad_sq: float  # ||g||^2, unbiased
    noise_sq: float  # E||g_B0 - g||^2 at the first batch size
    ratios: tuple[tuple[int, float], ...]  # (B, E||g_B||^2 / ||g||^2)
    groups: tuple[GroupNoise, ...] = ()  # --noise-groups only

    def to_json(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "records": self.records,
            "loss": self.loss,
            "grad_sq": self.grad_sq,
            "noise_sq": self.noise_sq,
            "ratios": {str(b): (r if math.isfinite(r) else None) for b, r in self.ratios},
            "groups": [g.to_json() for g in self.groups],
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
    groups = s.noise_groups
    base = _point(engine, examples, draws, batch_sizes, "base", 0, groups)
    snapshots.restore(replica, run_dir.snapshots, log.held())
    replica.catch_up(log)
    held = sum(replica.vv.values())
    after = _point(engine, examples, draws, batch_sizes, f"after {held} records", held, groups)
    points = (base, after)
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
    groups: bool = False,
) -> NoisePoint:
    tm = engine.task_model
    names = [n for n, _ in engine.trainable]
    params = [p for _, p in engine.trainable]
    grads, losses, zhz = [], [], []
    for p in params:
        p.requires_grad_(True)
    try:
        for k, idx in enumerate(draws):
            batch = tm.make_batch(examples.subset(idx))
            grad, loss = _gradient(tm, batch, params)
            grads.append(grad)
            losses.append(loss)
            if groups:
                zhz.append(_z_hz(tm, batch, params, seed=k))
    finally:
        for p in params:
            p.requires_grad_(False)
    g = torch.stack(grads)
    n = g.shape[0]
    noise_sq, grad_sq = _moments(g)
    b0 = batch_sizes[0]
    ratios = tuple(
        (b, 1.0 + (noise_sq * b0 / b) / grad_sq if grad_sq > 0 else math.inf) for b in batch_sizes
    )
    per_group = _groups(names, params, g, torch.stack(zhz)) if groups else ()
    return NoisePoint(where, records, sum(losses) / n, grad_sq, noise_sq, ratios, per_group)


HUTCHINSON_STEP = 1e-3  # the central difference's step along each +-1 coordinate of z


def _gradient(tm: Any, batch: Any, params: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
    """The batch's gradient over ``params`` (flat, float64) and its loss."""
    loss = tm.classify_loss_with_grad(batch)
    gs = torch.autograd.grad(loss, params, allow_unused=True)
    # a trainable tensor the scorer never reads (a pooler's bias) has gradient 0
    flat = [
        (g if g is not None else torch.zeros_like(p)).reshape(-1)
        for g, p in zip(gs, params, strict=True)
    ]
    return torch.cat(flat).to(torch.float64), float(loss.detach())


def _z_hz(tm: Any, batch: Any, params: list[torch.Tensor], *, seed: int) -> torch.Tensor:
    """``z * (H z)`` per weight (flat, float64) for a Rademacher ``z`` drawn from ``seed``:
    its sum over a group is one Hutchinson sample of the group's ``tr(H)``. The weights are
    put back bit for bit afterwards (copies, not a subtraction)."""
    gen = torch.Generator().manual_seed(seed)
    zs = [torch.randint(0, 2, p.shape, generator=gen).to(p.dtype) * 2 - 1 for p in params]
    saved = [p.detach().clone() for p in params]
    ends = []
    try:
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, z, w in zip(params, zs, saved, strict=True):
                    p.copy_(w + sign * HUTCHINSON_STEP * z.to(p.device))
            ends.append(_gradient(tm, batch, params)[0])
    finally:
        with torch.no_grad():
            for p, w in zip(params, saved, strict=True):
                p.copy_(w)
    hz = (ends[0] - ends[1]) / (2 * HUTCHINSON_STEP)
    z = torch.cat([z.reshape(-1) for z in zs]).to(torch.float64)
    return z * hz


def _moments(g: torch.Tensor) -> tuple[float, float]:
    """(E||g_B - g||^2, ||g||^2), both unbiased, from ``n`` batch gradients (rows of ``g``)."""
    n = g.shape[0]
    mean = g.mean(0)
    noise_sq = float(((g - mean) ** 2).sum()) / (n - 1)
    return noise_sq, float(mean @ mean) - noise_sq / n


def group_of(name: str) -> str:
    """A trainable tensor's group: its name with layer numbers folded to ``*``."""
    return re.sub(r"(?<=\.)\d+(?=\.)", "*", name)


def merit(grad_sq: float, batch_sq: float, curvature: float) -> float:
    """What a zeroth-order record over a set of weights is worth at its best rate (the
    module's theory): ``||g||^4 / (E||g_B||^2 tr H)``; nan where a figure is unresolved."""
    if grad_sq <= 0 or batch_sq <= 0 or curvature <= 0:
        return math.nan
    return grad_sq * grad_sq / (batch_sq * curvature)


def _groups(
    names: list[str], params: list[torch.Tensor], g: torch.Tensor, zhz: torch.Tensor
) -> tuple[GroupNoise, ...]:
    spans: dict[str, list[slice]] = {}
    start = 0
    for name, p in zip(names, params, strict=True):
        spans.setdefault(group_of(name), []).append(slice(start, start + p.numel()))
        start += p.numel()
    n = g.shape[0]
    figures = {}
    for group, parts in spans.items():
        cols = torch.cat([torch.arange(sl.start, sl.stop) for sl in parts])
        noise_sq, grad_sq = _moments(g[:, cols])
        samples = zhz[:, cols].sum(1)
        se = float(samples.std()) / math.sqrt(n)
        figures[group] = (len(cols), grad_sq, noise_sq, float(samples.mean()), se)
    total = [sum(f[i] for f in figures.values()) for i in range(1, 4)]
    whole = merit(total[0], total[0] + total[1], total[2])
    out = []
    for group, (weights, grad_sq, noise_sq, curvature, se) in figures.items():
        rest = merit(total[0] - grad_sq, total[0] - grad_sq + total[1] - noise_sq,
                     total[2] - curvature)  # fmt: skip
        out.append(GroupNoise(group, weights, grad_sq, noise_sq, curvature, se, rest / whole))
    return tuple(out)


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
    groups = [line for p in r.points if p.groups for line in _group_rows(p, sizes_[0])]
    return "\n".join([head, "", columns, *rows, "", *foot, *groups])


def _group_rows(p: NoisePoint, b0: int) -> list[str]:
    width = max(len(g.group) for g in p.groups)
    head = (
        f"{'group':<{width}} {'weights':>8} {'||g||^2':>10} {'E||gB-g||^2':>12} "
        f"{'tr(H)':>10} {'+-':>8} {'without':>8}"
    )
    rows = [
        f"{g.group:<{width}} {g.weights:>8,} {g.grad_sq:>10.3e} {g.noise_sq:>12.3e} "
        f"{g.curvature:>10.3e} {g.curvature_se:>8.1e} "
        + (f"{g.without:>8.2f}" if math.isfinite(g.without) else f"{'-':>8}")
        for g in p.groups
    ]
    title = (
        f"by group, {p.where} (without: what a record would be worth without the group, "
        f"at B={b0}; - unresolved)"
    )
    return [
        "",
        title,
        head,
        *rows,
    ]
