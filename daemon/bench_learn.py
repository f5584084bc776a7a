"""``seedswarm bench learn``: what each way of training needs to reach a target, side by side.

One run trains several *arms* on the same data, one after another on the same machine, and
records for each the accuracy (classification) or loss (causal LM) on held-out data against
the records, forward passes and training wall-clock spent so far:

  spsa            two-sided SPSA / MeZO: 2 forward passes per record
  fzoo<K>         the K-direction one-sided estimator (FZOO): K + 1 forward passes per K records
  ...-lowrank     rank-1 directions a*b^T for matrices (the manifest's direction "lowrank")
  ...-2t          the same arm with two torch threads instead of one
  ...-2n          two real ``seedswarm node`` processes (one torch thread each, each pinned to
                  its own core where the machine has two), through a real broker, started by
                  ``seedswarm swarm``; their held-out curve is rebuilt afterwards from their logs
  adamw           the first-order reference: AdamW with backprop, the same scorer and batches

Clocks: an in-process arm's clock runs only while it trains (batching, forward passes, weight
passes); evaluation stops it. The time to load the model is reported apart (``startup_s``).
A swarm arm's clock is the launcher's wall clock from the start of ``seedswarm swarm`` (its
start-up included, and reported), with each node's progress read from ``/status``.

The time to the target is the first evaluation at or past it, so its resolution is
``--eval-every-s``. A missed target is reported as missed, with where the arm ended.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .console import say, table
from .errors import ConfigError

# Settings measured on MiniLM / SST-2 (docs/PROTOCOL.md, "Measurements"): ZO
# arms train the biases and LayerNorms only (31k of 22.7M weights), which learned fastest per
# forward pass and per second; lr of fzoo is a step per weight and per record. The tiny
# model's settings are for smoke tests.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"spsa_lr": 3e-3, "spsa_unit_exp": -12, "fzoo_lr": 3e-3, "fzoo_unit_exp": -12,
             "trainable": ""},
    "default": {"spsa_lr": 1e-3, "spsa_unit_exp": -15, "fzoo_lr": 1e-2, "fzoo_unit_exp": -15,
                "trainable": "bias|LayerNorm"},
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Arm:
    """One way of training. ``kind``: ``zo`` (in process), ``adamw``, or ``swarm``."""

    name: str
    kind: str = "zo"
    estimator: str = "spsa"
    directions: int = 1
    direction: str = "dense"
    threads: int = 1
    nodes: int = 1
    lr: float = 0.0
    unit_exp: int = 0
    epsilon: float = 1e-3
    trainable: str = ""
    batch_size: int = 16
    amp: bool = False


@dataclass(slots=True)
class Point:
    seconds: float
    steps: int
    records: int
    forwards: int
    loss: float
    accuracy: float | None = None


@dataclass(slots=True)
class ArmResult:
    arm: Arm
    startup_s: float = 0.0
    curve: list[Point] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Setup:
    """What every arm shares: the model reference, task, and prepared data."""

    model_ref: str
    task: Any
    train: Any
    held: Any
    init_seed: int = 0
    data_ref: str = ""
    kernel: str = "auto"

    @property
    def classify(self) -> bool:
        return bool(self.task.kind == "classify")


# -- arms ----------------------------------------------------------------------------------


def parse_arms(text: str, values: dict[str, Any]) -> list[Arm]:
    """``spsa``, ``fzoo8``, ``fzoo8-lowrank``, ``spsa-2t``, ``fzoo8-2n``, ``adamw``..."""
    preset = _preset(values)
    arms = []
    for name in filter(None, (s.strip() for s in text.split(","))):
        base, *mods = name.split("-")
        common: dict[str, Any] = {
            "name": name, "epsilon": values["epsilon"], "batch_size": values["learn_batch"],
            "amp": values["amp"], "trainable": preset["trainable"],
        }  # fmt: skip
        if base == "adamw":
            if mods:
                raise ConfigError(f"--arms: {name!r}: adamw takes no modifiers")
            arms.append(Arm(kind="adamw", lr=values["fo_lr"], threads=1, **common))
            continue
        m = re.fullmatch(r"spsa|fzoo(\d+)", base)
        if m is None:
            raise ConfigError(f"--arms: {name!r}: an arm starts with spsa, fzooK or adamw")
        est = "spsa" if base == "spsa" else "fzoo"
        arm = Arm(
            estimator=est,
            directions=1 if est == "spsa" else int(m.group(1)),
            lr=preset[f"{est}_lr"],
            unit_exp=preset[f"{est}_unit_exp"],
            **common,
        )
        for mod in mods:
            if mod == "lowrank":
                arm = dataclasses.replace(arm, direction="lowrank")
            elif mod == "2t":
                arm = dataclasses.replace(arm, threads=2)
            elif mod == "2n":
                arm = dataclasses.replace(arm, kind="swarm", nodes=2)
            else:
                raise ConfigError(f"--arms: {name!r}: unknown modifier {mod!r}")
        if est == "fzoo" and not 2 <= arm.directions <= 64:
            raise ConfigError(f"--arms: {name!r}: fzoo takes 2 to 64 directions")
        arms.append(arm)
    if not arms:
        raise ConfigError("--arms: name at least one arm, e.g. spsa,fzoo8,adamw")
    return arms


def _preset(values: dict[str, Any]) -> dict[str, Any]:
    preset = dict(PRESETS["tiny" if values["model"] == "tiny" else "default"])
    for key in ("spsa_lr", "spsa_unit_exp", "fzoo_lr", "fzoo_unit_exp"):
        if values.get(key):
            preset[key] = values[key]
    if values.get("trainable", "default") != "default":
        preset["trainable"] = values["trainable"]
    return preset


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """torch's intra-op threads and the C kernel's threads, for one arm."""
    before = torch.get_num_threads()
    env_before = os.environ.get("SEEDSWARM_KERNEL_THREADS")
    torch.set_num_threads(n)
    os.environ["SEEDSWARM_KERNEL_THREADS"] = str(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if env_before is None:
            os.environ.pop("SEEDSWARM_KERNEL_THREADS", None)
        else:
            os.environ["SEEDSWARM_KERNEL_THREADS"] = env_before


class _Budget:
    """When an arm stops and when it evaluates, on its own training clock."""

    def __init__(self, values: dict[str, Any], target: float, classify: bool) -> None:
        self.seconds = float(values["budget_s"])
        self.forwards = int(values["budget_forwards"])
        self.every = float(values["eval_every_s"])
        self.stop_at_target = bool(values["stop_at_target"])
        self.target = target
        self.classify = classify
        self.next_eval = self.every

    def reached(self, p: Point) -> bool:
        if self.classify:
            return p.accuracy is not None and p.accuracy >= self.target
        return p.loss <= self.target

    def over(self, seconds: float, forwards: int) -> bool:
        return seconds >= self.seconds or (self.forwards > 0 and forwards >= self.forwards)

    def due(self, seconds: float) -> bool:
        if seconds >= self.next_eval:
            while self.next_eval <= seconds:
                self.next_eval += self.every
            return True
        return False


def _point(ev: dict[str, float], seconds: float, steps: int, records: int, fw: int) -> Point:
    return Point(seconds, steps, records, fw, ev["loss"], ev.get("accuracy"))


def run_zo_arm(arm: Arm, setup: Setup, values: dict[str, Any], target: float) -> ArmResult:
    """One node in this process: ZO steps on the arm's settings, its own records only."""
    from seedswarm.model.data import sample_batch
    from seedswarm.model.engine import Engine, Hyper, evaluate

    result = ArmResult(arm)
    budget = _Budget(values, target, setup.classify)
    with _threads(arm.threads):
        t_load = time.monotonic()
        hyper = Hyper(
            epsilon=arm.epsilon, lr=arm.lr, unit_exp=arm.unit_exp, trainable=arm.trainable,
            init_seed=setup.init_seed, estimator=arm.estimator, directions=arm.directions,
            direction=arm.direction,
        )  # fmt: skip
        engine = Engine.build("learn", setup.model_ref, setup.task, hyper, kernel=setup.kernel)
        tm = engine.task_model
        tm.amp_dtype = torch.bfloat16 if arm.amp else None
        result.startup_s = time.monotonic() - t_load
        result.notes.update(
            trainable_params=engine.numel, kernel=engine.backend.name, run_id=engine.run_id.hex()
        )
        k, per_step = engine.records_per_step, engine.forwards_per_step
        held_bs = max(arm.batch_size * 4, 64)

        def ev(seconds: float, steps: int) -> Point:
            return _point(
                evaluate(tm, setup.held, batch_size=held_bs), seconds, steps, steps * k,
                steps * per_step,
            )  # fmt: skip

        result.curve.append(ev(0.0, 0))
        clock, steps, qs = 0.0, 0, 0
        while not budget.over(clock, steps * per_step):
            t0 = time.perf_counter()
            seeds = [engine.seed_of("n0", steps * k + i) for i in range(k)]
            idx = sample_batch(seeds[0], len(setup.train), arm.batch_size)
            res = engine.step(seeds, tm.make_batch(setup.train.subset(idx)))
            clock += time.perf_counter() - t0
            steps += 1
            qs += sum(abs(q) for q in res.qs)
            if budget.due(clock) or budget.over(clock, steps * per_step):
                p = ev(clock, steps)
                result.curve.append(p)
                if budget.stop_at_target and budget.reached(p):
                    break
        result.notes["mean_abs_q"] = qs / max(steps * k, 1)
        result.notes["fingerprint"] = engine.fingerprint()
    return result


