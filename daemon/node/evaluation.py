"""Evaluation inside a node: held-out loss and accuracy (classification), or exact match and
F1 of greedy answers (completion tasks whose answers are short), at record counts every node
shares.

With ``--eval FILE --eval-every N`` a node evaluates its model whenever the records it has
applied reach the next multiple of N (the trainer ends its passes exactly there), on the model
thread between two passes, so every node's points line up at the same record counts. The
history is a JSON-lines file in the data directory (``evals.jsonl``), appended and fsynced
point by point, so it survives a restart; a node that restarts carries on from the next
multiple after its last point.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from seedswarm.daemon.errors import StoreError
from seedswarm.daemon.status.schema import EvalStatus
from seedswarm.model.replica import Replica
from seedswarm.model.tasks import Examples

log = logging.getLogger("seedswarm.evaluation")

EVALS = "evals.jsonl"


@dataclass(frozen=True, slots=True)
class EvalPoint:
    records: int  # records applied when it was taken (a multiple of --eval-every)
    vv_digest: str
    loss: float
    accuracy: float | None
    examples: int
    seconds: float  # how long the evaluation took
    unix_time: float
    # completion tasks whose reference answers are short: SQuAD's exact match and F1 of the
    # greedy answers (model/completion.py); None otherwise
    exact_match: float | None = None
    f1: float | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EvalPoint:
        return cls(
            records=int(d["records"]),
            vv_digest=str(d["vv_digest"]),
            loss=float(d["loss"]),
            accuracy=_optional(d.get("accuracy")),
            examples=int(d["examples"]),
            seconds=float(d["seconds"]),
            unix_time=float(d["unix_time"]),
            exact_match=_optional(d.get("exact_match")),
            f1=_optional(d.get("f1")),
        )

    def figures(self) -> dict[str, float]:
        """The figures a model card or a curve shows: loss, and accuracy / exact match / F1
        where the task has them."""
        out = {"loss": self.loss}
        for name in ("accuracy", "exact_match", "f1"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def line(self) -> str:
        """``loss 1.2345, accuracy 0.7500`` (what the task has) for a log line."""
        return ", ".join(f"{k} {v:.4f}" for k, v in self.figures().items())


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)


class EvalHistory:
    """The points so far, and where the next one is due."""

    def __init__(self, path: Path, every: int) -> None:
        self.path = path
        self.every = every
        self.points: list[EvalPoint] = []
        try:
            data = path.read_bytes() if path.exists() else b""
            whole = data[: data.rfind(b"\n") + 1]
            if len(whole) < len(data):
                # a crash in the middle of a write left a torn last line: cut it, or the next
                # point would be appended to it and be unreadable in turn
                log.warning("%s: cutting a torn last line", path)
                with path.open("r+b") as fh:
                    fh.truncate(len(whole))
                    os.fsync(fh.fileno())
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror}") from exc
        for line in whole.decode("utf-8", errors="replace").splitlines():
            try:
                self.points.append(EvalPoint.from_json(json.loads(line)))
            except (ValueError, KeyError, TypeError):
                log.warning("%s: skipping an unreadable line", path)

    def next_due(self, applied: int) -> int:
        """The record count of the next point: a multiple of ``every`` above the last point
        (and not below what is applied: a node that joins late starts where it stands)."""
        last = self.points[-1].records if self.points else -1
        k = max(last + 1, applied)
        return -(-k // self.every) * self.every

    def add(self, point: EvalPoint) -> None:
        self.points.append(point)
        try:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(asdict(point)) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc.strerror}") from exc

    @property
    def latest(self) -> EvalPoint | None:
        return self.points[-1] if self.points else None

    def statistics(self) -> EvalStatus | None:
        """The latest point, as /status shows it (None before the first)."""
        p = self.latest
        if p is None:
            return None
        return EvalStatus(
            p.records, p.loss, p.accuracy, p.examples, len(self.points), p.exact_match, p.f1
        )


def evaluate(replica: Replica, examples: Examples, batch_size: int) -> EvalPoint:
    """Model thread: one evaluation at what the replica holds now."""
    t0 = time.monotonic()
    vv = replica.vv
    out = replica.evaluate(examples, batch_size=batch_size)
    return point_of(out, vv, time.monotonic() - t0)


def point_of(out: Mapping[str, float], vv: Mapping[str, int], seconds: float) -> EvalPoint:
    """The point of an evaluation's figures (``Engine.evaluate``) at the version vector ``vv``."""
    from seedswarm.protocol.vv import digest

    return EvalPoint(
        records=sum(vv.values()),
        vv_digest=digest(vv),
        loss=out["loss"],
        accuracy=out.get("accuracy"),
        examples=int(out["examples"]),
        seconds=seconds,
        unix_time=time.time(),
        exact_match=out.get("exact_match"),
        f1=out.get("f1"),
    )
