"""Single-node commands with no network: ``train``, ``replay`` and ``eval``.

``train`` writes exactly what a swarm node writes (manifest, SQLite log, snapshots), through
the same parts: the replica's step loop (model/replica.py) makes the records and the session
(protocol/session.py) seals them into frames, so its run directory can be replayed, inspected,
or used as a node's data directory. Ctrl+C or SIGTERM stops ``train`` at the end of a step with
every finished step's records stored (``StopAtStepEnd``); the same command resumes.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from seedswarm.daemon.console import Progress, emit_json, say
from seedswarm.daemon.errors import ConfigError
from seedswarm.daemon.node.curves import Curves
from seedswarm.daemon.node.evaluation import EVALS, EvalHistory, point_of
from seedswarm.daemon.node.startup import (
    batch_size_for,
    check_batch_growth,
    open_engine,
    plan_run,
    planned_elsewhere,
    resolve_device,
    training_examples,
)
from seedswarm.daemon.store import snapshots
from seedswarm.daemon.store.datadir import DataDir, NodeInputs, read_manifest_file
from seedswarm.daemon.store.log_store import Stored
from seedswarm.model.data import read
from seedswarm.model.engine import Engine
from seedswarm.model.replica import Replica
from seedswarm.model.tasks import Examples, prepare
from seedswarm.protocol.log import OrderedLog
from seedswarm.protocol.session import Session, SessionConfig
from seedswarm.protocol.vv import digest

from .settings import EvalSettings, ReplaySettings, TrainSettings
from .stop_signal import StopAtStepEnd


def train(s: TrainSettings) -> int:
    out = DataDir(Path(s.out))
    device = resolve_device(s.local.device)
    plan = plan_run(s.run, planned_steps=s.steps)
    engine = open_engine(plan, s.run, device=device, kernel=s.local.kernel)
    engine.task_model.amp_dtype = torch.bfloat16 if s.local.amp and device != "cpu" else None
    manifest = engine.manifest
    check_batch_growth(s.local.batch_growth, manifest)
    if out.manifest_path.exists():
        longer = planned_elsewhere(read_manifest_file(out.manifest_path), manifest, str(out.root))
        if longer:
            raise ConfigError(longer)
    out.write_manifest(manifest)
    out.write_inputs(
        NodeInputs(
            s.local.node,
            NodeInputs.path_of(s.run.data),
            NodeInputs.path_of(s.eval),
            s.eval_limit,
        )
    )
    store = out.open_store(manifest)
    try:
        held_log = OrderedLog()  # read before the session is made from it (own_stored)
        store.load_log(held_log)
        session = Session(
            manifest,
            s.local.node,
            config=SessionConfig(frame_records=s.frame_records),
            log=held_log,
        )
        examples = training_examples(plan, engine, s.local.shard_pair)
        replica = Replica(
            engine,
            s.local.node,
            examples,
            batch_size=batch_size_for(s.local.batch_size, manifest),
            batch_growth=s.local.batch_growth,
        )
        snapshots.restore(replica, out.snapshots, session.log.held())
        replica.catch_up(session.log)
        return _train(s, replica, session, store, out)
    finally:
        store.close()


def _train(s: TrainSettings, replica: Replica, session: Session, store: Any, out: DataDir) -> int:
    engine = replica.engine
    quiet = s.json
    eval_ex: Examples | None = None
    if s.eval:
        eval_ex = prepare(read(s.eval), engine.manifest.task, engine.task_model.tokenizer)
        if s.eval_limit:
            eval_ex = eval_ex.subset(range(min(s.eval_limit, len(eval_ex))))
    evals: list[dict[str, Any]] = []
    t0 = time.monotonic()
    # the curves (TensorBoard files) and eval history, in the run directory as a node keeps them
    curves = Curves(out.root)
    history = EvalHistory(out.root / EVALS, max(s.eval_every, 1)) if eval_ex is not None else None

    def evaluate(step: int) -> None:
        if eval_ex is None or history is None:
            return
        t_eval = time.monotonic()
        figures = replica.evaluate(eval_ex, batch_size=replica.batch_size * 4)
        point = point_of(figures, replica.vv, time.monotonic() - t_eval)
        history.add(point)
        curves.eval(point)
        evals.append({"step": step, "seconds": time.monotonic() - t0, **figures})
        say(f"eval at step {step}: {point.line()}", quiet=quiet)

    try:
        return _steps(s, replica, session, store, out, evaluate, curves, evals)
    finally:
        curves.close()


def _steps(
    s: TrainSettings,
    replica: Replica,
    session: Session,
    store: Any,
    out: DataDir,
    evaluate: Callable[[int], None],
    curves: Curves,
    evals: list[dict[str, Any]],
) -> int:
    engine = replica.engine
    node, quiet = s.local.node, s.json

    k = engine.records_per_step  # a step makes K records (FZOO), each its own seq and seed

    def steps_done() -> int:
        return replica.next_own_seq // k

    start = steps_done()
    # --steps is a total (what the directory should hold), so running the same command again
    # after a crash or Ctrl+C finishes the run instead of adding to it
    if start >= s.steps:
        more = (
            "the run is complete (its learning rate has decayed to 0)"
            if engine.manifest.schedule == "decay"
            else f"--steps {start + 100} would take 100 more"
        )
        say(
            f"{out.root} already holds {start} steps of {node} (--steps {s.steps} is the total "
            f"the run should hold): nothing to take; {more}"
        )  # on stderr even with --json: what the command did not do
    elif start:
        say(
            f"resuming from step {start} in {out.root}: {s.steps - start} more to reach "
            f"--steps {s.steps}"
        )
    evaluate(start)
    progress = Progress(s.steps, desc="train", enabled=not quiet and start < s.steps)
    progress.update(start)
    pending: list[int] = []
    losses: list[float] = []
    t_steps = time.monotonic()

    def flush() -> None:
        if pending:
            sealed = session.seal(pending)
            store.append([Stored(x.frame, x.body) for x in sealed])
            session.stored(sealed)
            pending.clear()

    stop = StopAtStepEnd()
    with stop:
        while steps_done() < s.steps and not stop.signal:
            outcome = replica.step()
            pending.extend(outcome.qs)
            losses.append(outcome.loss)
            curves.train(steps_done(), outcome.loss, unix_time=time.time())
            if len(pending) >= s.frame_records:
                flush()
            done = steps_done()
            progress.update(
                done, loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}", q=outcome.qs[0]
            )
            if s.eval_every and done % s.eval_every == 0 and done < s.steps and not stop.signal:
                evaluate(done)  # not once asked to stop: the resumed run evaluates at its start
    flush()  # every finished step's records, before anything else (a signal stop included)
    progress.close()
    elapsed = time.monotonic() - t_steps
    taken = steps_done() - start
    stopped = stop.signal and steps_done() < s.steps  # (a signal after the last step: done)
    if stopped:
        say(
            f"stopped by {stop.signal} after step {steps_done()} of {s.steps}, its records stored: "
            f"the same command resumes the run"
        )
    elif taken:
        evaluate(steps_done())
    cap = replica.capture()
    snapshots.save(
        out.snapshots,
        cap.state,
        run_id=engine.run_id.hex(),
        version_vector=dict(cap.vv),
        fingerprint=cap.fingerprint,
    )
    vv = session.log.held()
    summary = {
        "command": "train",
        "out": str(out.root),
        "run_id": engine.run_id.hex(),
        "node": node,
        "steps": taken,
        "complete": steps_done() >= s.steps,
        "records": session.log.held_count(),
        "version_vector": vv,
        "vv_digest": digest(vv),
        "fingerprint": cap.fingerprint,
        "loss_first": _mean(losses[:20]),
        "loss_last": _mean(losses[-20:]),
        "steps_per_s": taken / elapsed if taken and elapsed > 0 else None,
        "headroom_bits": cap.headroom.bits,
        "headroom_records": cap.headroom.records,
        "eval": evals,
        "batch_size": replica.batch_size,
        "batch_growth": replica.batch_growth,
        "kernel": engine.backend.name,
        "device": str(engine.device),
    }
    if s.json:
        emit_json(summary)
    else:
        if losses:
            say(
                f"loss {summary['loss_first']:.4f} -> {summary['loss_last']:.4f} over {taken} steps "
                f"({summary['steps_per_s']:.1f} steps/s of {_examples(replica)} examples, "
                f"{engine.backend.name} kernel on {engine.device})"
            )
        print(f"run {engine.run_id.hex()}  records {session.log.held_count()}  out {out.root}")
        print(f"fingerprint {cap.fingerprint}")
    # stopped by a signal: 128 + its number, as a shell reports a command a signal ended, so
    # that `train ... && eval ...` or a loop of runs does not go on as if the run were whole
    return 128 + signal.Signals[stop.signal] if stopped else 0


def _eval_data(s: EvalSettings, run_dir: DataDir) -> tuple[str, int]:
    """Which data ``eval`` reads, and how many examples of it (0: all)."""
    if s.data:
        return s.data, max(s.limit, 0)
    inputs = run_dir.inputs()
    if inputs is not None and inputs.eval:
        say(f"evaluating on the run's held-out data, {inputs.eval} (its --eval)", quiet=s.json)
        return inputs.eval, inputs.eval_limit if s.limit < 0 else s.limit
    if inputs is not None and inputs.data:
        say(
            f"the run has no held-out data (--eval); evaluating on its training data, "
            f"{inputs.data} (--data FILE for another)",
            quiet=s.json,
        )
        return inputs.data, max(s.limit, 0)
    raise ConfigError(
        f"{run_dir.root} does not say what data its run used (no node.json): pass --data FILE"
    )


EVAL_PART_BATCHES = 8  # batches evaluated between two progress reports


def _examples(replica: Replica) -> str:
    """A step's batch: its size, or the range a growing batch spans."""
    most = replica.batch_at(1 << 62)  # past any budget: the largest it grows to
    return str(most) if most == replica.batch_size else f"{replica.batch_size}-{most}"


