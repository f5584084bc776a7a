"""``seedswarm bench load``: up to a thousand nodes on one Mosquitto, with and without a relay.

Each row runs N nodes through a fresh Mosquitto started by the bench, each node publishing one
record per frame and one frame per second (``--frame-rate``), for a warm-up and then a measured
window (``--seconds``), either listening to each other (``relay off``) or with one real
``seedswarm relay`` process up (``relay on``: nodes then listen to its bundles). After the
window the nodes stop writing, gap filling gets ``--drain`` seconds to finish, and then every
node that checks every record is asked what it lacks.

The nodes are simulated (loadgen.py: the real session and the real MQTT transport, no model),
many per process, in several worker processes on uvloop; ``--real K`` of them can be real
``seedswarm node`` processes with the tiny model. Of the simulated ones, ``--full`` check every
record they get (and measure the lag and the loss); the others are *light* (loadgen.py): the
broker does the same work for them, they just do not read the records, because all N nodes
reading all N records on one machine is N² record checks per second, which N hosts share in
a real swarm and two cores cannot (about 13 µs each).

What each figure is, and where it comes from:

  * deliveries/s: PUBLISH packets the broker sent, by ``$SYS/broker/publish/messages/sent``
    (over the window, between two $SYS ticks; the few $SYS messages of the bench's own
    monitor are in it); ``per node·frame``: that divided by N × frame rate, i.e. deliveries
    per node per frame interval: about N − 1 when nodes listen to each other, about
    1 + frame interval / relay interval (3 at 1 frame/s and 0.5 s bundles) with a relay;
  * broker CPU: utime + stime of the Mosquitto process (/proc/<pid>/stat) over the window, in
    % of one core; the same for the simulators (all worker processes) and the relay;
  * bytes in per record: ``$SYS/broker/bytes/received`` over the window per record written
    in it (with a relay this includes the relay's bundles); bytes out per delivery:
    ``$SYS/broker/bytes/sent`` per record per receiving node (records × (N − 1));
  * lag: publish (the frame sealed, loadgen.Clock) to receipt at the full nodes, for the
    records written in the window, wherever they came from (broadcast, bundle, gap filling);
  * lost: records some full or real node lacked at the end (every node must hold every
    record of every other);
  * kept: records the simulated nodes wrote in the window, against N × seconds × rate;
  * saturated: lag p99 above ``LAG_LIMIT_S``, a record lost, the rate not kept (below
    ``KEPT_MIN``), or not every client connected (or listening to the relay).

Everything shares the machine (and whatever else runs on it): the load average at the start
and end of the window is in every row.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import multiprocessing
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .console import say
from .errors import ConfigError
from .mosquitto import mosquitto

LAG_LIMIT_S = 5.0  # a row whose lag p99 is above this is saturated
KEPT_MIN = 0.95  # ... or whose nodes wrote less than this share of their records on time
CONNECT_PER_S = 50.0  # new MQTT connections per second at most, all workers together
BUSY_CPU = 0.6  # ... and a worker connects its next node only while it is less busy than this
PROGRESS_EVERY_S = 15.0  # how often the bench says how far the nodes got while they join
CONNECT_PATIENCE_S = 0.5  # seconds per node the bench waits for all to connect and listen
NODES_PER_WORKER = 300  # light nodes per worker process (at most MAX_WORKERS of them)
MAX_WORKERS = 4
RELAY = "r0"
RUN = "load"
SYS_COUNTERS = (
    "publish/messages/sent",
    "publish/messages/received",
    "publish/messages/dropped",
    "bytes/sent",
    "bytes/received",
)


@dataclass(frozen=True, slots=True)
class LoadRow:
    nodes: int  # simulated + real
    relay: bool
    real: int
    full: int  # simulated nodes that check every record (0: all)
    seconds: float
    warmup: float
    frame_rate: float
    relay_interval: float  # seconds between two bundles (``seedswarm relay --interval``)
    drain: float
    workers: int  # 0: one per NODES_PER_WORKER light nodes, plus one for the full ones


@dataclass(frozen=True, slots=True)
class LoadResult:
    nodes: int
    relay: bool
    real: int
    full: int
    workers: int
    connected: int  # simulated nodes connected when the records began
    via_relay: int  # ... of them listening to the relay's bundles
    seconds: float  # the measured window
    load_avg: tuple[float, float]  # 1-minute load average at the window's start and end
    machine_cpu_pct: float  # all cores busy, % of the machine, over the window
    records: int  # own records written in the window, all nodes
    kept: float  # simulated nodes' records in the window / (nodes x seconds x rate)
    late_p99: float | None  # seconds a simulated node's record was written after it was due
    deliveries_per_s: float  # $SYS/broker/publish/messages/sent
    deliveries_per_node_frame: float  # deliveries_per_s / (nodes x frame rate)
    publishes_in_per_s: float  # $SYS/broker/publish/messages/received
    client_messages_per_s: float  # messages the simulated nodes' transports received
    broker_dropped: int  # $SYS/broker/publish/messages/dropped, the whole row
    broker_cpu_pct: float  # % of one core
    sims_cpu_pct: float
    relay_cpu_pct: float | None
    bytes_in_per_record: float
    bytes_out_per_delivery: float
    lag_p50: float | None
    lag_p99: float | None
    lag_max: float | None
    lag_samples: int
    lost: int | None  # None: the nodes' holdings could not be read
    complete_after_s: float | None  # from the last record due to every node holding all
    real_agree: bool | None  # the real nodes hold every record and one fingerprint
    relay_stats: dict[str, Any] | None
    saturated: list[str] = field(default_factory=list)  # why, if it is


def parse_nodes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 2:
        raise ConfigError(
            "--nodes: a comma-separated list of swarm sizes of 2 or more, e.g. 10,100"
        )
    return sizes


def bench_load(values: dict[str, Any]) -> dict[str, Any]:
    sizes = parse_nodes(values["nodes"])
    arms = {"both": (False, True), "off": (False,), "on": (True,)}[values["relay"]]
    real, rate = values["real"], values["frame_rate"]
    if real < 0 or values["full"] < 0 or values["workers"] < 0:
        raise ConfigError("--real, --full and --workers must not be negative")
    if real >= min(sizes):
        raise ConfigError(f"--real {real}: fewer real nodes than the smallest swarm ({min(sizes)})")
    if rate <= 0 or values["seconds"] <= 0 or values["warmup"] < 0 or values["drain"] < 0:
        raise ConfigError(
            "--frame-rate and --seconds must be positive, --warmup and --drain not negative"
        )
    _raise_fd_limit()
    manifest = _real_manifest() if real else _sim_manifest()
    rows = []
    with _sigterm_unwinds():
        for n in sizes:
            for relay in arms:
                row = LoadRow(
                    nodes=n, relay=relay, real=real, full=values["full"],
                    seconds=values["seconds"], warmup=values["warmup"], frame_rate=rate,
                    drain=values["drain"], relay_interval=values["relay_interval"],
                    workers=values["workers"],
                )  # fmt: skip
                rows.append(asdict(_row(row, manifest)))
                say(print_load({"rows": rows[-1:]}).splitlines()[-1])  # each row as it is done
    return {
        "rows": rows,
        "frame_rate": rate,
        "relay_interval": values["relay_interval"],
        "limits": {"lag_p99_s": LAG_LIMIT_S, "kept": KEPT_MIN},
        "load_avg_start": os.getloadavg()[0],
    }


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM (``kill``, ``timeout``) ends the bench as Ctrl-C does: by an exception, so the
    relay, the real nodes, the workers and the broker it started are stopped on the way out
    (the relay and real nodes run in their own sessions, which no signal to this one reaches)."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_fd_limit() -> None:
    """A thousand clients and a broker serving them: as many descriptors as allowed (the
    broker and the workers inherit the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _sim_manifest() -> str:
    from seedswarm.protocol.manifest import Manifest, TaskSpec

    m = Manifest(name=RUN, model="simulated", base_hash="0" * 64, task=TaskSpec(kind="causal_lm"))
    return m.to_json()


def _real_manifest() -> str:
    """The manifest of a run of the tiny model, as ``seedswarm node --run-name load`` builds it
    (real nodes and simulated ones meet in it)."""
    from .runspec import open_engine, plan_run
    from .settings import RunSettings

    run = RunSettings(name=RUN, model="tiny")
    engine = open_engine(plan_run(run), run, device="cpu", kernel="auto")
    return engine.manifest.to_json()


# == the broker =====================================================================================


class _SysSeries:
    """Mosquitto's counters at every $SYS tick: ``(when the tick came, counters)``. A tick
    starts with ``$SYS/broker/uptime``; the counters that follow it belong to it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ticks: list[tuple[float, dict[str, int]]] = []
        self._now: dict[str, int] = {}
        self._tick_at: float | None = None

    async def run(self) -> None:
        import aiomqtt

        topics = [("$SYS/broker/uptime", 0)] + [(f"$SYS/broker/{c}", 0) for c in SYS_COUNTERS]
        async with aiomqtt.Client("127.0.0.1", self.port, identifier="bench-load-sys") as c:
            await c.subscribe(topics)
            async for m in c.messages:
                name = m.topic.value.removeprefix("$SYS/broker/")
                if name == "uptime":
                    if not m.retain:
                        self._close_tick()
                        self._tick_at = time.monotonic()
                elif isinstance(m.payload, bytes | bytearray):
                    self._now[name] = int(m.payload)

    def _close_tick(self) -> None:
        if self._tick_at is not None and all(c in self._now for c in SYS_COUNTERS):
            self.ticks.append((self._tick_at, dict(self._now)))

    def between(self, a: float, b: float) -> tuple[float, dict[str, int]]:
        """Seconds between the first tick at or after ``a`` and the last at or before ``b``,
        and how much each counter grew between them."""
        self._close_tick()
        inside = [t for t in self.ticks if a <= t[0] <= b]
        if len(inside) < 2:  # a broker too busy to tick: the nearest ticks around the window
            before = [t for t in self.ticks if t[0] <= a][-1:]
            after = [t for t in self.ticks if t[0] >= b][:1]
            inside = before + inside + after
        if len(inside) < 2:
            return 0.0, dict.fromkeys(SYS_COUNTERS, 0)
        (t0, c0), (t1, c1) = inside[0], inside[-1]
        return t1 - t0, {k: c1[k] - c0[k] for k in SYS_COUNTERS}


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all cores (/proc/stat)."""
    cpu = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = cpu[3] + cpu[4]
    return sum(cpu) - idle, sum(cpu)


# == the worker processes ===========================================================================


@dataclass(frozen=True, slots=True)
class _WorkerSpec:
    index: int
    port: int
    manifest: str  # JSON
    names: tuple[str, ...]
    full: tuple[bool, ...]
    steps: int
    frame_rate: float
    connect_every: float  # seconds between two connections
    seed: int


def _worker_main(conn: Connection, spec: _WorkerSpec) -> None:
    import logging

    import uvloop

    # a thousand clients' reconnects when overloaded (aiomqtt logs as "mqtt": an UNSUBACK that
    # comes after its request timed out is a traceback there)
    for name in ("seedswarm", "asyncio", "mqtt", "aiomqtt"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        uvloop.run(_worker(conn, spec))
    except BaseException:
        with contextlib.suppress(OSError):
            conn.send(("error", spec.index, traceback.format_exc()))
        raise


async def _worker(conn: Connection, spec: _WorkerSpec) -> None:
    """Run ``spec.names`` as simulated nodes: connect them, begin their records when told,
    report every second, and when told to stop, send back what they saw."""
    from seedswarm.protocol.manifest import Manifest

    from .loadgen import Clock, Receipts, SimNode, SimSettings
    from .settings import BrokerAddress

    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def readable() -> None:
        try:
            while conn.poll():
                inbox.put_nowait(conn.recv())
        except (EOFError, OSError):
            loop.remove_reader(conn.fileno())
            inbox.put_nowait(("stop",))  # the bench is gone

    loop.add_reader(conn.fileno(), readable)
    os.set_blocking(conn.fileno(), True)  # uvloop made it non-blocking; sends must not fail
    manifest = Manifest.from_json(spec.manifest)
    address = BrokerAddress.parse(f"mqtt://127.0.0.1:{spec.port}")
    clock = Clock(receipts=Receipts())
    nodes = [
        SimNode(
            name,
            manifest,
            address,
            SimSettings(rate=spec.frame_rate, max_latency=0.0, frame_records=1, full=full),
            clock=clock,
            seed=spec.seed + i,
        )
        for i, (name, full) in enumerate(zip(spec.names, spec.full, strict=True))
    ]
    started: list[SimNode] = []
    origins: dict[str, float] = {}
    rng = random.Random(spec.seed)

    async with asyncio.TaskGroup() as tg:

        async def connect_all() -> None:
            for n in nodes:
                started.append(n)
                tg.create_task(n.run(steps=spec.steps, hold=True), name=f"sim-{n.name}")
                await _calm(spec.connect_every)

        async def report() -> None:
            while True:
                try:
                    conn.send(("status", spec.index, _worker_status(nodes)))
                except OSError:  # the bench is gone (killed): stop as if told to
                    inbox.put_nowait(("stop",))
                    return
                await asyncio.sleep(1.0)

        connector = tg.create_task(connect_all(), name="connect")
        reporter = tg.create_task(report(), name="report")
        msg = await inbox.get()
        if msg[0] == "begin":
            for n in nodes:  # spread over the frame interval, as independent hosts would be
                origins[n.name] = msg[1] + rng.uniform(0.0, 1.0 / spec.frame_rate)
                n.begin(origins[n.name])
            while msg[0] != "stop":
                msg = await inbox.get()
        connector.cancel()
        reporter.cancel()
        for n in started:
            n.stop()
    loop.remove_reader(conn.fileno())
    r = clock.receipts
    assert r is not None
    result = {
        "sent": clock.published,
        "receipts": (list(r.names), r.node, r.seq, r.at),
        "own": {n.name: n.session.log.next_seq(n.name) for n in nodes},
        "held": {n.name: n.session.log.held() for n in nodes if n.s.full},
        "origins": origins,
        "status": _worker_status(nodes),
    }
    with contextlib.suppress(OSError):  # the bench may be gone
        conn.send(("result", spec.index, result))


async def _calm(pause: float) -> None:
    """Wait ``pause`` seconds, and on while this worker is busy: each new subscriber gets every
    node's retained presence (N² messages while N nodes join), and a client that joins a loop
    that cannot keep up misses its keep-alives, reconnects, and gets them all again."""
    while True:
        t, cpu = time.monotonic(), time.process_time()
        await asyncio.sleep(pause)
        wall = time.monotonic() - t
        if (time.process_time() - cpu) / wall < BUSY_CPU and wall < pause + 0.05:
            return
        pause = 0.5


def _worker_status(nodes: list[Any]) -> dict[str, Any]:
    return {
        "at": time.monotonic(),
        "connected": sum(n.transport.connected.is_set() for n in nodes),
        "connects": sum(n.transport.connects for n in nodes),
        "via_relay": sum(n.via_relay for n in nodes),
        "produced": sum(n.produced for n in nodes),
        "messages_in": sum(n.transport.messages_received for n in nodes),
        "full_delivered": [n.delivered for n in nodes if n.s.full],
    }


class _Workers:
    """The worker processes of a row, and what they last said."""

    def __init__(self, specs: list[_WorkerSpec]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.status: dict[int, dict[str, Any]] = {}
        self.history: list[tuple[float, int]] = []  # (when, messages the workers received)
        self.results: dict[int, dict[str, Any]] = {}
        self.errors: list[str] = []
        self._conns: dict[int, Connection] = {}
        self.procs: list[Any] = []
        self._changed = asyncio.Event()
        loop = asyncio.get_running_loop()
        for spec in specs:
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(theirs, spec), daemon=True)
            proc.start()
            theirs.close()
            self.procs.append(proc)
            self._conns[spec.index] = mine
            loop.add_reader(mine.fileno(), self._readable, spec.index)
            os.set_blocking(mine.fileno(), True)  # a long message is read whole once it starts

    def _readable(self, index: int) -> None:
        conn = self._conns[index]
        try:
            while conn.poll():
                kind, _, body = conn.recv()
                if kind == "status":
                    self.status[index] = body
                    total = sum(s["messages_in"] for s in self.status.values())
                    self.history.append((body["at"], total))
                elif kind == "result":
                    self.results[index] = body
                else:
                    self.errors.append(body)
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(conn.fileno())
            if index not in self.results:
                proc = self.procs[index]
                proc.join(5)
                self.errors.append(f"worker {index} exited (status {proc.exitcode})")
                self.results[index] = {}
        self._changed.set()

    def cpu_seconds(self) -> float:
        """utime + stime of the worker processes so far."""
        return sum(_cpu_seconds(p.pid) for p in self.procs if p.pid)

    def total(self, key: str) -> int:
        return sum(s[key] for s in self.status.values())

    def full_delivered(self) -> list[int]:
        return [d for s in self.status.values() for d in s["full_delivered"]]

    def send(self, *msg: Any) -> None:
        for conn in self._conns.values():
            with contextlib.suppress(OSError):
                conn.send(msg)

    async def wait(
        self,
        done: Callable[[], bool],
        deadline: float,
        progress: Callable[[], None] | None = None,
    ) -> bool:
        said = time.monotonic()
        while not done():
            if progress is not None and time.monotonic() - said >= PROGRESS_EVERY_S:
                progress()
                said = time.monotonic()
            if self.errors:
                raise ConfigError("bench load: a worker failed:\n" + self.errors[0][-3000:])
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 1.0))
        return True

    async def stop(self, patience: float) -> dict[int, dict[str, Any]]:
        self.send("stop")
        await self.wait(lambda: len(self.results) == len(self._conns), time.monotonic() + patience)
        for proc in self.procs:
            proc.join(5)
        return self.results

    def close(self) -> None:
        for conn in self._conns.values():
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(conn.fileno())
            conn.close()
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def _plan_workers(row: LoadRow, names: list[str], port: int, manifest: str) -> list[_WorkerSpec]:
    """The full nodes together in worker 0 (unless every node is full), the light ones spread
    over the others: a worker busy with light nodes does not delay what the full ones measure."""
    n_sim = len(names)
    n_full = n_sim if row.full == 0 else min(row.full, n_sim)
    steps = max(1, round((row.warmup + row.seconds) * row.frame_rate))
    groups: list[list[tuple[str, bool]]]
    if n_full == n_sim:
        count = row.workers or min(MAX_WORKERS, math.ceil(n_sim / NODES_PER_WORKER))
        groups = [[(n, True) for n in names[i::count]] for i in range(count)]
    else:
        count = max(1, row.workers - 1) if row.workers else min(
            MAX_WORKERS, math.ceil((n_sim - n_full) / NODES_PER_WORKER)
        )  # fmt: skip
        light = names[n_full:]
        groups = [[(n, True) for n in names[:n_full]]]
        groups += [[(n, False) for n in light[i::count]] for i in range(count)]
    groups = [g for g in groups if g]
    return [
        _WorkerSpec(
            index=i,
            port=port,
            manifest=manifest,
            names=tuple(n for n, _ in g),
            full=tuple(f for _, f in g),
            steps=steps,
            frame_rate=row.frame_rate,
            connect_every=len(groups) / CONNECT_PER_S,
            seed=1000 * i,
        )
        for i, g in enumerate(groups)
    ]


