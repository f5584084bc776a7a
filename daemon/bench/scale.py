"""``seedswarm bench scale``: the swarm's records-efficiency as a curve, in virtual time.

N nodes train one run as ``seedswarm swarm`` would run them — the run a node builds from
``--model`` and ``--data`` (node/startup.py: its task, estimator, trainable set, lr and unit),
each node on its shard of the data, stepping every ``--scale-step-s`` seconds — but in one
process, on one real engine, in virtual time. The exact grid makes that cheap and exact:

    the global state G holds every record produced so far (all nodes'); a node's view when it
    steps at time t is G minus the records it has not seen yet; the step un-applies them (the
    state is integers: -q undoes q bit for bit), steps on that view (the real Engine.step, its
    records fused in), and re-applies them, so G again holds everything.

A record is seen by its author at once and by every other node once its frame is published
and delivered: a node's records wait in a frame that is sealed ``--scale-latency`` seconds
after its first record (the node's ``--max-latency``; ``seedswarm swarm`` uses 1 s) — or, as
the node's flusher does, as soon as a step ends whose next step (one interval later, the last
interval's length) would come after that deadline — then take ``--scale-delay`` seconds to
arrive. G is evaluated every ``--scale-eval-every`` records;
the records at which it first reaches the target loss (and accuracy) are interpolated
between two evaluations. Several seeds a point (a seed moves the nodes' phases and the
directions), because single runs mislead.

    efficiency(N) = median records to target with 1 node / median with N nodes

and the predicted wall-clock speed-up on N hosts, with the cost of applying a peer's record
measured on this machine rather than assumed: each own step of T seconds also applies the
(N - 1) K records of the other nodes' steps,

    speed-up(N) = N * efficiency(N) * T / (T + (N - 1) * K * t_apply)
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from seedswarm.daemon.errors import ConfigError
from seedswarm.daemon.node.flusher import next_step_too_late

from .curves import CurvePoint, crossing, fmt_records, median_or_none
from .scale_real import RealRun, run_real
from .scale_report import plot_scale
from .scale_result import ScalePoint, ScaleResult, ScaleRun
from .settings import BenchSettings, sizes


def _simulate(
    s: BenchSettings, setup: Any, nodes: int, seed: int, budget: int, target_accuracy: float
) -> ScaleRun:  # fmt: skip
    """One run of ``nodes`` nodes (see the module docstring)."""
    from seedswarm.model.data import sample_batch, shard_indices
    from seedswarm.model.engine import Engine
    from seedswarm.protocol.records import Record

    engine = Engine.open(setup.manifest, model_ref=setup.model_ref, kernel=s.kernel)
    tm = engine.task_model
    k = engine.records_per_step
    train = setup.train
    shards = [
        train.subset(shard_indices(len(train), (i, nodes))) for i in range(nodes)
    ]  # fmt: skip
    rng = random.Random(seed)
    step_s, latency, delay = s.scale_step_s, s.scale_latency, s.scale_delay
    # each node's first step at a random phase; its steps then every step_s (+-5% jitter)
    events = [(rng.uniform(0, step_s), i) for i in range(nodes)]
    heapq.heapify(events)
    names = [f"s{seed}n{i}" for i in range(nodes)]
    next_seq = [0] * nodes
    frame_seal = [-math.inf] * nodes  # when the node's open frame is sealed
    last_step: list[float | None] = [None] * nodes  # when the node last stepped
    open_frame: list[list[list[Any]]] = [[] for _ in range(nodes)]  # its entries of pending
    pending: deque[list[Any]] = deque()  # [visible at, author, record]: not yet seen by all
    total, steps, unseen = 0, 0, 0
    curve = [_evaluate(engine, setup, 0)]
    next_eval = s.scale_eval_every
    t0 = time.monotonic()
    reached = False
    while total < budget and not reached:
        t, i = heapq.heappop(events)
        while pending and pending[0][0] <= t:  # seen by every node by now: part of every view
            pending.popleft()
        hidden = [r for vt, author, r in pending if author != i and vt > t]
        unseen += len(hidden)
        seeds = [engine.seed_of(names[i], next_seq[i] + j) for j in range(k)]
        shard = shards[i]
        batch = tm.make_batch(shard.subset(sample_batch(seeds[0], len(shard), s.scale_batch)))
        undo = [Record(r.node, r.seq, -r.q, r.clock) for r in hidden]
        result = engine.step(seeds, batch, undo)  # on the node's view: G less what it lacks
        engine.apply(hidden)  # G again
        if t >= frame_seal[i]:
            frame_seal[i] = t + latency  # a new frame opens with this step's records
            open_frame[i] = []
        for j, q in enumerate(result.qs):
            entry = [frame_seal[i] + delay, i, Record(names[i], next_seq[i] + j, q, steps)]
            pending.append(entry)
            open_frame[i].append(entry)
        prev, last_step[i] = last_step[i], t
        if next_step_too_late(t, None if prev is None else t - prev, frame_seal[i]):
            frame_seal[i] = t  # the node's flusher seals it now (daemon/node/flusher.py)
            for entry in open_frame[i]:
                entry[0] = t + delay
        next_seq[i] += k
        total += k
        steps += 1
        heapq.heappush(events, (t + step_s * rng.uniform(0.95, 1.05), i))
        if total >= next_eval:
            next_eval += s.scale_eval_every
            curve.append(_evaluate(engine, setup, total))
            reached = _done(curve, s.scale_target_loss, target_accuracy)
            last = curve[-1]
            acc = "" if last.accuracy is None else f", accuracy {last.accuracy:.3f}"
            # a run of a real model takes minutes: where it is, and how far the target is
            print(
                f"    {nodes} node(s), seed {seed}: {total} records, held-out loss "
                f"{last.loss:.4f}{acc} (target {s.scale_target_loss:g}), "
                f"{time.monotonic() - t0:.0f} s",
                file=sys.stderr, flush=True,
            )  # fmt: skip
    return ScaleRun(
        nodes=nodes,
        seed=seed,
        records_to_loss=crossing(curve, s.scale_target_loss, below=True),
        records_to_accuracy=(
            None if target_accuracy <= 0 else crossing(curve, target_accuracy, below=False)
        ),
        unseen_per_step=unseen / max(steps, 1),
        steps=steps,
        forwards=steps * engine.forwards_per_step,
        seconds=time.monotonic() - t0,
        curve=tuple(curve),
    )


def _done(curve: list[CurvePoint], target_loss: float, target_accuracy: float) -> bool:
    last = curve[-1]
    acc_ok = target_accuracy <= 0 or (
        last.accuracy is not None and last.accuracy >= target_accuracy
    )
    return last.loss <= target_loss and acc_ok


def _evaluate(engine: Any, setup: Any, records: int) -> CurvePoint:
    from seedswarm.model.evaluation import evaluate

    out = evaluate(engine.task_model, setup.held, batch_size=64)
    return CurvePoint(records, float(out["loss"]), out.get("accuracy"))


@dataclass(frozen=True, slots=True)
class _Setup:
    manifest: Any
    model_ref: str
    train: Any
    held: Any


def _setup(s: BenchSettings) -> _Setup:
    """The run a node builds from --model and --data, as ``seedswarm node`` would."""
    from seedswarm.daemon.node.startup import open_engine, plan_run
    from seedswarm.daemon.settings import RunSettings
    from seedswarm.model.data import read
    from seedswarm.model.tasks import prepare

    run = RunSettings(model=s.model, data=s.data)
    plan = plan_run(run)
    engine = open_engine(plan, run, device="cpu", kernel=s.kernel)
    tok = engine.task_model.tokenizer
    train = prepare(plan.raw, engine.manifest.task, tok)
    if s.eval:
        held = prepare(read(s.eval), engine.manifest.task, tok)
    else:  # the last tenth of the data, which the shards below never draw from
        cut = len(train) - max(1, len(train) // 10)
        held, train = train.subset(range(cut, len(train))), train.subset(range(cut))
    if s.scale_eval_limit:
        held = held.subset(range(min(s.scale_eval_limit, len(held))))
    return _Setup(engine.manifest, plan.model_ref, train, held)


def _costs(s: BenchSettings, setup: _Setup) -> tuple[float, float]:
    """(seconds to apply one peer record, seconds of one own step), measured here."""
    from seedswarm.model.data import sample_batch
    from seedswarm.model.engine import Engine
    from seedswarm.model.replica import Replica

    engine = Engine.open(setup.manifest, model_ref=setup.model_ref, kernel=s.kernel)
    rate = statistics.median(Replica(engine, "probe").apply_rate(64) for _ in range(5))
    k = engine.records_per_step
    times = []
    for n in range(4):  # the first is a warm-up
        seeds = [engine.seed_of("cost", n * k + j) for j in range(k)]
        batch = engine.task_model.make_batch(
            setup.train.subset(sample_batch(seeds[0], len(setup.train), s.scale_batch))
        )
        t0 = time.perf_counter()
        engine.step(seeds, batch)
        times.append(time.perf_counter() - t0)
    return 1.0 / rate, statistics.median(times[1:])


def bench_scale(s: BenchSettings) -> ScaleResult:
    counts = sizes(s.scale_nodes, "scale-nodes", "1,2,4,8,16,32")
    if counts[0] != 1:
        raise ConfigError("--scale-nodes: start with 1 (the efficiency is relative to it)")
    setup = _setup(s)
    t_apply, t_step = _costs(s, setup)
    m = setup.manifest
    target_accuracy = s.scale_target_accuracy if m.task.kind == "classify" else 0.0
    k = m.directions
    seeds = list(range(s.scale_seeds))
    budget = s.scale_budget
    points: list[ScalePoint] = []
    base_loss: float | None = None
    base_acc: float | None = None
    for n in counts:
        runs = []
        for seed in seeds:
            run = _simulate(s, setup, n, seed, budget, target_accuracy)
            runs.append(run)
            print(
                f"  scale: {n} node(s), seed {seed}: loss target at "
                f"{fmt_records(run.records_to_loss)} records, accuracy target at "
                f"{fmt_records(run.records_to_accuracy)}, {run.unseen_per_step:.1f} unseen records "
                f"a step, {run.seconds:.0f} s",
                file=sys.stderr,
                flush=True,
            )
        rl = median_or_none([r.records_to_loss for r in runs])
        ra = median_or_none([r.records_to_accuracy for r in runs])
        if n == 1:
            base_loss, base_acc = rl, ra
        eff_l = None if rl is None or base_loss is None else base_loss / rl
        eff_a = None if ra is None or base_acc is None else base_acc / ra
        speedup = (
            None
            if eff_l is None
            else n * eff_l * s.scale_step_s / (s.scale_step_s + (n - 1) * k * t_apply)
        )
        points.append(ScalePoint(n, tuple(runs), rl, ra, eff_l, eff_a, speedup))
    real: list[RealRun] = []
    for n in sizes(s.scale_real, "scale-real", "2,4") if s.scale_real else []:
        for seed in seeds:
            r = run_real(s, setup, n, seed, target_accuracy)
            real.append(r)
            print(
                f"  scale: seedswarm swarm, {n} node(s), seed {seed}: loss target at "
                f"{fmt_records(r.records_to_loss)} records of {r.records}, accuracy target at "
                f"{fmt_records(r.records_to_accuracy)}, {r.seconds:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    plot = plot_scale(points, real, s) if s.scale_plot else ""
    return ScaleResult(
        model=s.model, data=s.data, estimator=m.estimator, records_per_step=k,
        step_s=s.scale_step_s, latency_s=s.scale_latency, delay_s=s.scale_delay,
        target_loss=s.scale_target_loss,
        target_accuracy=target_accuracy if target_accuracy > 0 else None,
        apply_s_per_record=t_apply, step_s_measured=t_step, points=tuple(points),
        real=tuple(real), plot=plot,
    )  # fmt: skip
