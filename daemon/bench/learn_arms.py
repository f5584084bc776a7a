"""The arms of ``bench learn`` that train in this process (ZO and AdamW), the types every arm
reports in, and the apply-speed side measurement (dense against low-rank directions)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch

from seedswarm.model.tasks import Examples
from seedswarm.protocol.manifest import TaskSpec

from .settings import LearnSettings


@dataclass(frozen=True, slots=True)
class Arm:
    """One way of training. ``kind``: ``zo`` (in process), ``adamw``, or ``swarm``."""

    name: str
    kind: str = "zo"
    estimator: str = "spsa"
    directions: int = 1
    direction: str = "dense"
    threads: int = 1
    nodes: int = 1
    lr: float = 0.0
    unit_exp: int = 0
    epsilon: float = 1e-3
    trainable: str = ""
    batch_size: int = 16
    amp: bool = False


@dataclass(frozen=True, slots=True)
class Point:
    seconds: float
    steps: int
    records: int
    forwards: int
    loss: float
    accuracy: float | None = None

    def value(self, metric: str) -> float | None:
        """The point's ``accuracy`` or ``loss``."""
        return self.accuracy if metric == "accuracy" else self.loss


@dataclass(frozen=True, slots=True)
class ArmNotes:
    """What an arm adds about itself (each kind of arm says some of it)."""

    trainable_params: int | None = None
    kernel: str | None = None
    run_id: str | None = None
    mean_abs_q: float | None = None
    fingerprint: str | None = None
    clock: str | None = None  # a swarm arm: what its clock measures
    polls: int | None = None  # a swarm arm: how often its /status was read

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True, slots=True)
class ArmResult:
    arm: Arm
    startup_s: float
    curve: tuple[Point, ...]
    notes: ArmNotes


@dataclass(frozen=True, slots=True)
class ApplyRates:
    """Records/s of applying record batches with dense and with low-rank directions."""

    model: str
    params: int
    params_in_matrices: int
    records_per_batch: int
    kernel: str
    seconds: dict[str, float]  # direction -> median seconds per batch

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "records_per_s": {d: self.records_per_batch / t for d, t in self.seconds.items()},
            "lowrank_vs_dense": self.seconds["dense"] / self.seconds["lowrank"],
        }


@dataclass(slots=True)
class Setup:
    """What every arm shares: the model reference, task, and prepared data."""

    model_ref: str
    task: TaskSpec
    train: Examples
    held: Examples
    init_seed: int = 0
    data_ref: str = ""
    kernel: str = "auto"

    @property
    def classify(self) -> bool:
        return bool(self.task.kind == "classify")