def run_adamw_arm(arm: Arm, setup: Setup, values: dict[str, Any], target: float) -> ArmResult:
    """First-order reference: backprop and AdamW over every weight, same scorer and batches."""
    from seedswarm.model.data import sample_batch
    from seedswarm.model.engine import evaluate
    from seedswarm.model.loading import load
    from seedswarm.model.tasks import TaskModel
    from seedswarm.protocol.seeds import derive_seed

    result = ArmResult(arm)
    budget = _Budget(values, target, setup.classify)
    with _threads(arm.threads):
        t_load = time.monotonic()
        kind = _backbone_kind(setup.task)
        tm = TaskModel(
            load(setup.model_ref, kind=kind, init_seed=setup.init_seed), setup.task,
            init_seed=setup.init_seed,
        )  # fmt: skip
        params = [p for _, p in tm.named_weights()]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=arm.lr, weight_decay=0.0)
        result.startup_s = time.monotonic() - t_load
        result.notes["trainable_params"] = sum(p.numel() for p in params)
        # the undecorated forward (TaskModel.loss and .logits run under no_grad)
        logits_fn: Callable[..., torch.Tensor] = getattr(type(tm).logits, "__wrapped__")  # noqa: B009
        held_bs = max(arm.batch_size * 4, 64)
        run_id = b"\0" * 8

        def ev(seconds: float, steps: int) -> Point:
            tm.eval()
            return _point(evaluate(tm, setup.held, batch_size=held_bs), seconds, steps, 0, steps)

        result.curve.append(ev(0.0, 0))
        clock, steps = 0.0, 0
        while not budget.over(clock, steps):
            t0 = time.perf_counter()
            idx = sample_batch(derive_seed(run_id, "n0", steps), len(setup.train), arm.batch_size)
            batch = tm.make_batch(setup.train.subset(idx))
            with torch.enable_grad():
                if setup.classify:
                    logits = logits_fn(tm, batch)
                    loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
                else:
                    ids = batch["input_ids"]
                    loss = tm.backbone(input_ids=ids, labels=ids).loss
                torch.autograd.backward([loss])
            opt.step()
            opt.zero_grad(set_to_none=True)
            clock += time.perf_counter() - t0
            steps += 1
            if budget.due(clock) or budget.over(clock, steps):
                point = ev(clock, steps)
                result.curve.append(point)
                if budget.stop_at_target and budget.reached(point):
                    break
    return result


