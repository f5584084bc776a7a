"""``seedswarm bench step``: one ZO step against its floor and against MeZO, side by side.

  two_forwards   two bare forward passes (the physical floor of a two-sided step)
  zo_step        one seedswarm ZO step (Engine.step: perturb, two passes, restore + update)
  mezo_step      MeZO's loop: torch.manual_seed + torch.normal per parameter, four
                 regenerations per step (same model, batch and dtype)

and the peak memory of each (GPU allocations on CUDA; on CPU the resident memory, each arm in
a fresh process, since freed memory the allocator keeps would hide what the next one needs),
against inference: two forward passes of the bare model, loaded without a replica (no grid
state), the memory a user would need to run the model at all.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seedswarm.daemon.console import table
from seedswarm.model.engine import Engine

from .common import bench_engine, sync
from .settings import BenchSettings

STEP_ARMS = ("two_forwards", "zo_step", "mezo_step")
MEMORY_ARMS = (*STEP_ARMS, "inference")  # inference: the bare model, no replica


@dataclass(frozen=True, slots=True)
class StepMemory:
    """Peak bytes of each arm, and the same less what was resident before it ran."""

    weights: int
    peak: dict[str, int]  # arm -> peak bytes
    above_loaded: dict[str, int]  # arm -> peak less the bytes before the arm
    measured_in: str


@dataclass(frozen=True, slots=True)
class StepResult:
    model: str
    params: int
    device: str
    kernel: str
    batch: tuple[int, int]
    repeats: int
    seconds: dict[str, float]  # arm -> median seconds
    memory: StepMemory

    @property
    def ratios(self) -> dict[str, float]:
        s = self.seconds
        fwd, zo, mz = s["two_forwards"], s["zo_step"], s["mezo_step"]
        return {
            "zo_step / two_forwards": zo / fwd,
            "mezo_step / two_forwards": mz / fwd,
            "mezo_step / zo_step": mz / zo,
        }

    def to_json(self) -> dict[str, Any]:
        m = self.memory
        r = self.ratios
        fwd, zo, inf = m.peak["two_forwards"], m.peak["zo_step"], m.peak["inference"]
        return {
            "model": self.model,
            "params": self.params,
            "device": self.device,
            "kernel": self.kernel,
            "batch": list(self.batch),
            "repeats": self.repeats,
            "seconds": dict(self.seconds),
            "ratios": r,
            "overhead_pct": 100.0 * (r["zo_step / two_forwards"] - 1.0),
            "memory_bytes": {
                "weights": m.weights,
                **{f"peak_{arm}": m.peak[arm] for arm in MEMORY_ARMS},
                "above_loaded": dict(m.above_loaded),
                "measured_in": m.measured_in,
            },
            # the ZO step (with the replica's int64 state) against the bare model's inference
            "memory_ratio_zo_vs_inference": (zo / inf) if inf else None,
            "memory_ratio_zo_vs_two_forwards": (zo / fwd) if fwd else None,
        }


def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class _PeakRSS:
    """Resident memory of this process during a block (Linux): ``start`` is VmRSS on entry,
    ``peak`` the high-water mark VmHWM on exit, after resetting it on entry (clear_refs)."""

    def __enter__(self) -> _PeakRSS:
        self.start = self.peak = 0
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.ok = False
            return self
        self.ok = True
        self.start = _proc_status_bytes("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.ok:
            self.peak = _proc_status_bytes("VmHWM")


def _memory_probe(s: BenchSettings, arm: str) -> tuple[int, int]:
    """In a fresh process: load the model, then run one arm once. Returns (resident bytes
    before the arm, peak resident bytes during it)."""
    from seedswarm.model.loading import quiet_libraries

    quiet_libraries()  # a spawned child starts with the libraries' defaults
    fn = _inference_arm(s) if arm == "inference" else _step_arms(bench_engine(s), s)[arm]
    with _PeakRSS() as rss:
        fn()
    return rss.start, rss.peak


def _cuda_inference_probe(s: BenchSettings) -> tuple[int, int]:
    """In a fresh process: GPU bytes allocated before and at the peak of the bare model's two
    forward passes."""
    from seedswarm.model.loading import quiet_libraries

    quiet_libraries()
    fn = _inference_arm(s)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = int(torch.cuda.memory_allocated())
    fn()
    torch.cuda.synchronize()
    return before, int(torch.cuda.max_memory_allocated())


def _inference_arm(s: BenchSettings) -> Callable[[], None]:
    """Two forward passes of the bare model (loaded as a replica would load it, but with no
    replica: no packed buffer, no grid state), on the same batch as the other arms."""
    from seedswarm.daemon.node.startup import resolve_device
    from seedswarm.model.loading import load
    from seedswarm.model.tasks import TaskModel
    from seedswarm.protocol.manifest import TaskSpec

    device = resolve_device(s.device)
    task = TaskSpec(kind="causal_lm", seq_len=max(s.seq_len, 8))
    tm = TaskModel(load(s.model, kind="lm", init_seed=0), task, init_seed=0)
    tm.to(device)
    batch = {"input_ids": _batch_ids(tm, s).to(device)}

    def two_forwards() -> None:
        tm.loss(batch)
        tm.loss(batch)

    return two_forwards


def _batch_ids(tm: Any, s: BenchSettings) -> torch.Tensor:
    config: Any = tm.backbone.config  # a transformers config: typed by the model
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, int(config.vocab_size), (s.batch_size, s.seq_len), generator=gen)


def _peak_memory(
    s: BenchSettings, device: torch.device, arms: dict[str, Callable[[], None]]
) -> dict[str, tuple[int, int]]:
    """(before, peak) bytes per arm: GPU allocations on CUDA (the arms as given), resident
    memory on CPU (each arm rebuilt in a fresh process from the settings)."""
    if device.type == "cuda":
        out: dict[str, tuple[int, int]] = {}
        for name, fn in arms.items():
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = int(torch.cuda.memory_allocated(device))
            fn()
            torch.cuda.synchronize(device)
            out[name] = (before, int(torch.cuda.max_memory_allocated(device)))
        # the bare model in a process of its own: this one holds a replica's buffers
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=1) as pool:
            out["inference"] = pool.submit(_cuda_inference_probe, s).result()
        return out
    if not Path("/proc/self/clear_refs").exists():  # not Linux: no resident-memory figures
        return dict.fromkeys(MEMORY_ARMS, (0, 0))
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=1) as pool:
        return {name: pool.submit(_memory_probe, s, name).result() for name in MEMORY_ARMS}


def _mezo_step(
    params: list[torch.Tensor], loss: Callable[[], float], seed: int, eps: float, lr: float
) -> float:
    """MeZO's reference loop (Malladi et al. 2023): z regenerated four times from the seed."""

    def perturb(scale: float) -> None:
        torch.manual_seed(seed)
        for p in params:
            z = torch.normal(mean=0.0, std=1.0, size=p.shape, device=p.device, dtype=p.dtype)
            p.add_(z, alpha=scale * eps)

    perturb(1.0)
    lp = loss()
    perturb(-2.0)
    lm = loss()
    perturb(1.0)
    g = (lp - lm) / (2 * eps)
    torch.manual_seed(seed)
    for p in params:
        z = torch.normal(mean=0.0, std=1.0, size=p.shape, device=p.device, dtype=p.dtype)
        p.add_(z, alpha=-lr * g)
    return g


