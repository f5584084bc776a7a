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
    full nodes add their vv requests and the answers (content repair, docs/PROTOCOL.md §9:
    one peer every 5 s each, 0.4 at 1 frame/s, and a burst to a peer whose presence changed),
    light ones ask nothing;
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
import os
import resource
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from seedswarm.daemon.console import say, table
from seedswarm.daemon.errors import ConfigError
from seedswarm.daemon.launch.mosquitto import mosquitto

from .load_figures import Snap, SysSeries, cpu_seconds, figures, machine_jiffies
from .load_procs import (
    Real,
    end,
    get_json,
    healthy,
    holds,
    node_status,
    ready,
    spawn,
    start_real,
)
from .load_types import KEPT_MIN, LAG_LIMIT_S, RELAY, RUN, LoadResult, LoadRow, RelayStats
from .load_workers import Workers, plan_workers
from .settings import BenchSettings

CONNECT_PATIENCE_S = 0.5  # seconds per node the bench waits for all to connect and listen


@dataclass(frozen=True, slots=True)
class LoadReport:
    rows: tuple[LoadResult, ...]
    frame_rate: float
    relay_interval: float
    load_avg_start: float  # the 1-minute load average when the report was made

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": [asdict(r) for r in self.rows],
            "frame_rate": self.frame_rate,
            "relay_interval": self.relay_interval,
            "limits": {"lag_p99_s": LAG_LIMIT_S, "kept": KEPT_MIN},
            "load_avg_start": self.load_avg_start,
        }


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


def bench_load(s: BenchSettings) -> LoadReport:
    sizes = parse_nodes(s.nodes)
    arms = {"both": (False, True), "off": (False,), "on": (True,)}[s.relay]
    real, rate = s.real, s.frame_rate
    if real < 0 or s.full < 0 or s.workers < 0:
        raise ConfigError("--real, --full and --workers must not be negative")
    if real >= min(sizes):
        raise ConfigError(f"--real {real}: fewer real nodes than the smallest swarm ({min(sizes)})")
    if rate <= 0 or s.seconds <= 0 or s.warmup < 0 or s.drain < 0:
        raise ConfigError(
            "--frame-rate and --seconds must be positive, --warmup and --drain not negative"
        )
    _raise_fd_limit()
    manifest = _real_manifest() if real else _sim_manifest()
    rows: list[LoadResult] = []
    with _sigterm_unwinds():
        for n in sizes:
            for relay in arms:
                row = LoadRow(
                    nodes=n, relay=relay, real=real, full=s.full, seconds=s.seconds,
                    warmup=s.warmup, frame_rate=rate, drain=s.drain,
                    relay_interval=s.relay_interval, workers=s.workers,
                )  # fmt: skip
                rows.append(_row(row, manifest))
                say(_table(rows[-1:]).splitlines()[-1])  # each row as it is done
    return LoadReport(tuple(rows), rate, s.relay_interval, os.getloadavg()[0])


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

    m = Manifest(
        name=RUN, model="simulated", base_hash="0" * 64, task=TaskSpec(kind="causal_lm"),
        relays=(RELAY,),
    )  # fmt: skip
    return m.to_json()


def _real_manifest() -> str:
    """The manifest of a run of the tiny model, as ``seedswarm node --run-name load`` builds it
    (real nodes and simulated ones meet in it)."""
    from seedswarm.daemon.node.startup import open_engine, plan_run
    from seedswarm.daemon.settings import RunSettings

    run = RunSettings(name=RUN, model="tiny", relays=RELAY)
    engine = open_engine(plan_run(run), run, device="cpu", kernel="auto")
    return engine.manifest.to_json()


# == one row ========================================================================================


def _row(row: LoadRow, manifest: str) -> LoadResult:
    import uvloop

    from seedswarm.daemon.launch.broker import free_port

    port = free_port()
    with (
        tempfile.TemporaryDirectory(prefix="bench-load-") as tmp,
        mosquitto(port, extra=("max_connections -1",)) as broker,
    ):
        return uvloop.run(_run_row(row, manifest, port, broker.pid, Path(tmp)))


async def _run_row(row: LoadRow, manifest: str, port: int, broker: int, tmp: Path) -> LoadResult:
    series = SysSeries(port)
    async with asyncio.TaskGroup() as tg:
        monitor = tg.create_task(series.run(), name="sys-monitor")
        try:
            return await _run_nodes(row, manifest, port, broker, tmp, series)
        finally:
            monitor.cancel()


