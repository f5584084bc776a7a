"""What ``seedswarm bench scale`` measures: a run per swarm size and seed, a point per swarm
size, and the whole result as JSON (scale.py computes them, scale_report.py shows them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .curves import CurvePoint
from .scale_real import RealRun


@dataclass(frozen=True, slots=True)
class ScaleRun:
    nodes: int
    seed: int
    records_to_loss: float | None  # interpolated; None: not reached within the budget
    records_to_accuracy: float | None
    unseen_per_step: float  # mean records of others a step did not see yet (staleness)
    steps: int
    forwards: int
    seconds: float  # real seconds the run took here
    curve: tuple[CurvePoint, ...]


@dataclass(frozen=True, slots=True)
class ScalePoint:
    nodes: int
    runs: tuple[ScaleRun, ...]
    records_to_loss: float | None  # median over the seeds (None if any missed)
    records_to_accuracy: float | None
    efficiency_loss: float | None
    efficiency_accuracy: float | None
    speedup: float | None  # predicted wall-clock, from the loss efficiency


@dataclass(frozen=True, slots=True)
class ScaleResult:
    model: str
    data: str
    estimator: str
    records_per_step: int
    step_s: float
    latency_s: float
    delay_s: float
    target_loss: float
    target_accuracy: float | None
    apply_s_per_record: float
    step_s_measured: float  # real seconds of one own step here (for the speed-up)
    points: tuple[ScalePoint, ...]
    real: tuple[RealRun, ...]  # seedswarm swarm runs (--scale-real), beside the simulation
    plot: str

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "data": self.data,
            "estimator": self.estimator,
            "records_per_step": self.records_per_step,
            "step_s": self.step_s,
            "latency_s": self.latency_s,
            "delay_s": self.delay_s,
            "target_loss": self.target_loss,
            "target_accuracy": self.target_accuracy,
            "apply_s_per_record": self.apply_s_per_record,
            "step_s_measured": self.step_s_measured,
            "plot": self.plot,
            "points": [
                {
                    "nodes": p.nodes,
                    "records_to_loss": p.records_to_loss,
                    "records_to_accuracy": p.records_to_accuracy,
                    "efficiency_loss": p.efficiency_loss,
                    "efficiency_accuracy": p.efficiency_accuracy,
                    "speedup": p.speedup,
                    "runs": [
                        {
                            "seed": r.seed,
                            "records_to_loss": r.records_to_loss,
                            "records_to_accuracy": r.records_to_accuracy,
                            "unseen_per_step": r.unseen_per_step,
                            "steps": r.steps,
                            "forwards": r.forwards,
                            "seconds": r.seconds,
                            "curve": [[c.records, c.loss, c.accuracy] for c in r.curve],
                        }
                        for r in p.runs
                    ],
                }
                for p in self.points
            ],
            "real": [r.to_json() for r in self.real],
        }
