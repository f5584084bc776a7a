"""The trainer's progress counters: steps, losses, passes over the weights, what start-up
restored, and the grid's headroom.

They live on the event loop and feed ``/status`` (through ``Trainer.statistics``); the model
thread never touches them.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from seedswarm.model.grid import Headroom

RATE_WINDOW_S = 30.0  # /status rates (steps.per_s, records_per_s) are over this window
HISTORY = 20_000  # own steps kept for /history (the dashboard's loss curve)


@dataclass(slots=True)
class Stats:
    started: float = field(default_factory=time.monotonic)
    steps: int = 0  # own steps this session
    losses: deque[float] = field(default_factory=lambda: deque(maxlen=50))
    step_times: deque[float] = field(default_factory=lambda: deque(maxlen=50))  # durations
    # (monotonic end, records applied, own step taken) of each pass in the last RATE_WINDOW_S
    passes: deque[tuple[float, int, bool]] = field(default_factory=deque)
    first_loss: float | None = None
    restored_records: int = 0  # at start-up, from a snapshot
    replayed_records: int = 0  # at start-up, from the log past the snapshot
    headroom: Headroom | None = None  # of the state, from every pass (model/grid.py)
    examples: int | None = None  # the batch the last own step drew

    # (unix time, own records so far, loss, records applied) of the last HISTORY own steps
    history: deque[tuple[float, int, float, int]] = field(
        default_factory=lambda: deque(maxlen=HISTORY)
    )

    def record_step(
        self, loss: float, seconds: float, own: int = 0, applied: int = 0, examples: int = 0
    ) -> None:
        self.steps += 1
        self.examples = examples or self.examples
        self.losses.append(loss)
        self.step_times.append(seconds)
        self.history.append((time.time(), own, loss, applied))
        if self.first_loss is None:
            self.first_loss = loss

    def record_pass(self, applied: int, stepped: bool) -> None:
        now = time.monotonic()
        self.passes.append((now, applied, stepped))
        while now - self.passes[0][0] > RATE_WINDOW_S:
            self.passes.popleft()

    def rates(self, now: float) -> tuple[float, float]:
        """(own steps, records applied) per second over the last RATE_WINDOW_S (or since start):
        they fall to 0 once the node stops stepping."""
        span = max(min(RATE_WINDOW_S, now - self.started), 1e-3)
        recent = [(n, stepped) for t, n, stepped in self.passes if now - t <= span]
        return sum(st for _, st in recent) / span, sum(n for n, _ in recent) / span

    def recent_loss(self, n: int = 20) -> float | None:
        recent = list(self.losses)[-n:]
        return sum(recent) / len(recent) if recent else None