# == the relay and real nodes =======================================================================


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "seedswarm.daemon.cli", *args],
            stdout=out, stderr=out, env=_env(), start_new_session=True,
        )  # fmt: skip


def _get(url: str, timeout: float = 10.0) -> dict[str, Any] | None:
    with (
        contextlib.suppress(OSError, ValueError),
        urllib.request.urlopen(url, timeout=timeout) as r,
    ):
        data: dict[str, Any] = json.loads(r.read())
        return data
    return None


def _end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(slots=True)
class _Real:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path


# == one row ========================================================================================


def _row(row: LoadRow, manifest: str) -> LoadResult:
    import uvloop

    from .broker import free_port

    port = free_port()
    with (
        tempfile.TemporaryDirectory(prefix="bench-load-") as tmp,
        mosquitto(port, extra=("max_connections -1",)) as broker,
    ):
        return uvloop.run(_run_row(row, manifest, port, broker.pid, Path(tmp)))


async def _run_row(row: LoadRow, manifest: str, port: int, broker: int, tmp: Path) -> LoadResult:
    series = _SysSeries(port)
    async with asyncio.TaskGroup() as tg:
        monitor = tg.create_task(series.run(), name="sys-monitor")
        try:
            return await _run_nodes(row, manifest, port, broker, tmp, series)
        finally:
            monitor.cancel()


