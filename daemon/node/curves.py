"""Training and eval curves as TensorBoard event files, in the data directory.

    <data dir>/tensorboard/events.out.tfevents.*

``tensorboard --logdir <data dir>`` shows them (or ``--logdir`` of a swarm's directory: one
run per node), and so does anything that reads event files (TensorBoard's
``event_accumulator``, pandas helpers, W&B's sync). They are written through tensorboardX's
``SummaryWriter``, which needs neither TensorFlow nor the tensorboard package.

  tag                 step              value
  train/loss          own steps taken   the step's training loss (mean of its forward passes)
  eval/loss           records applied   held-out loss (--eval)
  eval/accuracy       records applied   classification tasks
  eval/exact_match    records applied   completion tasks with short answers (evaluation.py)
  eval/f1             records applied   the same

Eval points take the records applied as their step: every node evaluates at the same counts,
so the nodes' eval curves line up. A training loss is a node's own, so its step is the node's
own step count, which a restart continues. The event files are for reading: the log is the
run's durable record and evals.jsonl the eval history's. The writer queues events and a
thread of tensorboardX's writes them, flushing every ``FLUSH_S`` seconds and at ``close``, so
a crash loses at most the last few seconds of points.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .evaluation import EvalPoint

log = logging.getLogger("seedswarm.curves")

CURVES = "tensorboard"  # the folder in the data directory
FLUSH_S = 5.0
MAX_QUEUE = 1024  # events queued before add_scalar waits for the writer thread


class Curves:
    """The event files of one node (or one ``train`` run)."""

    def __init__(self, data_dir: Path) -> None:
        from tensorboardX import SummaryWriter

        self.path = data_dir / CURVES
        self._writer: Any = SummaryWriter(
            logdir=str(self.path), flush_secs=FLUSH_S, max_queue=MAX_QUEUE
        )
        self.points = 0  # scalars written, for /status and tests

    def train(self, step: int, loss: float, *, unix_time: float) -> None:
        """One own step's training loss."""
        self._scalar("train/loss", loss, step, unix_time)

    def eval(self, point: EvalPoint) -> None:
        """One evaluation, at the records applied when it was taken."""
        for name, value in point.figures().items():
            self._scalar(f"eval/{name}", value, point.records, point.unix_time)

    def _scalar(self, tag: str, value: float, step: int, unix_time: float) -> None:
        self._writer.add_scalar(tag, value, global_step=step, walltime=unix_time)
        self.points += 1

    def flush(self) -> None:
        """Write what is queued (blocks on the file: call it off the event loop)."""
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file (blocks on the file: off the event loop)."""
        self._writer.close()