def _backbone_kind(task: Any) -> str:
    if task.kind == "causal_lm":
        return "lm"
    return {"lm": "lm", "mlm": "mlm", "embed": "embed", "head": "embed"}[task.scorer]


# -- summary -----------------------------------------------------------------------------------


def first_reaching(curve: Sequence[Point], target: float, classify: bool) -> Point | None:
    for p in curve:
        if classify and p.accuracy is not None and p.accuracy >= target:
            return p
        if not classify and p.loss <= target:
            return p
    return None


def summarise(results: Sequence[ArmResult], target: float, classify: bool) -> dict[str, Any]:
    """Per arm: where it reached the target and where it ended; ratios to spsa and adamw."""
    arms: list[dict[str, Any]] = []
    for r in results:
        hit = first_reaching(r.curve, target, classify)
        last = r.curve[-1]
        arms.append(
            {
                "arm": r.arm.name,
                "settings": dataclasses.asdict(r.arm),
                "startup_s": r.startup_s,
                "reached": dataclasses.asdict(hit) if hit else None,
                "final": dataclasses.asdict(last),
                "start": dataclasses.asdict(r.curve[0]),
                "seconds_per_forward": last.seconds / last.forwards if last.forwards else None,
                "curve": [dataclasses.asdict(p) for p in r.curve],
                **r.notes,
            }
        )
    by_name = {a["arm"]: a for a in arms}

    def ratio(a: dict[str, Any], ref: str, key: str) -> float | None:
        other = by_name.get(ref)
        if not (a["reached"] and other and other["reached"] and other["reached"][key]):
            return None
        return float(a["reached"][key]) / float(other["reached"][key])

    for a in arms:
        a["forwards_vs_spsa"] = ratio(a, "spsa", "forwards")
        a["seconds_vs_spsa"] = ratio(a, "spsa", "seconds")
        a["seconds_vs_adamw"] = ratio(a, "adamw", "seconds")
        base = a["arm"].removesuffix("-2n").removesuffix("-2t")
        a["seconds_vs_one_node"] = ratio(a, base, "seconds") if base != a["arm"] else None
        one = by_name.get(base)
        if a["settings"]["kind"] == "swarm" and a["reached"] and one and one["reached"]:
            # the swarm's clock includes its start-up; the in-process arm's does not
            after = a["reached"]["seconds"] - a["startup_s"]
            a["seconds_vs_one_node_after_startup"] = after / one["reached"]["seconds"]
    return {"target": target, "metric": "accuracy" if classify else "loss", "arms": arms}