async def _run_nodes(
    row: LoadRow, manifest: str, port: int, broker: int, tmp: Path, series: _SysSeries
) -> LoadResult:
    from .broker import free_port

    procs: list[subprocess.Popen[bytes]] = []
    reals: list[_Real] = []
    workers: _Workers | None = None
    try:
        manifest_path = tmp / "manifest.json"
        manifest_path.write_text(manifest)
        relay_url = ""
        if row.relay:
            http = free_port()
            relay_url = f"http://127.0.0.1:{http}"
            procs.append(
                _spawn(
                    [
                        "relay", "--relay", RELAY, "--manifest", str(manifest_path),
                        "--data-dir", str(tmp / "relay"), "--http", f"127.0.0.1:{http}",
                        "--broker", f"mqtt://127.0.0.1:{port}",
                        "--interval", str(row.relay_interval),
                    ],
                    tmp / "relay.log",
                )
            )  # fmt: skip
            healthz = functools.partial(_get, relay_url + "/healthz", 2)
            await _until(lambda: healthz() is not None, 120, "the relay", tmp)
        n_sim = row.nodes - row.real
        names = [f"s{i:04d}" for i in range(n_sim)]
        specs = _plan_workers(row, names, port, manifest)
        steps = specs[0].steps
        workers = _Workers(specs)

        def listening() -> bool:
            assert workers is not None
            return workers.total("connected") >= n_sim and (
                not row.relay or workers.total("via_relay") >= n_sim
            )

        await workers.wait(
            listening,
            time.monotonic() + 120 + CONNECT_PATIENCE_S * n_sim,
            progress=lambda: _join_progress(workers, n_sim, row.relay, broker),
        )
        connected, via_relay = workers.total("connected"), workers.total("via_relay")
        for i in range(row.real):
            reals.append(_start_real(f"n{i}", i, row, steps, port, manifest_path, tmp))
            procs.append(reals[-1].proc)
        for r in reals:
            await _until(functools.partial(_ready, r, row.relay), 300, f"real node {r.name}", tmp)

        origin = time.monotonic() + 1.0
        workers.send("begin", origin)
        w0, w1 = origin + row.warmup, origin + row.warmup + row.seconds
        await asyncio.sleep(max(0.0, w0 - time.monotonic()))
        at0 = await _snapshot(broker, workers, procs, reals, row.relay)
        await asyncio.sleep(max(0.0, w1 - time.monotonic()))
        at1 = await _snapshot(broker, workers, procs, reals, row.relay)

        expect_others = (n_sim - 1) * steps + row.real * steps
        deadline = max(origin + (steps + 1) / row.frame_rate, time.monotonic()) + row.drain

        def complete() -> bool:
            assert workers is not None
            full = workers.full_delivered()
            return (
                workers.total("produced") >= n_sim * steps
                and bool(full)
                and min(full) >= expect_others
            )

        done = await workers.wait(complete, deadline)
        while done and reals:
            if all(await asyncio.gather(*(_holds(r, names, reals, steps) for r in reals))):
                break
            if time.monotonic() > deadline:
                done = False
                break
            await asyncio.sleep(2.0)
        completed_at = time.monotonic() if done else None
        real_status = [await asyncio.to_thread(_get, r.url + "/status?fresh=1", 60) for r in reals]
        relay_stats = await asyncio.to_thread(_get, relay_url + "/status") if relay_url else None
        results = await workers.stop(120.0)
        return _result(
            row, specs, results, series, at0, at1, w0, w1,
            connected=connected, via_relay=via_relay, completed_at=completed_at,
            real_status=real_status, reals=reals, relay_stats=relay_stats,
        )  # fmt: skip
    finally:
        if workers is not None:
            workers.close()
        for p in procs:
            _end(p)


