"""Single-node commands with no network: ``train``, ``replay`` and ``eval``.

``train`` writes exactly what a swarm node writes (manifest, SQLite log, snapshots), so its
run directory can be replayed, inspected, or used as a node's data directory.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch

from seedswarm.model.data import read, sample_batch, shard_indices
from seedswarm.model.engine import Engine
from seedswarm.model.tasks import Examples, prepare
from seedswarm.protocol.log import OrderedLog
from seedswarm.protocol.manifest import Manifest
from seedswarm.protocol.records import Frame, q_to_byte
from seedswarm.protocol.vv import digest

from . import snapshots
from .console import Progress, emit_json, say
from .errors import ConfigError, StoreError
from .replica import catch_up, restore_snapshot
from .runspec import open_engine, plan_run
from .store import LogStore, read_manifest_file

MANIFEST = "manifest.json"
LOG = "log.sqlite"
SNAPSHOTS = "snapshots"


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available here (use cpu or auto)")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    return name


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, k = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: write it as i/k, e.g. 0/3") from None
    if not (k >= 1 and 0 <= i < k):
        raise ConfigError(f"--shard {text}: need 0 <= i < k")
    return i, k


def write_manifest(run_dir: Path, manifest: Manifest) -> None:
    path = run_dir / MANIFEST
    if path.exists():
        existing = read_manifest_file(path)
        if existing.run_id() != manifest.run_id():
            fields = ", ".join(existing.differences(manifest))
            raise ConfigError(
                f"{run_dir} belongs to another run (differs in: {fields}); use another --out"
            )
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    tmp.replace(path)


def train(values: dict[str, Any]) -> int:
    out = Path(values["out"])
    parse_shard(values["shard"])  # settings first: a typo should cost one line, not a model load
    device = resolve_device(values["device"])
    plan = plan_run(values)
    engine = open_engine(plan, values, device=device, kernel=values["kernel"])
    engine.task_model.amp_dtype = torch.bfloat16 if values["amp"] and device != "cpu" else None
    manifest = engine.manifest
    write_manifest(out, manifest)
    store = LogStore(out / LOG)
    try:
        store.bind(manifest)
        return _train(values, engine, store, plan.raw, out)
    finally:
        store.close()


def _train(values: dict[str, Any], engine: Engine, store: LogStore, raw: Any, out: Path) -> int:
    manifest = engine.manifest
    node = values["node"]
    quiet = values["json"]
    log = OrderedLog()
    store.load_log(log)
    applied = restore_snapshot(engine, out / SNAPSHOTS, log.held())
    catch_up(engine, log, applied)
    tm = engine.task_model
    examples = prepare(raw, manifest.task, tm.tokenizer)
    examples = examples.subset(shard_indices(len(examples), parse_shard(values["shard"])))
    eval_ex: Examples | None = None
    if values["eval"]:
        eval_ex = prepare(read(values["eval"]), manifest.task, tm.tokenizer)
        if values["eval_limit"]:
            eval_ex = eval_ex.subset(range(min(values["eval_limit"], len(eval_ex))))
    evals: list[dict[str, Any]] = []

    def evaluate(step: int) -> None:
        if eval_ex is None:
            return
        result = {"step": step, **engine.evaluate(eval_ex, batch_size=values["batch_size"] * 4)}
        evals.append(result)
        acc = f" accuracy {result['accuracy']:.4f}" if "accuracy" in result else ""
        say(f"eval at step {step}: loss {result['loss']:.4f}{acc}", quiet=quiet)

    start = log.next_seq(node)
    steps = values["steps"]
    if start >= steps:
        say(f"{node} already took {start} steps (>= --steps {steps}); nothing to do", quiet=quiet)
    evaluate(start)
    progress = Progress(steps, desc="train", enabled=not quiet)
    progress.update(start)
    pending: list[int] = []
    losses: list[float] = []
    t0 = time.monotonic()
    frame_records = values["frame_records"]

    def flush() -> None:
        if not pending:
            return
        qs = bytes(q_to_byte(q) for q in pending)
        frame = Frame(engine.run_id, node, log.next_seq(node), log.max_clock + 1, qs)
        log.offer(frame)
        store.append([frame])
        applied[node] = frame.end_seq
        pending.clear()

    for seq in range(start, steps):
        seed = engine.seed_of(node, seq)
        batch = tm.make_batch(
            examples.subset(sample_batch(seed, len(examples), values["batch_size"]))
        )
        result = engine.step([seed], batch)
        pending.extend(result.qs)
        losses.append(result.loss)
        if len(pending) >= frame_records:
            flush()
        done = seq + 1
        progress.update(done, loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}", q=result.qs[0])
        if values["eval_every"] and done % values["eval_every"] == 0 and done < steps:
            evaluate(done)
    flush()
    progress.close()
    elapsed = time.monotonic() - t0
    if steps > start:
        evaluate(steps)
    fingerprint = engine.fingerprint()
    vv = log.held()
    snapshots.save(
        out / SNAPSHOTS,
        engine.trainable_state(),
        run_id=engine.run_id.hex(),
        version_vector=vv,
        fingerprint=fingerprint,
    )
    headroom, worst = engine.headroom()
    taken = steps - start if steps > start else 0
    summary = {
        "command": "train",
        "out": str(out),
        "run_id": engine.run_id.hex(),
        "node": node,
        "steps": taken,
        "records": log.held_count(),
        "version_vector": vv,
        "vv_digest": digest(vv),
        "fingerprint": fingerprint,
        "loss_first": _mean(losses[:20]),
        "loss_last": _mean(losses[-20:]),
        "steps_per_s": taken / elapsed if taken and elapsed > 0 else None,
        "headroom_bits": headroom,
        "eval": evals,
        "kernel": engine.backend.name,
        "device": str(engine.device),
    }
    if headroom < 1.0:
        say(
            f"warning: tensor {worst} is within {headroom:.2f} bits of leaving its exact grid range"
        )
    if values["json"]:
        emit_json(summary)
    else:
        if losses:
            say(
                f"loss {summary['loss_first']:.4f} -> {summary['loss_last']:.4f} over {taken} steps "
                f"({summary['steps_per_s']:.1f} steps/s, {engine.backend.name} kernel on {engine.device})"
            )
        print(f"run {engine.run_id.hex()}  records {log.held_count()}  out {out}")
        print(f"fingerprint {fingerprint}")
    return 0


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def load_run_dir(run_dir: Path) -> tuple[Manifest, OrderedLog]:
    """The run's manifest and its whole log, read once; the store is closed again."""
    manifest, store = open_run_dir(run_dir)
    log = OrderedLog()
    try:
        store.load_log(log)
    finally:
        store.close()
    return manifest, log