def print_summary(result: dict[str, Any]) -> None:
    metric = result["metric"]
    print(f"target: {metric} {'>=' if metric == 'accuracy' else '<='} {result['target']}")

    def f(x: Any, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    rows = []
    for a in result["arms"]:
        hit, last = a["reached"], a["final"]
        value = last["accuracy"] if metric == "accuracy" else last["loss"]
        rows.append(
            [
                a["arm"],
                f(hit and hit["records"], "d") if hit else "missed",
                f(hit and hit["forwards"], "d") if hit else "-",
                f(hit and hit["seconds"], ".0f") if hit else "-",
                f(a["forwards_vs_spsa"], ".2f"),
                f(a["seconds_vs_adamw"], ".2f"),
                f(a["seconds_vs_one_node"], ".2f"),
                f(value, ".4f"),
                f"{last['records']}/{last['forwards']}/{last['seconds']:.0f}",
                f(a["seconds_per_forward"], ".3f"),
            ]
        )
    headers = [
        "arm", "records to target", "forwards", "seconds", "fw vs spsa", "s vs adamw",
        "s vs 1 node", f"final {metric}", "records/forwards/s at end", "s/forward",
    ]  # fmt: skip
    print(table(headers, rows))


# -- plot --------------------------------------------------------------------------------------

COLORS = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip


def write_plot(result: dict[str, Any], path: Path) -> str:
    """Accuracy (or loss) against training seconds, one line per arm; returns how it was drawn.

    With matplotlib installed (it is not a dependency of seedswarm), a labelled figure; without
    it, a PNG made by ``_plain_png`` from the standard library (zlib): the same lines, axes and
    target, no text, the colours listed in the printed output.
    """
    metric = result["metric"]
    series = [
        (a["arm"], [(p["seconds"], p[metric]) for p in a["curve"] if p.get(metric) is not None])
        for a in result["arms"]
    ]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _plain_png(series, result["target"], path)
        return "zlib (matplotlib is not installed: pip install matplotlib for a labelled plot)"
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for i, (name, pts) in enumerate(series):
        rgb = tuple(c / 255 for c in COLORS[i % len(COLORS)])
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker=".", label=name, color=rgb)
    ax.axhline(result["target"], color="black", linestyle="--", linewidth=0.8, label="target")
    ax.set_xlabel("training wall-clock (s)")
    ax.set_ylabel(f"held-out {metric}")
    ax.set_title(f"seedswarm bench learn: {result.get('model', '')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return "matplotlib"


def _plain_png(
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]], target: float, path: Path
) -> None:
    import struct
    import zlib

    import numpy as np

    w, h, pad = 800, 500, 40
    img = np.full((h, w, 3), 255, dtype=np.uint8)
    pts = [p for _, ps in series for p in ps]
    xs = [x for x, _ in pts] or [0.0, 1.0]
    ys = [y for _, y in pts] + [target]
    x0, x1 = 0.0, max(max(xs), 1e-9)
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5, y1 + 0.5

    def px(x: float, y: float) -> tuple[int, int]:
        return (
            int(pad + (x - x0) / (x1 - x0) * (w - 2 * pad)),
            int(h - pad - (y - y0) / (y1 - y0) * (h - 2 * pad)),
        )

    def line(a: tuple[int, int], b: tuple[int, int], color: tuple[int, int, int]) -> None:
        n = max(abs(b[0] - a[0]), abs(b[1] - a[1]), 1)
        for t in range(n + 1):
            x = round(a[0] + (b[0] - a[0]) * t / n)
            y = round(a[1] + (b[1] - a[1]) * t / n)
            img[max(0, y - 1) : y + 1, max(0, x - 1) : x + 1] = color

    line(px(x0, y0), px(x1, y0), (0, 0, 0))
    line(px(x0, y0), px(x0, y1), (0, 0, 0))
    line(px(x0, target), px(x1, target), (160, 160, 160))
    for i, (_, ps) in enumerate(series):
        for a, b in itertools.pairwise(ps):
            line(px(*a), px(*b), COLORS[i % len(COLORS)])
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    path.write_bytes(png)


