"""The real-process points of ``bench scale``: ``seedswarm swarm`` runs, counted in records.

The simulated curve (scale.py) steps N nodes in virtual time on one engine. These points check
it against what a user runs: ``seedswarm swarm --nodes N`` — N real ``seedswarm node``
processes through a real Mosquitto broker (the embedded broker where none is installed), the
run built from the same ``--model`` and ``--data`` — until every node's log holds
``--scale-real-records`` records in all and the nodes agree.

Records are counted, not seconds, so the machine's load moves nothing but how stale a step is
(a loaded machine steps slower against the same 1 s frames, so a step misses fewer records).
After the run the curve is rebuilt from node n0's log: the swarm's model after its first n
records is the base plus the first n records of the log's total order ``(clock, node, seq)``
(docs/PROTOCOL.md §7: a frame's clock is a Lamport clock, one above the largest its author has
seen, so the order extends "was seen before": a record comes after every record its step's view
held), evaluated every ``--scale-eval-every`` records, as the
simulation evaluates its global state. A seed is the run's name (``scale-s<seed>``): the run id,
and so every direction and batch, changes with it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seedswarm.daemon.errors import BenchError
from seedswarm.daemon.launch.mosquitto import broker_for_swarm

from .curves import CurvePoint, crossing
from .settings import BenchSettings


@dataclass(frozen=True, slots=True)
class RealRun:
    """One ``seedswarm swarm`` run and the records its model took to the target."""

    nodes: int
    seed: int
    records: int  # records the log held at the end (all nodes')
    records_to_loss: float | None  # interpolated; None: not reached within the run
    records_to_accuracy: float | None
    steps_per_node: int
    seconds: float  # the launcher's wall clock, start-up included
    curve: tuple[CurvePoint, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "seed": self.seed,
            "records": self.records,
            "records_to_loss": self.records_to_loss,
            "records_to_accuracy": self.records_to_accuracy,
            "steps_per_node": self.steps_per_node,
            "seconds": self.seconds,
            "curve": [[c.records, c.loss, c.accuracy] for c in self.curve],
        }


def run_real(
    s: BenchSettings, setup: Any, nodes: int, seed: int, target_accuracy: float
) -> RealRun:
    """``seedswarm swarm --nodes N`` to ``--scale-real-records`` records, then its curve."""
    steps = max(1, math.ceil(s.scale_real_records / (nodes * setup.manifest.directions)))
    work = Path(tempfile.mkdtemp(prefix="bench-scale-real-"))
    cmd = [
        sys.executable, "-m", "seedswarm.daemon.cli", "swarm", "--nodes", str(nodes),
        "--name", f"scale-s{seed}", "--model", s.model, "--data", s.data,
        "--dir", str(work / "swarm"), "--fresh", "--steps", str(steps),
        # the simulation's constant rate (swarm --steps would plan an FZOO run's decay)
        "--schedule", "constant", "--batch-size", str(s.scale_batch),
        "--max-latency", str(s.scale_latency), "--torch-threads", "1", "--kernel", s.kernel, "--timeout", str(s.scale_real_timeout),
        "--json",
    ]  # fmt: skip
    try:
        with broker_for_swarm() as broker:
            cmd += broker
            t0 = time.monotonic()
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                start_new_session=True,
            )  # fmt: skip
            try:
                out, err = proc.communicate(timeout=s.scale_real_timeout + 120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
            seconds = time.monotonic() - t0
        if proc.returncode != 0:
            tail = " | ".join(err.strip().splitlines()[-3:])
            raise BenchError(
                f"bench scale: seedswarm swarm --nodes {nodes} (seed {seed}) ended with "
                f"{proc.returncode}: {tail}"
            )
        _check_agreement(out, nodes)
        records, curve = _curve(s, setup, work / "swarm" / "n0", nodes, seed, target_accuracy)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    target_acc = target_accuracy
    return RealRun(
        nodes=nodes, seed=seed, records=records,
        records_to_loss=crossing(curve, s.scale_target_loss, below=True),
        records_to_accuracy=(
            None if target_acc <= 0 or curve[-1].accuracy is None
            else crossing(curve, target_acc, below=False)
        ),
        steps_per_node=steps, seconds=seconds, curve=tuple(curve),
    )  # fmt: skip


def _check_agreement(out: str, nodes: int) -> None:
    """The launcher's final JSON (``--json``): it ended well, every node holding one model."""
    try:
        final = json.loads(out)
    except ValueError as e:
        raise BenchError(f"bench scale: seedswarm swarm printed no final JSON: {out!r:.200}") from e
    if not isinstance(final, dict) or final.get("ok") is not True or final.get("agree") is not True:
        raise BenchError(f"bench scale: the {nodes} nodes did not end in agreement: {out!r:.300}")


def _curve(
    s: BenchSettings, setup: Any, node_dir: Path, nodes: int, seed: int, target_accuracy: float
) -> tuple[int, list[CurvePoint]]:
    """The records n0's log holds, and the swarm's model after its first n records, every
    ``--scale-eval-every`` until it reaches the target (as the simulation stops), from that log."""
    from seedswarm.daemon.store.datadir import DataDir
    from seedswarm.model.engine import Engine
    from seedswarm.model.evaluation import evaluate

    manifest, log, _ = DataDir(node_dir).load()
    records = list(log.ordered())
    engine = Engine.open(manifest, model_ref=setup.model_ref, kernel=s.kernel)
    curve: list[CurvePoint] = []
    done = 0
    every = s.scale_eval_every
    marks = [*range(0, len(records), every), len(records)]
    for n in marks:
        engine.apply(records[done:n])
        done = n
        ev = evaluate(engine.task_model, setup.held, batch_size=64)
        acc = ev.get("accuracy")
        curve.append(CurvePoint(n, float(ev["loss"]), acc))
        print(
            f"    real {nodes} node(s), seed {seed}: {n} records, held-out loss "
            f"{curve[-1].loss:.4f}" + ("" if acc is None else f", accuracy {acc:.3f}"),
            file=sys.stderr, flush=True,
        )  # fmt: skip
        if curve[-1].loss <= s.scale_target_loss and (
            target_accuracy <= 0 or (acc is not None and acc >= target_accuracy)
        ):
            break
    return len(records), curve