def _join_progress(workers: _Workers, n_sim: int, relay: bool, broker: int) -> None:
    """One line while the nodes join: how many connected (and listen to the relay), how many
    connections that took, and the CPU the broker and the workers used so far."""
    say(
        f"  joining: {workers.total('connected')}/{n_sim} connected"
        + (f", {workers.total('via_relay')} via relay" if relay else "")
        + f", {workers.total('connects')} connections;"
        f" CPU s: broker {_cpu_seconds(broker):.0f},"
        f" workers {workers.cpu_seconds():.0f}"
    )


async def _until(pred: Callable[[], bool], patience: float, what: str, tmp: Path) -> None:
    deadline = time.monotonic() + patience
    while not await asyncio.to_thread(pred):
        if time.monotonic() > deadline:
            tail = await asyncio.to_thread(_logs_tail, tmp)
            raise ConfigError(f"bench load: {what} did not come up in {patience:.0f} s\n{tail}")
        await asyncio.sleep(0.5)


def _logs_tail(tmp: Path) -> str:
    return "\n".join(
        f"{p.name}: {p.read_text(errors='replace')[-1500:]}" for p in tmp.glob("*.log")
    )


def _start_real(
    name: str, i: int, row: LoadRow, steps: int, port: int, manifest: Path, tmp: Path
) -> _Real:
    from .broker import free_port

    http = free_port()
    log = tmp / f"{name}.log"
    proc = _spawn(
        [
            "node", "--node", name, "--manifest", str(manifest), "--data-dir", str(tmp / name),
            "--http", f"127.0.0.1:{http}", "--broker", f"mqtt://127.0.0.1:{port}",
            "--steps", str(steps), "--step-interval", str(1.0 / row.frame_rate),
            "--max-latency", "0", "--frame-records", "1", "--torch-threads", "1",
            "--shard", f"{i}/{row.real}", "--join-wait", "0.5",
        ],
        log,
    )  # fmt: skip
    return _Real(name, proc, f"http://127.0.0.1:{http}", log)