# -- the swarm arm: real node processes through a real broker -----------------------------------


def run_swarm_arm(arm: Arm, setup: Setup, values: dict[str, Any], target: float) -> ArmResult:
    """``seedswarm swarm`` with ``arm.nodes`` nodes, one torch thread each, pinned to a core each.

    The launcher runs as a user would run it, on a manifest written here; this process only
    watches: it reads each node's ``/status`` (applied version vector, steps) once a second and,
    after the run, rebuilds node n0's weights at those moments from n0's log and evaluates them
    (so evaluation costs the nodes nothing). Needs ``seedswarm node`` to take
    ``records_per_step`` seeds per step (FZOO arms) -- see docs/PROTOCOL.md.
    """
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile

    from seedswarm.model.engine import Engine, Hyper

    result = ArmResult(arm)
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
    broker = _start_mosquitto(work)
    cmd = [
        sys.executable, "-m", "seedswarm.daemon.cli", "swarm", "--nodes", str(arm.nodes),
        "--manifest", str(work / "manifest.json"), "--model", setup.model_ref,
        "--data", setup.data_ref, "--dir", str(work / "swarm"), "--fresh",
        "--batch-size", str(arm.batch_size), "--torch-threads", "1", "--json",
        "--kernel", setup.kernel if setup.kernel != "auto" else "auto",
    ]  # fmt: skip
    if broker is not None:
        cmd += ["--broker", broker[1]]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )  # fmt: skip
    polls: list[tuple[float, dict[str, int], int]] = []
    first_step = None
    try:
        nodes: dict[str, tuple[int, str]] = {}
        budget = float(values["budget_s"])
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
            vv = {str(k): int(v) for k, v in status.get("version_vector", {}).items()}
            raw_steps = status.get("steps", 0)  # {"this_session": n, ...} in today's /status
            if isinstance(raw_steps, dict):
                raw_steps = raw_steps.get("this_session", 0)
            steps = int(raw_steps or 0)
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
        if broker is not None:
            broker[0].terminate()
            broker[0].wait(timeout=30)
    result.startup_s = first_step or 0.0
    result.notes["clock"] = "wall clock from the launcher's start (start-up included)"
    result.curve = _replay_curve(
        work / "swarm" / "n0", setup, polls, float(values["eval_every_s"]), per_record
    )
    result.notes["polls"] = len(polls)
    shutil.rmtree(work, ignore_errors=True)
    return result


