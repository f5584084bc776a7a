"""``seedswarm bench apply``: records/s of replay, for batches of 1, 16 and 256 records,

vs  one fp32 read+write pass over the weights (the memory-bandwidth floor)
vs  one torch.randn per record and parameter (the naive replay)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from seedswarm.daemon.console import table

from .common import bench_engine, median_time
from .settings import BenchSettings, sizes


@dataclass(frozen=True, slots=True)
class ApplyRow:
    batch: int
    seconds: float

    @property
    def records_per_s(self) -> float:
        return self.batch / self.seconds


@dataclass(frozen=True, slots=True)
class ApplyResult:
    model: str
    params: int
    device: str
    kernel: str
    kernel_threads: int | None
    one_pass_seconds: float
    naive_records_per_s: float
    batches: tuple[ApplyRow, ...]

    @property
    def one_pass_gbps(self) -> float:
        return 2 * 4 * self.params / self.one_pass_seconds / 1e9  # read + write, fp32

    def time_vs_one_pass(self, row: ApplyRow) -> float:
        return row.seconds / self.one_pass_seconds

    def vs_naive(self, row: ApplyRow) -> float:
        return row.records_per_s / self.naive_records_per_s

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "params": self.params,
            "device": self.device,
            "kernel": self.kernel,
            "kernel_threads": self.kernel_threads,
            "one_pass_seconds": self.one_pass_seconds,
            "one_pass_GBps": self.one_pass_gbps,
            "naive_records_per_s": self.naive_records_per_s,
            "batches": [
                {
                    "batch": row.batch,
                    "seconds": row.seconds,
                    "records_per_s": row.records_per_s,
                    "time_vs_one_pass": self.time_vs_one_pass(row),
                    "vs_naive_randn": self.vs_naive(row),
                }
                for row in self.batches
            ],
        }


def bench_apply(s: BenchSettings) -> ApplyResult:
    batch_sizes = sizes(s.batches, "batches")
    engine = bench_engine(s)
    device = engine.device
    repeats = s.repeats
    flat = engine.flat  # every trainable weight, packed (model/layout.py)

    def one_pass() -> None:
        flat.mul_(1.0)  # reads and writes every trainable weight once

    t_pass = median_time(one_pass, repeats, device)
    rows: list[ApplyRow] = []
    counter = iter(range(1 << 40))
    for r in batch_sizes:
        terms = [(engine.seed_of("bench", next(counter)), 0, 1 + (i % 127)) for i in range(r)]
        reps = max(1, repeats if r <= 16 else 2)
        # Engine.accumulate: the apply primitive without the record bookkeeping
        rows.append(ApplyRow(r, median_time(partial(engine.accumulate, terms), reps, device)))

    # naive replay: one torch.randn per record and parameter, as a MeZO-style replay would do
    params = [p.data for _, p in engine.trainable]

    def naive(n: int = 2) -> None:
        for i in range(n):
            torch.manual_seed(i)
            for p in params:
                p.add_(torch.randn(p.shape, device=p.device, dtype=p.dtype), alpha=1e-7)

    t_naive = median_time(naive, max(1, repeats // 2), device) / 2
    return ApplyResult(
        model=s.model,
        params=engine.numel,
        device=str(device),
        kernel=engine.backend.name,
        kernel_threads=getattr(engine.backend, "threads", None),
        one_pass_seconds=t_pass,
        naive_records_per_s=1.0 / t_naive,
        batches=tuple(rows),
    )


def print_apply(r: ApplyResult) -> str:
    return "\n".join(
        [
            (
                f"model {r.model} ({r.params / 1e6:.1f}M trainable), {r.device}, {r.kernel} kernel "
                f"({r.kernel_threads} threads)"
            ),
            (
                f"one fp32 read+write pass: {r.one_pass_seconds * 1e3:.1f} ms "
                f"({r.one_pass_gbps:.1f} GB/s); naive randn replay: "
                f"{r.naive_records_per_s:.2f} records/s"
            ),
            table(
                ["records/batch", "seconds", "records/s", "vs one pass", "vs naive randn"],
                [
                    [
                        row.batch,
                        f"{row.seconds:.4f}",
                        f"{row.records_per_s:.1f}",
                        f"{r.time_vs_one_pass(row):.2f}x",
                        f"{r.vs_naive(row):.0f}x",
                    ]
                    for row in r.batches
                ],
            ),
        ]
    )