def _ready(r: _Real, relay: bool) -> bool:
    if r.proc.poll() is not None:
        raise ConfigError(
            f"bench load: real node {r.name} exited:\n{r.log.read_text(errors='replace')[-2000:]}"
        )
    st = _get(r.url + "/status", 5)
    return st is not None and bool(st["ready"]) and (not relay or st["relays"] == [RELAY])


async def _holds(r: _Real, names: list[str], reals: list[_Real], steps: int) -> bool:
    st = await asyncio.to_thread(_get, r.url + "/status", 30)
    if st is None:
        return False
    vv = st["version_vector"]
    return all(vv.get(n, 0) >= steps for n in [*names, *(x.name for x in reals)])


@dataclass(frozen=True, slots=True)
class _Snap:
    at: float
    cpu: dict[str, float]  # broker, sims, relay, real
    jiffies: tuple[int, int]
    load: float
    messages_in: tuple[float, int]  # the workers' last report: (when, messages received)
    real_own: int


async def _snapshot(
    broker: int,
    workers: _Workers,
    procs: list[subprocess.Popen[bytes]],
    reals: list[_Real],
    relay: bool,
) -> _Snap:
    real_pids = {r.proc.pid for r in reals}
    others = [p.pid for p in procs if p.pid not in real_pids]
    cpu = {
        "broker": _cpu_seconds(broker),
        "sims": workers.cpu_seconds(),
        "relay": sum(_cpu_seconds(p) for p in others) if relay else 0.0,
        "real": sum(_cpu_seconds(p) for p in real_pids),
    }
    at = time.monotonic()
    jiffies, load = _machine_jiffies(), os.getloadavg()[0]
    own = 0
    for r in reals:
        st = await asyncio.to_thread(_get, r.url + "/status", 30)
        own += int(st["version_vector"].get(r.name, 0)) if st else 0
    last = workers.history[-1] if workers.history else (at, 0)
    return _Snap(at, cpu, jiffies, load, last, own)


