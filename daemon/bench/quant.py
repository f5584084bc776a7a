"""``seedswarm bench quant``: 1-byte records against the unquantised projected gradient, on the
same seeds, batches and base model (see ``bench_quant``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from seedswarm.daemon.console import table
from seedswarm.daemon.errors import ConfigError

from .settings import BenchSettings


@dataclass(frozen=True, slots=True)
class QuantPoint:
    step: int
    byte: dict[str, float]  # held-out loss (and accuracy) of the 1-byte arm
    unquantised: dict[str, float]  # ... of the unquantised arm ("float" in JSON)

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "byte": self.byte, "float": self.unquantised}


@dataclass(frozen=True, slots=True)
class QuantResult:
    model: str
    data: str
    steps: int
    lr: float
    unit_exp: int
    mean_abs_q: float
    clipped_fraction: float
    curve: tuple[QuantPoint, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "data": self.data,
            "steps": self.steps,
            "lr": self.lr,
            "unit_exp": self.unit_exp,
            "mean_abs_q": self.mean_abs_q,
            "clipped_fraction": self.clipped_fraction,
            "curve": [p.to_json() for p in self.curve],
        }


def bench_quant(s: BenchSettings) -> QuantResult:
    """1-byte records against the unquantised projected gradient, on the same seeds and batches.

    Arm "byte" is the protocol: q = stochastic_round(clip(lr*g/u)), update u*q*z. Arm "float"
    updates by lr*g*z, rounded only to each tensor's grid (no clip, no byte): what the records
    would do with unlimited bits. Both arms see the same seeds, batches and base model.
    """
    from seedswarm.daemon.node.startup import open_engine, plan_run, resolve_device
    from seedswarm.daemon.settings import RunSettings
    from seedswarm.model.data import read, sample_batch
    from seedswarm.model.engine import Engine
    from seedswarm.model.tasks import prepare

    model = "tiny" if s.model == "opt-125m-config" else s.model
    run = RunSettings(model=model, data=s.data, lr=s.lr, unit_exp=s.unit_exp)
    device = resolve_device(s.device)
    plan = plan_run(run)
    byte = open_engine(plan, run, device=device, kernel=s.kernel)
    flt = Engine.open(byte.manifest, model_ref=plan.model_ref, device=device, kernel=s.kernel)
    m = byte.manifest
    tm = byte.task_model
    train = prepare(plan.raw, m.task, tm.tokenizer)
    if s.eval:
        held = prepare(read(s.eval), m.task, tm.tokenizer)
    else:  # the last tenth of the training data, which the batches below never draw from
        cut = len(train) - max(1, len(train) // 10)
        held = train.subset(range(cut, len(train)))
        train = train.subset(range(cut))
    batch_size = s.batch_size

    def float_step(seed: int, batch: dict[str, torch.Tensor]) -> None:
        # Engine.accumulate: perturbations by whole grid steps without the record bookkeeping
        flt.accumulate([(seed, 1, 0)])
        lp = flt.task_model.loss(batch)
        flt.accumulate([(seed, -2, 0)])
        lm = flt.task_model.loss(batch)
        g = (lp - lm) / (2 * m.epsilon)
        lay = flt.layout
        # restore (+eps) fused with the unquantised update lr*g, on each tensor's grid:
        # lr*g / 2**e_t = lr*g * 2**(unit_shift_t - unit_exp)
        du = np.round(np.ldexp(m.lr * g, lay.unit_shift - m.unit_exp))
        if not np.all(np.abs(du) < 2**24):  # beyond the grid's exact range (and int32)
            raise ConfigError(
                f"bench quant: the unquantised update lr*g = {m.lr * g:.3g} leaves the exact "
                "grid range; lower --lr"
            )
        du = du.astype(np.int64)
        steps = (lay.eps_steps - du)[None, :].astype(np.int32)
        flt.backend.accumulate_flat(flt.state, flt.flat, lay, [seed], steps)

    curve: list[QuantPoint] = []
    qs: list[int] = []

    def evaluate(step: int) -> None:
        a = byte.evaluate(held, batch_size=batch_size * 4)
        b = flt.evaluate(held, batch_size=batch_size * 4)
        curve.append(QuantPoint(step, a, b))

    evaluate(0)
    for seq in range(s.steps):
        seed = byte.seed_of("n0", seq)
        idx = sample_batch(seed, len(train), batch_size)
        qs.extend(byte.step([seed], tm.make_batch(train.subset(idx))).qs)
        float_step(seed, flt.task_model.make_batch(train.subset(idx)))
        if (seq + 1) % s.eval_every == 0:
            evaluate(seq + 1)
    return QuantResult(
        model=model,
        data=s.data,
        steps=s.steps,
        lr=m.lr,
        unit_exp=m.unit_exp,
        mean_abs_q=sum(abs(q) for q in qs) / max(len(qs), 1),
        clipped_fraction=sum(abs(q) == 127 for q in qs) / max(len(qs), 1),
        curve=tuple(curve),
    )


def print_quant(r: QuantResult) -> str:
    head = (
        f"model {r.model}, data {r.data}, lr {r.lr}, u = 2^{r.unit_exp}: mean |q| "
        f"{r.mean_abs_q:.1f}, clipped {100 * r.clipped_fraction:.1f}%"
    )
    acc = "accuracy" in r.curve[0].byte
    headers = ["step", "loss, 1-byte records", "loss, unquantised g"]
    if acc:
        headers += ["accuracy, 1-byte", "accuracy, unquantised"]
    rows = []
    for p in r.curve:
        row = [p.step, f"{p.byte['loss']:.4f}", f"{p.unquantised['loss']:.4f}"]
        if acc:
            row += [f"{p.byte['accuracy']:.4f}", f"{p.unquantised['accuracy']:.4f}"]
        rows.append(row)
    return f"{head}\n{table(headers, rows)}"