def _step_arms(engine: Engine, s: BenchSettings) -> dict[str, Callable[[], None]]:
    """What ``bench step`` compares, on one model and one batch of random token ids."""
    tm = engine.task_model
    device = engine.device
    batch = {"input_ids": _batch_ids(tm, s).to(device)}
    params = [p.data for _, p in engine.trainable]
    counter = iter(range(1 << 30))

    def two_forwards() -> None:
        tm.loss(batch)
        tm.loss(batch)

    def ours() -> None:
        engine.step([engine.seed_of("bench", next(counter))], batch)

    def mezo() -> None:
        _mezo_step(params, lambda: tm.loss(batch), next(counter), 1e-3, 1e-7)

    return dict(zip(STEP_ARMS, (two_forwards, ours, mezo), strict=True))


def bench_step(s: BenchSettings) -> StepResult:
    engine = bench_engine(s)
    tm = engine.task_model
    device = engine.device
    repeats = s.repeats
    arms = _step_arms(engine, s)

    # interleave the three so that drift in machine load hits all of them alike
    times: dict[str, list[float]] = {name: [] for name in arms}
    for fn in arms.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in arms.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    mem = _peak_memory(s, device, arms)
    return StepResult(
        model=s.model,
        params=engine.numel,
        device=str(device),
        kernel=engine.backend.name,
        batch=(s.batch_size, s.seq_len),
        repeats=repeats,
        seconds={k: statistics.median(times[k]) for k in STEP_ARMS},
        memory=StepMemory(
            weights=sum(p.numel() * p.element_size() for p in tm.parameters()),
            peak={name: peak for name, (_, peak) in mem.items()},
            above_loaded={name: peak - before for name, (before, peak) in mem.items()},
            measured_in="torch.cuda" if device.type == "cuda" else "a fresh process per arm",
        ),
    )


def print_step(r: StepResult) -> str:
    s, ratios, m = r.seconds, r.ratios, r.memory
    mib = 1 << 20
    up = m.above_loaded
    overhead = 100.0 * (ratios["zo_step / two_forwards"] - 1.0)
    return "\n".join(
        [
            (
                f"model {r.model} ({r.params / 1e6:.1f}M trainable), batch {r.batch[0]}x{r.batch[1]}, "
                f"{r.device}, {r.kernel} kernel, median of {r.repeats}"
            ),
            table(
                ["", "seconds", "vs two forwards"],
                [
                    ["two forward passes", f"{s['two_forwards']:.4f}", "1.00x"],
                    [
                        "seedswarm ZO step",
                        f"{s['zo_step']:.4f}",
                        f"{ratios['zo_step / two_forwards']:.2f}x",
                    ],
                    [
                        "MeZO reference step",
                        f"{s['mezo_step']:.4f}",
                        f"{ratios['mezo_step / two_forwards']:.2f}x",
                    ],
                ],
            ),
            (
                f"overhead beyond two forwards: {overhead:.1f}%   "
                f"MeZO / seedswarm: {ratios['mezo_step / zo_step']:.2f}x"
            ),
            (
                f"peak memory (MiB, {m.measured_in}): weights {m.weights / mib:.0f}, inference "
                f"(the bare model) {m.peak['inference'] / mib:.0f}, two forwards "
                f"{m.peak['two_forwards'] / mib:.0f}, ZO step {m.peak['zo_step'] / mib:.0f}, MeZO "
                f"step {m.peak['mezo_step'] / mib:.0f}; ZO step / inference "
                f"{m.peak['zo_step'] / max(m.peak['inference'], 1):.3f}x"
            ),
            (
                f"  above the loaded model: two forwards {up['two_forwards'] / mib:.0f}, ZO step "
                f"{up['zo_step'] / mib:.0f}, MeZO step {up['mezo_step'] / mib:.0f}"
            ),
        ]
    )
