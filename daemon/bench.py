"""``seedswarm bench step|apply|wire``: speed figures, each measured side by side in one run.

Every benchmark prints ratios against a reference measured in the same process, on the same
machine, a moment apart, because absolute times on shared machines mean little. Times are
medians over ``--repeats`` runs after a warm-up.

  step   one ZO step  vs  two bare forward passes (the physical floor)
                      vs  MeZO's loop: torch.manual_seed + torch.normal per parameter, four
                          regenerations per step (same model, batch and dtype)
         and the peak memory of a step vs that of the two forward passes.
  apply  records/s for batches of 1, 16 and 256 records
                      vs  one fp32 read+write pass over the weights (the memory-bandwidth floor)
                      vs  one torch.randn per record and parameter (the naive replay)
  wire   bytes per record through a real MQTT broker, for frames of 1..1024 records, counted on
         the wire by a TCP relay between the publisher and the broker
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bench_learn import bench_learn, print_learn
from .console import emit_json, table
from .errors import ConfigError
from .mosquitto import mosquitto


def run_bench(values: dict[str, Any]) -> int:
    from .bench_control import bench_control
    from .bench_join import bench_join
    from .bench_live import bench_live
    from .bench_load import bench_load

    which = values["which"]
    if which == "learn":  # bench_learn.py: learning to a target, arm by arm
        result = {"bench": which, "host": _host(), **bench_learn(values)}
        emit_json(result) if values["json"] else print_learn(result)
        return 0
    runs = {
        "step": bench_step,
        "apply": bench_apply,
        "wire": bench_wire,
        "quant": bench_quant,
        "live": bench_live,
        "join": bench_join,
        "control": bench_control,
        "load": bench_load,
    }
    result = runs[which](values)
    result = {"bench": which, "host": _host(), **result}
    if values["json"]:
        emit_json(result)
    else:
        _print(result)
    return 0


# -- helpers ------------------------------------------------------------------------------------


def _host() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _sizes(values: dict[str, Any], name: str) -> list[int]:
    """A flag such as ``--batches 1,16,256``: positive integers, at least one."""
    try:
        sizes = [int(x) for x in values[name].split(",") if x.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"--{name}: a comma-separated list of positive integers, e.g. 1,16,256")
    return sizes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(
    fn: Callable[[], Any], repeats: int, device: torch.device, warmup: int = 1
) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _engine(values: dict[str, Any], kernel: str | None = None) -> Any:
    from seedswarm.model.engine import Engine, Hyper
    from seedswarm.protocol.manifest import TaskSpec

    from .runspec import resolve_device

    device = resolve_device(values["device"])
    task = TaskSpec(kind="causal_lm", seq_len=max(values["seq_len"], 8))
    return Engine.build(
        "bench", values["model"], task, Hyper(), device=device, kernel=kernel or values["kernel"]
    )


def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class _PeakRSS:
    """Resident memory of this process during a block (Linux): ``start`` is VmRSS on entry,
    ``peak`` the high-water mark VmHWM on exit, after resetting it on entry (clear_refs)."""

    def __enter__(self) -> _PeakRSS:
        self.start = self.peak = 0
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.ok = False
            return self
        self.ok = True
        self.start = _proc_status_bytes("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.ok:
            self.peak = _proc_status_bytes("VmHWM")


def _memory_probe(values: dict[str, Any], arm: str) -> tuple[int, int]:
    """In a fresh process: load the model, then run one arm once. Returns (resident bytes
    before the arm, peak resident bytes during it). A fresh process per arm, because freed
    memory that the allocator keeps from one arm would hide what the next one needs."""
    from seedswarm.model.loading import quiet_libraries

    quiet_libraries()  # a spawned child starts with the libraries' defaults
    engine = _engine(values)
    fn = _step_arms(engine, values)[arm]
    with _PeakRSS() as rss:
        fn()
    return rss.start, rss.peak


def _peak_memory(
    values: dict[str, Any], device: torch.device, arms: dict[str, Callable[[], None]]
) -> dict[str, tuple[int, int]]:
    """(before, peak) bytes per arm: GPU allocations on CUDA (the arms as given), resident
    memory on CPU (each arm rebuilt in a fresh process from ``values``)."""
    if device.type == "cuda":
        out: dict[str, tuple[int, int]] = {}
        for name, fn in arms.items():
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = int(torch.cuda.memory_allocated(device))
            fn()
            torch.cuda.synchronize(device)
            out[name] = (before, int(torch.cuda.max_memory_allocated(device)))
        return out
    if not Path("/proc/self/clear_refs").exists():  # not Linux: no resident-memory figures
        return dict.fromkeys(STEP_ARMS, (0, 0))
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=1) as pool:
        return {name: pool.submit(_memory_probe, values, name).result() for name in STEP_ARMS}


# -- step ----------------------------------------------------------------------------------------


def _mezo_step(
    params: list[torch.Tensor], loss: Callable[[], float], seed: int, eps: float, lr: float
) -> float:
    """MeZO's reference loop (Malladi et al. 2023): z regenerated four times from the seed."""

    def perturb(scale: float) -> None:
        torch.manual_seed(seed)
        for p in params:
            z = torch.normal(mean=0.0, std=1.0, size=p.shape, device=p.device, dtype=p.dtype)
            p.add_(z, alpha=scale * eps)

    perturb(1.0)
    lp = loss()
    perturb(-2.0)
    lm = loss()
    perturb(1.0)
    g = (lp - lm) / (2 * eps)
    torch.manual_seed(seed)
    for p in params:
        z = torch.normal(mean=0.0, std=1.0, size=p.shape, device=p.device, dtype=p.dtype)
        p.add_(z, alpha=-lr * g)
    return g