# -- in-process arms --------------------------------------------------------------------------


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """torch's intra-op threads and the C kernel's threads, for one arm."""
    before = torch.get_num_threads()
    env_before = os.environ.get("SEEDSWARM_KERNEL_THREADS")
    torch.set_num_threads(n)
    os.environ["SEEDSWARM_KERNEL_THREADS"] = str(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if env_before is None:
            os.environ.pop("SEEDSWARM_KERNEL_THREADS", None)
        else:
            os.environ["SEEDSWARM_KERNEL_THREADS"] = env_before


class _Budget:
    """When an arm stops and when it evaluates, on its own training clock."""

    def __init__(self, s: LearnSettings, target: float, classify: bool) -> None:
        self.seconds = s.budget_s
        self.forwards = s.budget_forwards
        self.every = s.eval_every_s
        self.stop_at_target = s.stop_at_target
        self.target = target
        self.classify = classify
        self.next_eval = self.every

    def reached(self, p: Point) -> bool:
        if self.classify:
            return p.accuracy is not None and p.accuracy >= self.target
        return p.loss <= self.target

    def over(self, seconds: float, forwards: int) -> bool:
        return seconds >= self.seconds or (self.forwards > 0 and forwards >= self.forwards)

    def due(self, seconds: float) -> bool:
        if seconds >= self.next_eval:
            while self.next_eval <= seconds:
                self.next_eval += self.every
            return True
        return False


def point_of(ev: dict[str, float], seconds: float, steps: int, records: int, fw: int) -> Point:
    return Point(seconds, steps, records, fw, ev["loss"], ev.get("accuracy"))


def run_zo_arm(arm: Arm, setup: Setup, s: LearnSettings) -> ArmResult:
    """One node in this process: ZO steps on the arm's settings, its own records only."""
    from seedswarm.model.data import sample_batch
    from seedswarm.model.engine import Engine
    from seedswarm.model.evaluation import evaluate
    from seedswarm.model.hyper import Hyper

    budget = _Budget(s, s.target, setup.classify)
    curve: list[Point] = []
    with _threads(arm.threads):
        t_load = time.monotonic()
        hyper = Hyper(
            epsilon=arm.epsilon, lr=arm.lr, unit_exp=arm.unit_exp, trainable=arm.trainable,
            init_seed=setup.init_seed, estimator=arm.estimator, directions=arm.directions,
            direction=arm.direction,
        )  # fmt: skip
        engine = Engine.build("learn", setup.model_ref, setup.task, hyper, kernel=setup.kernel)
        tm = engine.task_model
        tm.amp_dtype = torch.bfloat16 if arm.amp else None
        startup_s = time.monotonic() - t_load
        k, per_step = engine.records_per_step, engine.forwards_per_step
        held_bs = max(arm.batch_size * 4, 64)

        def ev(seconds: float, steps: int) -> Point:
            return point_of(
                evaluate(tm, setup.held, batch_size=held_bs), seconds, steps, steps * k,
                steps * per_step,
            )  # fmt: skip

        curve.append(ev(0.0, 0))
        clock, steps, qs = 0.0, 0, 0
        while not budget.over(clock, steps * per_step):
            t0 = time.perf_counter()
            seeds = [engine.seed_of("n0", steps * k + i) for i in range(k)]
            idx = sample_batch(seeds[0], len(setup.train), arm.batch_size)
            res = engine.step(seeds, tm.make_batch(setup.train.subset(idx)))
            clock += time.perf_counter() - t0
            steps += 1
            qs += sum(abs(q) for q in res.qs)
            if budget.due(clock) or budget.over(clock, steps * per_step):
                p = ev(clock, steps)
                curve.append(p)
                if budget.stop_at_target and budget.reached(p):
                    break
        notes = ArmNotes(
            trainable_params=engine.numel,
            kernel=engine.backend.name,
            run_id=engine.run_id.hex(),
            mean_abs_q=qs / max(steps * k, 1),
            fingerprint=engine.fingerprint(),
        )
    return ArmResult(arm, startup_s, tuple(curve), notes)


def run_adamw_arm(arm: Arm, setup: Setup, s: LearnSettings) -> ArmResult:
    """First-order reference: backprop and AdamW over every weight, same scorer and batches."""
    from seedswarm.model.data import sample_batch
    from seedswarm.model.evaluation import evaluate
    from seedswarm.model.loading import load
    from seedswarm.model.tasks import TaskModel
    from seedswarm.protocol.seeds import derive_seed

    budget = _Budget(s, s.target, setup.classify)
    curve: list[Point] = []
    with _threads(arm.threads):
        t_load = time.monotonic()
        kind = backbone_kind(setup.task)
        tm = TaskModel(
            load(setup.model_ref, kind=kind, init_seed=setup.init_seed), setup.task,
            init_seed=setup.init_seed,
        )  # fmt: skip
        params = [p for _, p in tm.named_weights()]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=arm.lr, weight_decay=0.0)
        startup_s = time.monotonic() - t_load
        notes = ArmNotes(trainable_params=sum(p.numel() for p in params))
        held_bs = max(arm.batch_size * 4, 64)
        run_id = b"\0" * 8

        def ev(seconds: float, steps: int) -> Point:
            tm.eval()
            return point_of(evaluate(tm, setup.held, batch_size=held_bs), seconds, steps, 0, steps)

        curve.append(ev(0.0, 0))
        clock, steps = 0.0, 0
        while not budget.over(clock, steps):
            t0 = time.perf_counter()
            idx = sample_batch(derive_seed(run_id, "n0", steps), len(setup.train), arm.batch_size)
            batch = tm.make_batch(setup.train.subset(idx))
            with torch.enable_grad():
                if setup.classify:
                    loss = tm.classify_loss_with_grad(batch)
                else:
                    ids = batch["input_ids"]
                    loss = tm.backbone(input_ids=ids, labels=ids).loss
                torch.autograd.backward([loss])
            opt.step()
            opt.zero_grad(set_to_none=True)
            clock += time.perf_counter() - t0
            steps += 1
            if budget.due(clock) or budget.over(clock, steps):
                point = ev(clock, steps)
                curve.append(point)
                if budget.stop_at_target and budget.reached(point):
                    break
    return ArmResult(arm, startup_s, tuple(curve), notes)


def backbone_kind(task: TaskSpec) -> str:
    if task.kind == "causal_lm":
        return "lm"
    return {"lm": "lm", "mlm": "mlm", "embed": "embed", "head": "embed"}[task.scorer]


# -- apply speed: dense and low-rank records side by side --------------------------------------


def apply_rates(model: str, records: int, repeats: int, kernel: str) -> ApplyRates:
    """Records/s of applying ``records``-record batches with dense and low-rank directions,
    on the same model, interleaved (so machine load hits both alike)."""
    import statistics

    from seedswarm.model.engine import Engine
    from seedswarm.model.hyper import Hyper
    from seedswarm.protocol.manifest import TaskSpec

    task = TaskSpec(kind="causal_lm", seq_len=64)
    engines = {
        d: Engine.build("bench", model, task, Hyper(direction=d), kernel=kernel)
        for d in ("dense", "lowrank")
    }
    terms = [(engines["dense"].seed_of("bench", i), 0, 1 + (i % 127)) for i in range(records)]
    times: dict[str, list[float]] = {d: [] for d in engines}
    # Engine.accumulate: the apply primitive without the record bookkeeping
    for e in engines.values():
        e.accumulate(terms[:8])  # warm-up
    for _ in range(repeats):
        for d, e in engines.items():
            t = time.perf_counter()
            e.accumulate(terms)
            times[d].append(time.perf_counter() - t)
    med = {d: statistics.median(v) for d, v in times.items()}
    e = engines["lowrank"]
    in_matrices = sum(m.rows * m.cols for m in e.layout.matrices)
    return ApplyRates(
        model=model,
        params=e.numel,
        params_in_matrices=in_matrices,
        records_per_batch=records,
        kernel=e.backend.name,
        seconds=med,
    )