# == the figures ====================================================================================


def _percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def _result(
    row: LoadRow,
    specs: list[_WorkerSpec],
    results: dict[int, dict[str, Any]],
    series: _SysSeries,
    at0: _Snap,
    at1: _Snap,
    w0: float,
    w1: float,
    *,
    connected: int,
    via_relay: int,
    completed_at: float | None,
    real_status: list[dict[str, Any] | None],
    reals: list[_Real],
    relay_stats: dict[str, Any] | None,
) -> LoadResult:
    n, rate = row.nodes, row.frame_rate
    n_sim = n - row.real
    window = at1.at - at0.at
    whole = all(results.get(s.index) for s in specs)
    parts = [res for res in results.values() if res]
    sent = {k: t for res in parts for k, t in res["sent"].items()}
    own = {k: c for res in parts for k, c in res["own"].items()}
    origins = {k: t for res in parts for k, t in res["origins"].items()}
    vvs = {
        real.name: st["version_vector"] for real, st in zip(reals, real_status, strict=True) if st
    }
    for real in reals:
        own[real.name] = int(vvs.get(real.name, {}).get(real.name, 0))
    in_window = [(k, t) for k, t in sent.items() if w0 <= t < w1]
    records = len(in_window) + at1.real_own - at0.real_own
    late = [t - (origins[x] + (seq + 1) / rate) for (x, seq), t in in_window if x in origins]
    # from the moment the last record was due to every node holding every record
    last_due = max(origins.values(), default=w1) + max(own.values(), default=0) / rate
    complete_after = None if completed_at is None else completed_at - last_due
    lags: list[float] = []
    for res in parts:
        ids, nodes, seqs, ats = res["receipts"]
        for i, seq, got in zip(nodes, seqs, ats, strict=True):
            t = sent.get((ids[i], seq))
            if t is not None and w0 <= t < w1:
                lags.append(got - t)
    # what each full simulated node and each real node lacks of what the others wrote
    holders = {me: held for res in parts for me, held in res["held"].items()} | vvs
    lost = (
        sum(
            max(0, c - held.get(x, 0))
            for me, held in holders.items()
            for x, c in own.items()
            if x != me
        )
        if whole and len(vvs) == len(reals)
        else None
    )
    agree: bool | None = None
    if reals:
        prints = {st["fingerprint"] for st in real_status if st is not None}
        same = {json.dumps(vv, sort_keys=True) for vv in vvs.values()}
        agree = len(vvs) == len(reals) and len(prints) == 1 and len(same) == 1
    seconds, grew = series.between(w0, w1)
    _, overall = series.between(-math.inf, math.inf)
    per_s = {k: v / seconds if seconds else 0.0 for k, v in grew.items()}
    busy = (at1.jiffies[0] - at0.jiffies[0]) / max(1, at1.jiffies[1] - at0.jiffies[1])
    (m0t, m0), (m1t, m1) = at0.messages_in, at1.messages_in

    def pct(key: str) -> float:
        return 100.0 * (at1.cpu[key] - at0.cpu[key]) / window

    lag50, lag99 = _percentile(lags, 0.50), _percentile(lags, 0.99)
    kept = len(in_window) / (n_sim * row.seconds * rate)
    reasons = []
    if lag99 is None or lag99 > LAG_LIMIT_S:
        reasons.append("lag p99 > 5 s" if lag99 is not None else "no records received")
    if lost is None or lost > 0:
        reasons.append(f"{lost} records lost" if lost is not None else "results incomplete")
    if kept < KEPT_MIN:
        reasons.append(f"rate kept {100 * kept:.0f}%")
    if connected < n_sim or (row.relay and via_relay < n_sim):
        reasons.append(
            f"{connected}/{n_sim} connected" + (f", {via_relay} via relay" if row.relay else "")
        )
    if agree is False:
        reasons.append("real nodes disagree")
    stats = None
    if relay_stats is not None:
        stats = {
            k: relay_stats.get(k)
            for k in ("frames_forwarded", "presences_forwarded", "bundles_published",
                      "bytes_forwarded", "dropped_overflow", "dropped")
        }  # fmt: skip
    return LoadResult(
        nodes=n, relay=row.relay, real=row.real, full=sum(sum(s.full) for s in specs),
        workers=len(specs), connected=connected, via_relay=via_relay,
        seconds=round(window, 2), load_avg=(at0.load, at1.load),
        machine_cpu_pct=100.0 * busy, records=records, kept=kept,
        late_p99=_percentile(late, 0.99),
        deliveries_per_s=per_s["publish/messages/sent"],
        deliveries_per_node_frame=per_s["publish/messages/sent"] / (n * rate),
        publishes_in_per_s=per_s["publish/messages/received"],
        client_messages_per_s=(m1 - m0) / (m1t - m0t) if m1t > m0t else 0.0,
        broker_dropped=overall["publish/messages/dropped"],
        broker_cpu_pct=pct("broker"), sims_cpu_pct=pct("sims"),
        relay_cpu_pct=pct("relay") if row.relay else None,
        bytes_in_per_record=per_s["bytes/received"] * window / records if records else 0.0,
        bytes_out_per_delivery=(
            per_s["bytes/sent"] * window / (records * (n - 1)) if records else 0.0
        ),
        lag_p50=lag50, lag_p99=lag99, lag_max=max(lags) if lags else None,
        lag_samples=len(lags), lost=lost, complete_after_s=complete_after,
        real_agree=agree, relay_stats=stats, saturated=reasons,
    )  # fmt: skip