STEP_ARMS = ("two_forwards", "zo_step", "mezo_step")


def _step_arms(engine: Any, values: dict[str, Any]) -> dict[str, Callable[[], None]]:
    """What ``bench step`` compares, on one model and one batch of random token ids."""
    tm = engine.task_model
    device = engine.device
    vocab = int(tm.backbone.config.vocab_size)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (values["batch_size"], values["seq_len"]), generator=gen)
    batch = {"input_ids": ids.to(device)}
    params = [p.data for _, p in engine.trainable]
    counter = iter(range(1 << 30))

    def two_forwards() -> None:
        tm.loss(batch)
        tm.loss(batch)

    def ours() -> None:
        engine.step([engine.seed_of("bench", next(counter))], batch)

    def mezo() -> None:
        _mezo_step(params, lambda: tm.loss(batch), next(counter), 1e-3, 1e-7)

    return dict(zip(STEP_ARMS, (two_forwards, ours, mezo), strict=True))


def bench_step(values: dict[str, Any]) -> dict[str, Any]:
    engine = _engine(values)
    tm = engine.task_model
    device = engine.device
    repeats = values["repeats"]
    arms = _step_arms(engine, values)

    # interleave the three so that drift in machine load hits all of them alike
    times: dict[str, list[float]] = {name: [] for name in arms}
    for fn in arms.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in arms.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    fwd, zo, mz = (statistics.median(times[k]) for k in STEP_ARMS)
    mem = _peak_memory(values, device, arms)
    mem_fwd, mem_ours, mem_mezo = (mem[k][1] for k in STEP_ARMS)
    weights = sum(p.numel() * p.element_size() for p in tm.parameters())
    return {
        "model": values["model"],
        "params": engine.numel,
        "device": str(device),
        "kernel": engine.backend.name,
        "batch": [values["batch_size"], values["seq_len"]],
        "repeats": repeats,
        "seconds": {"two_forwards": fwd, "zo_step": zo, "mezo_step": mz},
        "ratios": {
            "zo_step / two_forwards": zo / fwd,
            "mezo_step / two_forwards": mz / fwd,
            "mezo_step / zo_step": mz / zo,
        },
        "overhead_pct": 100.0 * (zo / fwd - 1.0),
        "memory_bytes": {
            "weights": weights,
            "peak_two_forwards": mem_fwd,
            "peak_zo_step": mem_ours,
            "peak_mezo_step": mem_mezo,
            # the same peaks less what was resident before the arm ran (model, batch, runtime)
            "above_loaded": {name: peak - before for name, (before, peak) in mem.items()},
            "measured_in": "torch.cuda" if device.type == "cuda" else "a fresh process per arm",
        },
        "memory_ratio_zo_vs_inference": (mem_ours / mem_fwd) if mem_fwd else None,
    }