def _evaluate_in_parts(
    replica: Replica, examples: Examples, batch_size: int, desc: str, show: bool
) -> dict[str, float]:
    """``replica.evaluate`` in parts of a few batches, with progress between them. The parts
    are whole batches, so each batch is the one a single call makes; the means are put back
    together by their weights (examples, or tokens for a completion's loss)."""
    n = len(examples)
    step = batch_size * EVAL_PART_BATCHES
    if n <= step:
        return replica.evaluate(examples, batch_size=batch_size)
    progress = Progress(n, desc=desc, enabled=show)
    parts: list[dict[str, float]] = []
    for i in range(0, n, step):
        part = examples.subset(range(i, min(i + step, n)))
        parts.append(replica.evaluate(part, batch_size=batch_size))
        progress.update(i + len(part))
    progress.close()
    count = sum(p["examples"] for p in parts)
    out: dict[str, float] = {"examples": count}
    if "tokens" in parts[0]:  # a completion's loss is a mean over tokens
        tokens = sum(p["tokens"] for p in parts)
        out["loss"] = sum(p["loss"] * p["tokens"] for p in parts) / max(tokens, 1)
        out["tokens"] = tokens
    else:
        out["loss"] = sum(p["loss"] * p["examples"] for p in parts) / max(count, 1)
    for key in ("accuracy", "exact_match", "f1"):
        if key in parts[0]:
            out[key] = sum(p[key] * p["examples"] for p in parts) / max(count, 1)
    return out


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def replay(s: ReplaySettings) -> int:
    """Rebuild the fine-tuned model from the base and the log alone."""
    run_dir = DataDir(Path(s.run_dir))
    manifest, log, beyond_gaps = run_dir.load()
    # Only contiguous per-node prefixes: a store of an older node may also hold records that
    # arrived beyond a gap; applying them would give weights that match no version vector.
    records = list(log.ordered())
    vv = log.held()
    device = resolve_device(s.device)
    t_load = time.monotonic()
    engine = Engine.open(manifest, model_ref=s.model or None, device=device, kernel=s.kernel)
    load_s = time.monotonic() - t_load
    if s.order == "shuffled":
        random.Random(s.shuffle_seed).shuffle(records)
    elif s.order != "log":
        raise ConfigError(f"--order {s.order!r}: use log or shuffled")
    t0 = time.monotonic()
    engine.apply(records, batch=s.batch)  # any order: the exact grid makes it the same bits
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    apply_s = time.monotonic() - t0
    fingerprint = engine.fingerprint()
    snap = run_dir.latest_snapshot(manifest.run_id())
    matches = None
    if snap is not None and snap.version_vector == vv:
        matches = snap.fingerprint == fingerprint
    if s.out:
        engine.save_pretrained(Path(s.out))
    summary = {
        "command": "replay",
        "run_id": manifest.run_id().hex(),
        "records": len(records),
        "beyond_gaps": beyond_gaps,  # stored but not applied: a gap precedes them
        "version_vector": dict(sorted(vv.items())),
        "vv_digest": digest(vv),
        "fingerprint": fingerprint,
        "order": s.order,
        "matches_snapshot": matches,
        "load_s": load_s,
        "apply_s": apply_s,
        "records_per_s": len(records) / apply_s if apply_s > 0 else None,
        "out": s.out or None,
        "kernel": engine.backend.name,
    }
    if s.json:
        emit_json(summary)
    else:
        say(
            f"replayed {len(records)} records ({s.order} order) in {apply_s:.2f}s with the "
            f"{engine.backend.name} kernel"
        )
        if beyond_gaps:
            say(
                f"left out {beyond_gaps} stored frames that lie beyond a gap in their "
                "node's sequence (the node had not received what comes before them)"
            )
        if matches is not None:
            say(
                "the fingerprint matches the run's snapshot"
                if matches
                else "WARNING: the fingerprint differs from the run's snapshot"
            )
        if s.out:
            say(f"saved the fine-tuned model to {s.out}")
        print(f"fingerprint {fingerprint}")
    return 0 if matches is not False else 1