def _start_mosquitto(work: Path) -> tuple[Any, str] | None:
    """A Mosquitto broker on a free port when one is installed (else the embedded amqtt)."""
    import shutil
    import socket
    import subprocess

    exe = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if exe is None:
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = work / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n",
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"mqtt://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise ConfigError("bench learn: mosquitto did not start")


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


def _status(http: str) -> dict[str, Any] | None:
    import json
    import urllib.request

    if not http:
        return None
    try:
        with urllib.request.urlopen(f"http://{http}/status", timeout=5) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data
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
    from seedswarm.model.engine import Engine, evaluate

    from .datadir import DataDir

    manifest, log, _ = DataDir(node_dir).load()
    records = list(log.ordered())
    engine = Engine.open(manifest, model_ref=setup.model_ref)
    held_bs = 64
    curve = [_point(evaluate(engine.task_model, setup.held, batch_size=held_bs), 0.0, 0, 0, 0)]
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
        curve.append(_point(ev, t, steps, n, round(n * per_record)))
    return curve


# -- apply speed: dense and low-rank records side by side ---------------------------------------


def apply_rates(model: str, records: int, repeats: int, kernel: str) -> dict[str, Any]:
    """Records/s of applying ``records``-record batches with dense and low-rank directions,
    on the same model, interleaved (so machine load hits both alike)."""
    import statistics

    from seedswarm.model.engine import Engine, Hyper
    from seedswarm.protocol.manifest import TaskSpec

    task = TaskSpec(kind="causal_lm", seq_len=64)
    engines = {
        d: Engine.build("bench", model, task, Hyper(direction=d), kernel=kernel)
        for d in ("dense", "lowrank")
    }
    terms = [(engines["dense"].seed_of("bench", i), 0, 1 + (i % 127)) for i in range(records)]
    times: dict[str, list[float]] = {d: [] for d in engines}
    for e in engines.values():
        e._accumulate(terms[:8])  # warm-up
    for _ in range(repeats):
        for d, e in engines.items():
            t = time.perf_counter()
            e._accumulate(terms)
            times[d].append(time.perf_counter() - t)
    med = {d: statistics.median(v) for d, v in times.items()}
    e = engines["lowrank"]
    in_matrices = sum(m.rows * m.cols for m in e.layout.matrices)
    return {
        "model": model,
        "params": e.numel,
        "params_in_matrices": in_matrices,
        "records_per_batch": records,
        "kernel": e.backend.name,
        "seconds": med,
        "records_per_s": {d: records / t for d, t in med.items()},
        "lowrank_vs_dense": med["dense"] / med["lowrank"],
    }