# -- apply ---------------------------------------------------------------------------------------


def bench_apply(values: dict[str, Any]) -> dict[str, Any]:
    sizes = _sizes(values, "batches")
    engine = _engine(values)
    device = engine.device
    repeats = values["repeats"]
    flat = engine.flat  # every trainable weight, packed (model/layout.py)
    numel = engine.numel

    def one_pass() -> None:
        flat.mul_(1.0)  # reads and writes every trainable weight once

    t_pass = _median_time(one_pass, repeats, device)
    rows: list[dict[str, Any]] = []
    counter = iter(range(1 << 40))
    for r in sizes:
        terms = [(engine.seed_of("bench", next(counter)), 0, 1 + (i % 127)) for i in range(r)]
        reps = max(1, repeats if r <= 16 else 2)
        t = _median_time(partial(engine._accumulate, terms), reps, device)
        rows.append(
            {
                "batch": r,
                "seconds": t,
                "records_per_s": r / t,
                "time_vs_one_pass": t / t_pass,
            }
        )

    # naive replay: one torch.randn per record and parameter, as a MeZO-style replay would do
    params = [p.data for _, p in engine.trainable]

    def naive(n: int = 2) -> None:
        for i in range(n):
            torch.manual_seed(i)
            for p in params:
                p.add_(torch.randn(p.shape, device=p.device, dtype=p.dtype), alpha=1e-7)

    t_naive = _median_time(naive, max(1, repeats // 2), device) / 2
    naive_rate = 1.0 / t_naive
    for row in rows:
        row["vs_naive_randn"] = row["records_per_s"] / naive_rate
    bytes_pass = 2 * 4 * numel
    return {
        "model": values["model"],
        "params": numel,
        "device": str(device),
        "kernel": engine.backend.name,
        "kernel_threads": getattr(engine.backend, "threads", None),
        "one_pass_seconds": t_pass,
        "one_pass_GBps": bytes_pass / t_pass / 1e9,
        "naive_records_per_s": naive_rate,
        "batches": rows,
    }


# -- wire ----------------------------------------------------------------------------------------


class _CountingRelay:
    """A TCP relay that counts the bytes each way: the wire, as the broker sees it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.up = 0  # publisher -> broker
        self.down = 0  # broker -> publisher
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            try:
                while data := await src.read(65536):
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(pipe(reader, up_w, True))
            tg.create_task(pipe(up_r, writer, False))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def bench_wire(values: dict[str, Any]) -> dict[str, Any]:
    import uvloop

    from .broker import free_port

    sizes = _sizes(values, "frames")
    kind = values["broker"]
    if kind == "auto":
        kind = (
            "mosquitto"
            if (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists())
            else "amqtt"
        )
    if kind not in ("mosquitto", "amqtt"):
        raise ConfigError("--broker for wire: mosquitto, amqtt or auto")
    port = free_port()
    if kind == "mosquitto":
        with mosquitto(port):
            rows = uvloop.run(_wire_rows(port, sizes, embedded=False))
    else:
        rows = uvloop.run(_wire_rows(port, sizes, embedded=True))
    return {"broker": kind, "frames": rows}


async def _wire_rows(port: int, sizes: list[int], *, embedded: bool) -> list[dict[str, Any]]:
    import aiomqtt

    from .broker import EmbeddedBroker

    broker = EmbeddedBroker(port=port) if embedded else None
    if broker is not None:
        await broker.start()
    try:
        if embedded:
            return await _measure_wire(port, sizes, None)
        async with aiomqtt.Client("127.0.0.1", port, identifier="wire-sys-counter") as sys_client:
            await sys_client.subscribe([(_SysCounter.BYTES, 0), (_SysCounter.TICK, 0)])
            counter = _SysCounter()
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(counter.read(sys_client), name="sys-counter")
                try:
                    return await _measure_wire(port, sizes, counter)
                finally:
                    reader.cancel()
    finally:
        if broker is not None:
            await broker.stop()


async def _measure_wire(
    port: int, sizes: list[int], counter: _SysCounter | None
) -> list[dict[str, Any]]:
    import aiomqtt

    from seedswarm.protocol.codec import encode_frame, sign_frame
    from seedswarm.protocol.records import Frame, q_to_byte
    from seedswarm.protocol.signing import NodeKey

    key = NodeKey.generate()
    topic = "seedswarm/default/records/n0"
    rows = []
    sys_before = await counter.fresh() if counter is not None else 0
    for n in sizes:
        for signed in (False, True):
            relay = _CountingRelay(port)
            await relay.start()
            qs = bytes(q_to_byte((i * 37) % 255 - 127) for i in range(n))  # any valid bytes
            total_records = max(4096, n * 8)
            frames = math.ceil(total_records / n)
            async with aiomqtt.Client(
                "127.0.0.1", relay.port, identifier=f"wire-{n}-{signed}"
            ) as c:
                base_up = relay.up
                seq = 0
                payload_bytes = 0
                for _ in range(frames):
                    frame = Frame(b"\x01" * 8, "n0", seq, seq // n, qs)
                    if signed:
                        frame = sign_frame(frame, key)
                    body = encode_frame(frame)
                    payload_bytes += len(body)
                    await c.publish(topic, body, qos=1)
                    seq += n
                wire_up = relay.up - base_up
            records = frames * n
            row = {
                "records_per_frame": n,
                "signed": signed,
                "payload_bytes_per_record": payload_bytes / records,
                "wire_bytes_per_record": wire_up / records,
            }
            if counter is not None:
                # the broker's own count: $SYS/broker/bytes/received, which also counts
                # the CONNECT/DISCONNECT of the publisher and the counter client's pings
                sys_after = await counter.fresh()
                row["broker_sys_bytes_per_record"] = (sys_after - sys_before) / records
                sys_before = sys_after  # nothing reaches the broker between two rows
            rows.append(row)
            await relay.stop()
    return rows


class _SysCounter:
    """Mosquitto's $SYS/broker/bytes/received, as a separate client reads it.

    Mosquitto refreshes $SYS on a tick (every 2 s with ``sys_interval 1``: it waits until more
    than the interval has passed). Each tick publishes the uptime first, then bytes/received if
    it changed. So the value is current once enough ticks have passed, which is counted in
    ticks, not guessed from silence: a loaded machine delays ticks, it cannot fake one.
    """

    BYTES = "$SYS/broker/bytes/received"
    TICK = "$SYS/broker/uptime"  # changes, hence is published, on every tick
    TICKS = 3  # after the 3rd tick the value held covers all that reached the broker by the 2nd
    PATIENCE_S = 60.0

    def __init__(self) -> None:
        self.value = -1
        self.ticks = 0
        self._ticked = asyncio.Event()

    async def read(self, client: Any) -> None:
        async for m in client.messages:
            if m.retain or not isinstance(m.payload, bytes | bytearray):
                continue  # retained: the state at subscribe time, not a tick
            if m.topic.matches(self.TICK):
                self.ticks += 1
                self._ticked.set()
            elif m.topic.matches(self.BYTES):
                self.value = int(m.payload)

    async def fresh(self) -> int:
        """The counter as of at least one full tick after this call."""
        target = self.ticks + self.TICKS
        try:
            async with asyncio.timeout(self.PATIENCE_S):
                while self.ticks < target or self.value < 0:
                    self._ticked.clear()
                    await self._ticked.wait()
        except TimeoutError:
            raise ConfigError(
                f"bench wire: mosquitto's $SYS counters did not tick within "
                f"{self.PATIENCE_S:.0f} s (is sys_interval set?)"
            ) from None
        return self.value


# -- quant ---------------------------------------------------------------------------------------


def bench_quant(values: dict[str, Any]) -> dict[str, Any]:
    """1-byte records against the unquantised projected gradient, on the same seeds and batches.

    Arm "byte" is the protocol: q = stochastic_round(clip(lr*g/u)), update u*q*z. Arm "float"
    updates by lr*g*z, rounded only to each tensor's grid (no clip, no byte): what the records
    would do with unlimited bits. Both arms see the same seeds, batches and base model.
    """
    from seedswarm.model.data import read, sample_batch
    from seedswarm.model.engine import Engine
    from seedswarm.model.tasks import prepare

    from .runspec import open_engine, plan_run, resolve_device
    from .settings import RunSettings

    model = "tiny" if values["model"] == "opt-125m-config" else values["model"]
    run = RunSettings(
        model=model, data=values["data"], lr=values["lr"], unit_exp=values["unit_exp"]
    )
    device = resolve_device(values["device"])
    plan = plan_run(run)
    byte = open_engine(plan, run, device=device, kernel=values["kernel"])
    flt = Engine.open(
        byte.manifest, model_ref=plan.model_ref, device=device, kernel=values["kernel"]
    )
    m = byte.manifest
    tm = byte.task_model
    train = prepare(plan.raw, m.task, tm.tokenizer)
    if values["eval"]:
        held = prepare(read(values["eval"]), m.task, tm.tokenizer)
    else:  # the last tenth of the training data, which the batches below never draw from
        cut = len(train) - max(1, len(train) // 10)
        held = train.subset(range(cut, len(train)))
        train = train.subset(range(cut))
    batch_size = values["batch_size"]

    def float_step(seed: int, batch: dict[str, torch.Tensor]) -> None:
        flt._accumulate([(seed, 1, 0)])
        lp = flt.task_model.loss(batch)
        flt._accumulate([(seed, -2, 0)])
        lm = flt.task_model.loss(batch)
        g = (lp - lm) / (2 * m.epsilon)
        lay = flt.layout
        # restore (+eps) fused with the unquantised update lr*g, on each tensor's grid:
        # lr*g / 2**e_t = lr*g * 2**(unit_shift_t - unit_exp)
        du = np.round(np.ldexp(m.lr * g, lay.unit_shift - m.unit_exp))
        if not np.all(np.abs(du) < 2**24):  # beyond the grid's exact range (and int32)
            raise ConfigError(
                f"bench quant: the unquantised update lr*g = {m.lr * g:.3g} leaves the exact "
                "grid range; lower --lr"
            )
        du = du.astype(np.int64)
        steps = (lay.eps_steps - du)[None, :].astype(np.int32)
        flt.backend.accumulate_flat(flt.flat, lay, [seed], steps)

    curve: list[dict[str, Any]] = []
    qs: list[int] = []

    def evaluate(step: int) -> None:
        a = byte.evaluate(held, batch_size=batch_size * 4)
        b = flt.evaluate(held, batch_size=batch_size * 4)
        curve.append({"step": step, "byte": a, "float": b})

    evaluate(0)
    for seq in range(values["steps"]):
        seed = byte.seed_of("n0", seq)
        idx = sample_batch(seed, len(train), batch_size)
        qs.extend(byte.step([seed], tm.make_batch(train.subset(idx))).qs)
        float_step(seed, flt.task_model.make_batch(train.subset(idx)))
        if (seq + 1) % values["eval_every"] == 0:
            evaluate(seq + 1)
    return {
        "model": model,
        "data": values["data"],
        "steps": values["steps"],
        "lr": m.lr,
        "unit_exp": m.unit_exp,
        "mean_abs_q": sum(abs(q) for q in qs) / max(len(qs), 1),
        "clipped_fraction": sum(abs(q) == 127 for q in qs) / max(len(qs), 1),
        "curve": curve,
    }


# -- output --------------------------------------------------------------------------------------


def _print(result: dict[str, Any]) -> None:
    which = result["bench"]
    host = result["host"]
    print(
        f"host: {host['cpus']} cpus, torch {host['torch']} ({host['torch_threads']} threads)"
        + (f", {host['gpu']}" if "gpu" in host else "")
    )
    if which == "load":
        from .bench_load import print_load

        print(print_load(result))
        return
    if which == "control":
        from .bench_control import print_control

        print(print_control(result))
        return
    if which == "join":
        from .bench_join import print_join

        print(print_join(result))
        return
    if which == "live":
        from .bench_live import print_live

        print("bytes per own record (up) and per record delivered (down), every byte counted")
        print(print_live(result))
        return
    if which == "step":
        s, r, m = result["seconds"], result["ratios"], result["memory_bytes"]
        print(
            f"model {result['model']} ({result['params'] / 1e6:.1f}M trainable), batch "
            f"{result['batch'][0]}x{result['batch'][1]}, {result['device']}, {result['kernel']} kernel, "
            f"median of {result['repeats']}"
        )
        print(
            table(
                ["", "seconds", "vs two forwards"],
                [
                    ["two forward passes", f"{s['two_forwards']:.4f}", "1.00x"],
                    [
                        "seedswarm ZO step",
                        f"{s['zo_step']:.4f}",
                        f"{r['zo_step / two_forwards']:.2f}x",
                    ],
                    [
                        "MeZO reference step",
                        f"{s['mezo_step']:.4f}",
                        f"{r['mezo_step / two_forwards']:.2f}x",
                    ],
                ],
            )
        )
        print(
            f"overhead beyond two forwards: {result['overhead_pct']:.1f}%   "
            f"MeZO / seedswarm: {r['mezo_step / zo_step']:.2f}x"
        )
        mib = 1 << 20
        up = m["above_loaded"]
        print(
            f"peak memory (MiB, {m['measured_in']}): weights {m['weights'] / mib:.0f}, two "
            f"forwards {m['peak_two_forwards'] / mib:.0f}, ZO step {m['peak_zo_step'] / mib:.0f}, "
            f"MeZO step {m['peak_mezo_step'] / mib:.0f}"
        )
        print(
            f"  above the loaded model: two forwards {up['two_forwards'] / mib:.0f}, ZO step "
            f"{up['zo_step'] / mib:.0f}, MeZO step {up['mezo_step'] / mib:.0f}"
        )
    elif which == "apply":
        print(
            f"model {result['model']} ({result['params'] / 1e6:.1f}M trainable), {result['device']}, "
            f"{result['kernel']} kernel ({result['kernel_threads']} threads)"
        )
        print(
            f"one fp32 read+write pass: {result['one_pass_seconds'] * 1e3:.1f} ms "
            f"({result['one_pass_GBps']:.1f} GB/s); naive randn replay: "
            f"{result['naive_records_per_s']:.2f} records/s"
        )
        print(
            table(
                ["records/batch", "seconds", "records/s", "vs one pass", "vs naive randn"],
                [
                    [
                        row["batch"],
                        f"{row['seconds']:.4f}",
                        f"{row['records_per_s']:.1f}",
                        f"{row['time_vs_one_pass']:.2f}x",
                        f"{row['vs_naive_randn']:.0f}x",
                    ]
                    for row in result["batches"]
                ],
            )
        )
    elif which == "quant":
        _print_quant(result)
    else:
        print(
            f"broker {result['broker']}; bytes counted on the TCP connection to the broker"
            + (" and by the broker's $SYS counter" if result["broker"] == "mosquitto" else "")
        )
        headers = ["records/frame", "signed", "payload B/record", "wire B/record"]
        sys_col = result["broker"] == "mosquitto"
        if sys_col:
            headers.append("broker $SYS B/record")
        rows = []
        for row in result["frames"]:
            cells = [
                row["records_per_frame"],
                "yes" if row["signed"] else "no",
                f"{row['payload_bytes_per_record']:.3f}",
                f"{row['wire_bytes_per_record']:.3f}",
            ]
            if sys_col:
                cells.append(f"{row['broker_sys_bytes_per_record']:.3f}")
            rows.append(cells)
        print(table(headers, rows))
    sys.stdout.flush()


def _print_quant(result: dict[str, Any]) -> None:
    print(
        f"model {result['model']}, data {result['data']}, lr {result['lr']}, "
        f"u = 2^{result['unit_exp']}: mean |q| {result['mean_abs_q']:.1f}, "
        f"clipped {100 * result['clipped_fraction']:.1f}%"
    )
    acc = "accuracy" in result["curve"][0]["byte"]
    headers = ["step", "loss, 1-byte records", "loss, unquantised g"]
    if acc:
        headers += ["accuracy, 1-byte", "accuracy, unquantised"]
    rows = []
    for point in result["curve"]:
        row = [point["step"], f"{point['byte']['loss']:.4f}", f"{point['float']['loss']:.4f}"]
        if acc:
            row += [f"{point['byte']['accuracy']:.4f}", f"{point['float']['accuracy']:.4f}"]
        rows.append(row)
    print(table(headers, rows))