def evaluate(s: EvalSettings) -> int:
    """Loss (and accuracy) of a run's current model on held-out data: ``--data``, or the data
    the run itself evaluated on (``--eval``, kept in node.json), or else its training data."""
    run_dir = DataDir(Path(s.run_dir))
    manifest, log, _ = run_dir.load()
    data, limit = _eval_data(s, run_dir)
    device = resolve_device(s.device)
    engine = Engine.open(manifest, model_ref=s.model or None, device=device, kernel=s.kernel)
    examples = prepare(read(data), manifest.task, engine.task_model.tokenizer)
    if limit:
        examples = examples.subset(range(min(limit, len(examples))))
    replica = Replica(engine, "eval")
    # the engine holds the (snapped) base weights until the snapshot and the log are applied
    base = None
    if s.compare_base:
        base = _evaluate_in_parts(replica, examples, s.batch_size, "eval (base)", not s.json)
    snapshots.restore(replica, run_dir.snapshots, log.held())
    replica.catch_up(log)
    result = _evaluate_in_parts(replica, examples, s.batch_size, "eval", not s.json)
    summary: dict[str, Any] = {
        "command": "eval",
        "run_id": manifest.run_id().hex(),
        "data": data,
        "records": log.held_count(),
        "fingerprint": replica.fingerprint()[1],
        **result,
    }
    if base is not None:
        summary["base"] = base
    if s.json:
        emit_json(summary)
    else:

        def line(r: dict[str, float]) -> str:
            extra = "".join(
                f"  {name.replace('_', ' ')} {r[name]:.4f}"
                for name in ("accuracy", "exact_match", "f1")
                if name in r
            )
            return f"loss {r['loss']:.4f}{extra}"

        print(
            f"{line(result)}  on {int(result['examples'])} examples after {log.held_count()} records"
        )
        if base is not None:
            print(f"{line(base)}  base model, same examples")
    return 0
