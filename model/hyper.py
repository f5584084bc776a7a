"""What a run's steps are made with and what a step gives back: the ZO hyper-parameters (they
end up in the manifest) and a step's result. Plain values, shared by the engine, the replica
and the commands that plan a run."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seedswarm.protocol.manifest import AdapterSpec

from .adapters import default_targets


@dataclass(frozen=True, slots=True)
class Hyper:
    """The run's ZO hyper-parameters (they end up in the manifest)."""

    epsilon: float = 1e-3
    lr: float = 1e-4
    unit_exp: int = -20
    headroom_exp: int = 3
    grid_min_exp: int | None = None  # default: unit_exp - 8
    trainable: str = ""
    init_seed: int = 0
    estimator: str = "spsa"  # or "fzoo" (K one-sided directions per step)
    directions: int = 1  # K: records per step
    direction: str = "dense"  # or "lowrank" (rank-1 signs for matrices)
    adapter: str = ""  # "" (train the base's own tensors) or "lora"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ()  # module names; empty: peft's default for the model
    schedule: str = "constant"  # or "decay": lr falls to 0 over ``budget`` records
    budget: int = 0  # the records the run plans (protocol/schedule.py)

    def adapter_spec(self, model: torch.nn.Module) -> AdapterSpec | None:
        """The manifest's adapter for these settings on ``model`` (None without one): the
        targets sorted, peft's defaults for the architecture when none are given."""
        if not self.adapter:
            return None
        targets = self.lora_targets or default_targets(model)
        return AdapterSpec(
            kind=self.adapter,
            rank=self.lora_rank,
            alpha=float(self.lora_alpha),
            targets=tuple(sorted(set(targets))),
        )


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one step produced: one record byte per direction, in the order of its seeds.

    ``losses`` are the forward passes' losses in the order they ran (SPSA: L+, L-; FZOO: l0,
    l_1 .. l_K); ``loss`` is the step's training loss as shown to people (their mean).
    """

    qs: tuple[int, ...]
    gs: tuple[float, ...]
    losses: tuple[float, ...]

    @property
    def loss(self) -> float:
        return sum(self.losses) / len(self.losses)