# -- the command ---------------------------------------------------------------------------------


def prepare_setup(values: dict[str, Any]) -> Setup:
    from seedswarm.model.data import read
    from seedswarm.model.loading import byte_tokenizer, load
    from seedswarm.model.tasks import prepare

    from .runspec import plan_run
    from .settings import RunSettings

    model = "minilm" if values["model"] == "opt-125m-config" else values["model"]
    plan = plan_run(RunSettings(model=model, data=values["data"]))
    assert plan.task is not None
    task = plan.task
    tokenizer = (
        byte_tokenizer() if model == "tiny" else load(model, kind=_backbone_kind(task)).tokenizer
    )
    train = prepare(plan.raw, task, tokenizer)
    if values["eval"]:
        held = prepare(read(values["eval"]), task, tokenizer)
    else:  # the last tenth of the training data, which the batches never draw from
        cut = len(train) - max(1, len(train) // 10)
        held = train.subset(range(cut, len(train)))
        train = train.subset(range(cut))
    if values["eval_limit"]:
        held = held.subset(range(min(values["eval_limit"], len(held))))
    return Setup(
        plan.model_ref, task, train, held, data_ref=values["data"], kernel=values["kernel"]
    )


def bench_learn(values: dict[str, Any]) -> dict[str, Any]:
    arms = parse_arms(values["arms"], values)
    setup = prepare_setup(values)
    target = float(values["target"])
    results = []
    for arm in arms:
        say(f"bench learn: arm {arm.name}", quiet=values["json"])
        if arm.kind == "adamw":
            results.append(run_adamw_arm(arm, setup, values, target))
        elif arm.kind == "swarm":
            results.append(run_swarm_arm(arm, setup, values, target))
        else:
            results.append(run_zo_arm(arm, setup, values, target))
    out = summarise(results, target, setup.classify)
    out.update(
        model=setup.model_ref, data=values["data"], eval=values["eval"] or "(train tail)",
        held_out=len(setup.held), budget_s=values["budget_s"],
        eval_every_s=values["eval_every_s"],
    )  # fmt: skip
    if values["plot"]:
        out["plot"] = values["plot"]
        out["plot_drawn_with"] = write_plot(out, Path(values["plot"]))
        out["plot_colors"] = {
            a["arm"]: "#{:02x}{:02x}{:02x}".format(*COLORS[i % len(COLORS)])
            for i, a in enumerate(out["arms"])
        }
    if values["apply_model"]:
        out["apply"] = apply_rates(
            values["apply_model"], values["apply_records"], values["repeats"], values["kernel"]
        )
    return out


def print_learn(result: dict[str, Any]) -> None:
    print(
        f"model {result['model']}, held-out {result['held_out']} examples, budget "
        f"{result['budget_s']:.0f} s per arm, evaluated every {result['eval_every_s']:.0f} s"
    )
    print_summary(result)
    if "plot" in result:
        print(f"plot: {result['plot']} ({result['plot_drawn_with']})")
    if "apply" in result:
        a = result["apply"]
        rate = a["records_per_s"]
        print(
            f"apply {a['records_per_batch']}-record batches on {a['model']} "
            f"({a['params'] / 1e6:.1f}M, {a['kernel']} kernel): dense {rate['dense']:.1f} "
            f"records/s, low-rank {rate['lowrank']:.1f} records/s "
            f"({a['lowrank_vs_dense']:.1f}x)"
        )