def print_load(result: dict[str, Any]) -> str:
    from .console import table

    def s(x: float | None, fmt: str = ".2f") -> str:
        return "-" if x is None else format(x, fmt)

    rows = [
        [
            r["nodes"],
            "on" if r["relay"] else "off",
            f"{r['connected']}" + (f"/{r['via_relay']}" if r["relay"] else ""),
            f"{r['deliveries_per_s']:.0f}",
            f"{r['deliveries_per_node_frame']:.2f}",
            f"{r['broker_cpu_pct']:.0f}",
            f"{r['sims_cpu_pct']:.0f}",
            f"{r['bytes_in_per_record']:.0f}",
            f"{r['bytes_out_per_delivery']:.1f}",
            s(r["lag_p50"]),
            s(r["lag_p99"]),
            "-" if r["lost"] is None else r["lost"],
            f"{100 * r['kept']:.0f}",
            f"{r['load_avg'][0]:.1f}/{r['load_avg'][1]:.1f}",
            "; ".join(r["saturated"]) or "ok",
        ]
        for r in result["rows"]
    ]
    return table(
        [
            "N", "relay", "connected", "deliveries/s", "per node·frame", "broker %CPU",
            "sims %CPU", "B in/rec", "B out/delivery", "lag p50 s", "lag p99 s", "lost",
            "kept %", "load", "saturated",
        ],
        rows,
    )  # fmt: skip
