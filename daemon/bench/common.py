"""What the speed benchmarks share: the machine they ran on, the clock, and the engine.

Every benchmark prints ratios against a reference measured in the same process, on the same
machine, a moment apart, because absolute times on shared machines mean little. Times are
medians over ``--repeats`` runs after a warm-up.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from seedswarm.model.engine import Engine

from .settings import BenchSettings


@dataclass(frozen=True, slots=True)
class Host:
    cpus: int | None
    torch: str
    torch_threads: int
    gpu: str | None  # the first CUDA device's name, None without one

    @classmethod
    def here(cls) -> Host:
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        return cls(os.cpu_count(), torch.__version__, torch.get_num_threads(), gpu)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "cpus": self.cpus,
            "torch": self.torch,
            "torch_threads": self.torch_threads,
        }
        if self.gpu is not None:
            out["gpu"] = self.gpu
        return out

    def line(self) -> str:
        return f"host: {self.cpus} cpus, torch {self.torch} ({self.torch_threads} threads)" + (
            f", {self.gpu}" if self.gpu else ""
        )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(
    fn: Callable[[], Any], repeats: int, device: torch.device, warmup: int = 1
) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_engine(s: BenchSettings, kernel: str | None = None) -> Engine:
    """The engine of ``--model`` for a causal LM task, as step and apply measure it."""
    from seedswarm.daemon.node.startup import resolve_device
    from seedswarm.model.hyper import Hyper
    from seedswarm.protocol.manifest import TaskSpec

    device = resolve_device(s.device)
    task = TaskSpec(kind="causal_lm", seq_len=max(s.seq_len, 8))
    lora = s.adapter == "lora"
    hyper = Hyper(
        trainable=s.train_only,
        adapter="lora" if lora else "",
        lora_rank=s.lora_rank,
        lora_alpha=s.lora_alpha,
        lora_targets=tuple(t.strip() for t in s.lora_targets.split(",") if t.strip())
        if lora
        else (),
    )
    return Engine.build("bench", s.model, task, hyper, device=device, kernel=kernel or s.kernel)
