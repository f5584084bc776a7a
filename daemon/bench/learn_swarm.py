"""The swarm arm of ``bench learn``: ``seedswarm swarm`` with real node processes through a real
broker, watched from outside, its held-out curve rebuilt afterwards from a node's log."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from seedswarm.daemon.launch.mosquitto import broker_for_swarm
from seedswarm.daemon.status.schema import NodeStatus
from seedswarm.daemon.store.datadir import DataDir

from .learn_arms import Arm, ArmNotes, ArmResult, Point, Setup, point_of
from .settings import LearnSettings


def run_swarm_arm(arm: Arm, setup: Setup, s: LearnSettings) -> ArmResult:
    """``seedswarm swarm`` with ``arm.nodes`` nodes, one torch thread each, pinned to a core each.

    The launcher runs as a user would run it, on a manifest written here; this process only
    watches: it reads each node's ``/status`` (applied version vector, steps) once a second and,
    after the run, rebuilds node n0's weights at those moments from n0's log and evaluates them
    (so evaluation costs the nodes nothing). Needs ``seedswarm node`` to take
    ``records_per_step`` seeds per step (FZOO arms) -- see docs/PROTOCOL.md.
    """
    import shutil
    import signal
    import sys
    import tempfile

    from seedswarm.model.engine import Engine
    from seedswarm.model.hyper import Hyper

    hyper = Hyper(
        epsilon=arm.epsilon, lr=arm.lr, unit_exp=arm.unit_exp, trainable=arm.trainable,
        init_seed=setup.init_seed, estimator=arm.estimator, directions=arm.directions,
        direction=arm.direction,
    )  # fmt: skip
    probe = Engine.build("learn", setup.model_ref, setup.task, hyper, kernel="torch")
    manifest = probe.manifest
    per_record = 2.0 if arm.estimator == "spsa" else (arm.directions + 1) / arm.directions
    del probe
    work = Path(tempfile.mkdtemp(prefix="bench-learn-swarm-"))
    (work / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
    cmd = [
        sys.executable, "-m", "seedswarm.daemon.cli", "swarm", "--nodes", str(arm.nodes),
        "--manifest", str(work / "manifest.json"), "--model", setup.model_ref,
        "--data", setup.data_ref, "--dir", str(work / "swarm"), "--fresh",
        "--batch-size", str(arm.batch_size), "--torch-threads", "1", "--json",
        "--kernel", setup.kernel if setup.kernel != "auto" else "auto",
    ]  # fmt: skip
    with broker_for_swarm() as broker:
        cmd += broker
        t0 = time.monotonic()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            start_new_session=True,
        )  # fmt: skip
        polls: list[tuple[float, dict[str, int], int]] = []
        first_step = None
        try:
            nodes: dict[str, tuple[int, str]] = {}
            budget = s.budget_s
            while time.monotonic() - t0 < budget + 600:
                time.sleep(1.0)
                if proc.poll() is not None:
                    break
                nodes = _swarm_nodes(proc.pid) or nodes
                for i, (pid, _) in enumerate(sorted(nodes.values())):
                    _pin(pid, i)
                status = _status(nodes.get("n0", (0, ""))[1])
                if status is None:
                    continue
                now = time.monotonic() - t0
                vv = dict(status.version_vector)
                steps = status.steps.this_session
                if first_step is None and any(vv.values()):
                    first_step = now
                polls.append((now, vv, steps))
                if first_step is not None and now - first_step >= budget:
                    break
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    curve = _replay_curve(work / "swarm" / "n0", setup, polls, s.eval_every_s, per_record)
    shutil.rmtree(work, ignore_errors=True)
    notes = ArmNotes(
        clock="wall clock from the launcher's start (start-up included)", polls=len(polls)
    )
    return ArmResult(arm, first_step or 0.0, tuple(curve), notes)


def _swarm_nodes(launcher: int) -> dict[str, tuple[int, str]]:
    """{node: (pid, http address)} of the launcher's ``seedswarm node`` children (/proc)."""
    out: dict[str, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != launcher:
                continue
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        words = [a.decode(errors="replace") for a in args]
        if "node" in words and "--node" in words and "--http" in words:
            name = words[words.index("--node") + 1]
            out[name] = (int(entry.name), words[words.index("--http") + 1])
    return out


def _pin(pid: int, index: int) -> None:
    """Every thread of ``pid`` onto core ``index`` (threads made later inherit it)."""
    cpus = sorted(os.sched_getaffinity(0))
    core = {cpus[index % len(cpus)]}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task.name), core)


def _status(http: str) -> NodeStatus | None:
    import json
    import urllib.request

    if not http:
        return None
    try:
        with urllib.request.urlopen(f"http://{http}/status", timeout=5) as resp:
            return NodeStatus.from_json(json.loads(resp.read()))
    except (OSError, ValueError):
        return None


def _replay_curve(
    node_dir: Path,
    setup: Setup,
    polls: Sequence[tuple[float, dict[str, int], int]],
    every: float,
    per_record: float,
) -> list[Point]:
    """n0's weights at the polled moments, rebuilt from its log (base + those records)."""
    from seedswarm.model.engine import Engine
    from seedswarm.model.evaluation import evaluate

    manifest, log, _ = DataDir(node_dir).load()
    records = list(log.ordered())
    engine = Engine.open(manifest, model_ref=setup.model_ref)
    held_bs = 64
    curve = [point_of(evaluate(engine.task_model, setup.held, batch_size=held_bs), 0.0, 0, 0, 0)]
    applied: dict[str, int] = {}
    next_t = every
    chosen = [p for i, p in enumerate(polls) if p[0] >= next_t or i == len(polls) - 1]
    for t, vv, steps in chosen:
        if t < next_t and (t, vv, steps) != polls[-1]:
            continue
        while next_t <= t:
            next_t += every
        todo = [r for r in records if applied.get(r.node, 0) <= r.seq < vv.get(r.node, 0)]
        engine.apply(todo)
        applied = dict(vv)
        n = sum(vv.values())
        ev = evaluate(engine.task_model, setup.held, batch_size=held_bs)
        curve.append(point_of(ev, t, steps, n, round(n * per_record)))
    return curve


# -- apply speed: dense and low-rank records side by side ---------------------------------------