async def _run_nodes(
    row: LoadRow, manifest: str, port: int, broker: int, tmp: Path, series: SysSeries
) -> LoadResult:
    from seedswarm.daemon.launch.broker import free_port

    procs: list[subprocess.Popen[bytes]] = []
    reals: list[Real] = []
    workers: Workers | None = None
    try:
        manifest_path = tmp / "manifest.json"
        manifest_path.write_text(manifest)
        relay_url = ""
        if row.relay:
            http = free_port()
            relay_url = f"http://127.0.0.1:{http}"
            procs.append(
                spawn(
                    [
                        "relay", "--relay", RELAY, "--manifest", str(manifest_path),
                        "--data-dir", str(tmp / "relay"), "--http", f"127.0.0.1:{http}",
                        "--broker", f"mqtt://127.0.0.1:{port}",
                        "--interval", str(row.relay_interval),
                    ],
                    tmp / "relay.log",
                )
            )  # fmt: skip
            await _until(functools.partial(healthy, relay_url), 120, "the relay", tmp)
        n_sim = row.nodes - row.real
        names = [f"s{i:04d}" for i in range(n_sim)]
        specs = plan_workers(row, names, port, manifest)
        steps = specs[0].steps
        workers = Workers(specs)

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
            reals.append(start_real(f"n{i}", i, row, steps, port, manifest_path, tmp))
            procs.append(reals[-1].proc)
        for r in reals:
            await _until(functools.partial(ready, r, row.relay), 300, f"real node {r.name}", tmp)

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
            if all(await asyncio.gather(*(holds(r, names, reals, steps) for r in reals))):
                break
            if time.monotonic() > deadline:
                done = False
                break
            await asyncio.sleep(2.0)
        completed_at = time.monotonic() if done else None
        real_status = {
            r.name: await asyncio.to_thread(node_status, r.url + "/status?fresh=1", 60)
            for r in reals
        }
        relay_json = await asyncio.to_thread(get_json, relay_url + "/status") if relay_url else None
        relay_stats = RelayStats.from_json(relay_json) if relay_json is not None else None
        results = await workers.stop(120.0)
        return figures(
            row, specs, results, series, at0, at1, w0, w1,
            connected=connected, via_relay=via_relay, completed_at=completed_at,
            real_status=real_status, relay_stats=relay_stats,
        )  # fmt: skip
    finally:
        if workers is not None:
            workers.close()
        for p in procs:
            end(p)


def _join_progress(workers: Workers, n_sim: int, relay: bool, broker: int) -> None:
    """One line while the nodes join: how many connected (and listen to the relay), how many
    connections that took, and the CPU the broker and the workers used so far."""
    say(
        f"  joining: {workers.total('connected')}/{n_sim} connected"
        + (f", {workers.total('via_relay')} via relay" if relay else "")
        + f", {workers.total('connects')} connections;"
        f" CPU s: broker {cpu_seconds(broker):.0f},"
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


async def _snapshot(
    broker: int,
    workers: Workers,
    procs: list[subprocess.Popen[bytes]],
    reals: list[Real],
    relay: bool,
) -> Snap:
    real_pids = {r.proc.pid for r in reals}
    others = [p.pid for p in procs if p.pid not in real_pids]
    cpu = {
        "broker": cpu_seconds(broker),
        "sims": workers.cpu_seconds(),
        "relay": sum(cpu_seconds(p) for p in others) if relay else 0.0,
        "real": sum(cpu_seconds(p) for p in real_pids),
    }
    at = time.monotonic()
    jiffies, load = machine_jiffies(), os.getloadavg()[0]
    own = 0
    for r in reals:
        st = await asyncio.to_thread(node_status, r.url + "/status", 30)
        own += int(st.version_vector.get(r.name, 0)) if st else 0
    last = workers.history[-1] if workers.history else (at, 0)
    return Snap(at, cpu, jiffies, load, last, own)


# == the report =====================================================================================


def print_load(report: LoadReport) -> str:
    return _table(report.rows)


def _table(results: tuple[LoadResult, ...] | list[LoadResult]) -> str:
    def s(x: float | None, fmt: str = ".2f") -> str:
        return "-" if x is None else format(x, fmt)

    rows = [
        [
            r.nodes,
            "on" if r.relay else "off",
            f"{r.connected}" + (f"/{r.via_relay}" if r.relay else ""),
            f"{r.deliveries_per_s:.0f}",
            f"{r.deliveries_per_node_frame:.2f}",
            f"{r.broker_cpu_pct:.0f}",
            f"{r.sims_cpu_pct:.0f}",
            f"{r.bytes_in_per_record:.0f}",
            f"{r.bytes_out_per_delivery:.1f}",
            s(r.lag_p50),
            s(r.lag_p99),
            "-" if r.lost is None else r.lost,
            f"{100 * r.kept:.0f}",
            f"{r.load_avg[0]:.1f}/{r.load_avg[1]:.1f}",
            "; ".join(r.saturated) or "ok",
        ]
        for r in results
    ]
    return table(
        [
            "N", "relay", "connected", "deliveries/s", "per node·frame", "broker %CPU",
            "sims %CPU", "B in/rec", "B out/delivery", "lag p50 s", "lag p99 s", "lost",
            "kept %", "load", "saturated",
        ],
        rows,
    )  # fmt: skip