def open_run_dir(run_dir: Path) -> tuple[Manifest, LogStore]:
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a run directory (it does not exist)")
    log_path = run_dir / LOG
    if not log_path.is_file():
        raise ConfigError(f"{run_dir} has no {LOG}: not a run directory")
    store = LogStore(log_path)
    manifest = store.manifest()
    if manifest is None:
        store.close()
        raise StoreError(f"{log_path} holds no manifest")
    if (run_dir / MANIFEST).exists() and read_manifest_file(
        run_dir / MANIFEST
    ).run_id() != manifest.run_id():
        store.close()
        raise StoreError(f"{run_dir / MANIFEST} does not match the run in {LOG}")
    return manifest, store


def replay(values: dict[str, Any]) -> int:
    """Rebuild the fine-tuned model from the base and the log alone."""
    run_dir = Path(values["run_dir"])
    manifest, log = load_run_dir(run_dir)
    # Only contiguous per-node prefixes: a swarm node's store also holds records that arrived
    # beyond a gap; applying them would give weights that match no version vector.
    records = list(log.ordered())
    vv = log.held()
    device = resolve_device(values["device"])
    t_load = time.monotonic()
    engine = Engine.open(
        manifest, model_ref=values["model"] or None, device=device, kernel=values["kernel"]
    )
    load_s = time.monotonic() - t_load
    order = values["order"]
    if order == "shuffled":
        random.Random(values["shuffle_seed"]).shuffle(records)
    elif order != "log":
        raise ConfigError(f"--order {order!r}: use log or shuffled")
    t0 = time.monotonic()
    engine.apply(records, batch=values["batch"])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    apply_s = time.monotonic() - t0
    fingerprint = engine.fingerprint()
    snap = snapshots.latest(run_dir / SNAPSHOTS, manifest.run_id().hex())
    matches = None
    if snap is not None and snap.version_vector == vv:
        matches = snap.fingerprint == fingerprint
    out = values["out"]
    if out:
        engine.save_pretrained(Path(out))
    beyond_gaps = log.pending_count()
    summary = {
        "command": "replay",
        "run_id": manifest.run_id().hex(),
        "records": len(records),
        "beyond_gaps": beyond_gaps,  # stored but not applied: a gap precedes them
        "version_vector": dict(sorted(vv.items())),
        "vv_digest": digest(vv),
        "fingerprint": fingerprint,
        "order": order,
        "matches_snapshot": matches,
        "load_s": load_s,
        "apply_s": apply_s,
        "records_per_s": len(records) / apply_s if apply_s > 0 else None,
        "out": out or None,
        "kernel": engine.backend.name,
    }
    if values["json"]:
        emit_json(summary)
    else:
        say(
            f"replayed {len(records)} records ({order} order) in {apply_s:.2f}s with the "
            f"{engine.backend.name} kernel"
        )
        if beyond_gaps:
            say(
                f"left out {beyond_gaps} stored records that lie beyond a gap in their "
                "node's sequence (the node had not received what comes before them)"
            )
        if matches is not None:
            say(
                "the fingerprint matches the run's snapshot"
                if matches
                else "WARNING: the fingerprint differs from the run's snapshot"
            )
        if out:
            say(f"saved the fine-tuned model to {out}")
        print(f"fingerprint {fingerprint}")
    return 0 if matches is not False else 1


def evaluate(values: dict[str, Any]) -> int:
    """Loss (and accuracy) of a run's current model on a held-out file."""
    run_dir = Path(values["run_dir"])
    manifest, log = load_run_dir(run_dir)
    device = resolve_device(values["device"])
    engine = Engine.open(
        manifest, model_ref=values["model"] or None, device=device, kernel=values["kernel"]
    )
    examples = prepare(read(values["data"]), manifest.task, engine.task_model.tokenizer)
    if values["limit"]:
        examples = examples.subset(range(min(values["limit"], len(examples))))
    # the engine holds the (snapped) base weights until the snapshot and the log are applied
    base = (
        engine.evaluate(examples, batch_size=values["batch_size"])
        if values["compare_base"]
        else None
    )
    applied = restore_snapshot(engine, run_dir / SNAPSHOTS, log.held())
    catch_up(engine, log, applied)
    result = engine.evaluate(examples, batch_size=values["batch_size"])
    summary: dict[str, Any] = {
        "command": "eval",
        "run_id": manifest.run_id().hex(),
        "records": log.held_count(),
        "fingerprint": engine.fingerprint(),
        **result,
    }
    if base is not None:
        summary["base"] = base
    if values["json"]:
        emit_json(summary)
    else:

        def line(r: dict[str, float]) -> str:
            acc = f"  accuracy {r['accuracy']:.4f}" if "accuracy" in r else ""
            return f"loss {r['loss']:.4f}{acc}"

        print(
            f"{line(result)}  on {int(result['examples'])} examples after {log.held_count()} records"
        )
        if base is not None:
            print(f"{line(base)}  base model, same examples")
    return 0
