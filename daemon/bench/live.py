"""``seedswarm bench live``: every byte of a live swarm, per record, through a real Mosquitto.

Each row runs a swarm on a fresh broker until every node took its steps and every record
reached every node, and counts what crossed the wire in both directions, control traffic
included (presence, wants, acknowledgements, pings, CONNECT, SUBSCRIBE):

  * ``up`` per own record: what the broker received from the nodes, by the broker's own counter
    (``$SYS/broker/bytes/received``, over the whole row, less what the counter's own client
    sent), and on the nodes' TCP connections as the kernel counts them (``ss``: payload bytes,
    and IP bytes = payload + 52 per segment: a 20-byte IPv4 header and a 32-byte TCP header with
    timestamps, as loopback carries them);
  * ``down`` per record delivered: what the broker sent to the nodes (TCP, as above), divided by
    the records the nodes received from their peers.

Rows: real ``seedswarm node`` processes (the tiny model; a step interval stands in for slower
models: the wire does not care how long a step took) and, for larger swarms, simulated nodes
(loadgen.py: the real session and transport, no model). The kernel's TCP counters are read
just before the nodes say goodbye, so they miss the last presence and DISCONNECT; ``$SYS``
does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from seedswarm.daemon.console import table
from seedswarm.daemon.errors import ConfigError
from seedswarm.daemon.status.schema import NodeStatus

from .settings import BenchSettings

IP_OVERHEAD = 52  # bytes per segment on loopback: IPv4 (20) + TCP with timestamps (32)


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    nodes: int
    simulated: bool
    steps_per_s: float  # per node
    max_latency: float
    steps: int  # per node
    signed: bool = False


@dataclass(frozen=True, slots=True)
class Result:
    row: str
    nodes: int
    simulated: bool
    steps_per_s: float
    max_latency: float
    signed: bool
    seconds: float
    produced: int
    delivered: int
    up_sys: float | None  # bytes per own record, $SYS
    up_tcp: float
    up_ip: float
    down_tcp: float  # bytes per record delivered
    down_ip: float
    frames_up: float  # frame payload bytes per own record (nodes' own figure), real rows


DEFAULT_ROWS = (
    Row("quickstart rate", 3, False, 0.0, 5.0, 600),
    Row("2 steps/s", 3, False, 2.0, 5.0, 80),
    Row("1 step per 2 s", 3, False, 0.5, 10.0, 30),
    Row("quickstart rate", 100, True, 40.0, 5.0, 600),
    Row("2 steps/s", 100, True, 2.0, 5.0, 80),
    Row("1 step per 2 s", 100, True, 0.5, 10.0, 30),
)


def parse_rows(text: str, scale: float) -> list[Row]:
    """``--rows all`` or names such as ``3x40,100x2`` (nodes x steps/s; ``0``: unthrottled)."""
    if text == "all":
        rows = list(DEFAULT_ROWS)
    else:
        rows = []
        for item in filter(None, (t.strip() for t in text.split(","))):
            m = re.fullmatch(r"(\d+)x([0-9.]+)(s?)", item)
            if m is None:
                raise ConfigError(f"--rows {item!r}: write NODESxRATE, e.g. 3x40 or 100x2")
            n, rate = int(m.group(1)), float(m.group(2))
            latency = 10.0 if 0 < rate < 1 else 5.0
            steps = int(max(20, (60 if rate == 0 else 40 * rate) * 15))
            rows.append(Row(item, n, n > 3 or bool(m.group(3)), rate, latency, steps))
    return [
        Row(
            r.name, r.nodes, r.simulated, r.steps_per_s, r.max_latency, max(5, int(r.steps * scale))
        )
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class LiveResult:
    rows: tuple[Result, ...]

    def to_json(self) -> dict[str, Any]:
        return {"rows": [asdict(r) for r in self.rows], "ip_overhead_per_segment": IP_OVERHEAD}


def bench_live(s: BenchSettings) -> LiveResult:
    rows = parse_rows(s.rows, s.scale)
    results = []
    for row in rows:
        for signed in (False, True) if s.signed else (False,):
            r = Row(
                row.name,
                row.nodes,
                row.simulated,
                row.steps_per_s,
                row.max_latency,
                row.steps,
                signed,
            )
            results.append(_run_row(r))
    return LiveResult(tuple(results))


# == one row ========================================================================================


def _run_row(row: Row) -> Result:
    from seedswarm.daemon.launch.broker import free_port
    from seedswarm.daemon.launch.mosquitto import mosquitto

    port = free_port()
    with mosquitto(port):
        return _run_on(row, port)


def _run_on(row: Row, port: int) -> Result:
    import uvloop

    sys_bytes = _SysBytes(port)
    before = uvloop.run(sys_bytes.read())
    t0 = time.monotonic()
    if row.simulated:
        produced, delivered, tcp, frames_up = uvloop.run(_sim_row(row, port))
    else:
        produced, delivered, tcp, frames_up = _real_row(row, port)
    seconds = time.monotonic() - t0
    after = uvloop.run(sys_bytes.read())
    up_sys = (after - before - sys_bytes.own_up) / produced if produced else None
    rx, tx, segs_in, segs_out = tcp
    return Result(
        row=row.name,
        nodes=row.nodes,
        simulated=row.simulated,
        steps_per_s=row.steps_per_s,
        max_latency=row.max_latency,
        signed=row.signed,
        seconds=round(seconds, 1),
        produced=produced,
        delivered=delivered,
        up_sys=up_sys,
        up_tcp=rx / produced if produced else 0.0,
        up_ip=(rx + IP_OVERHEAD * segs_in) / produced if produced else 0.0,
        down_tcp=tx / delivered if delivered else 0.0,
        down_ip=(tx + IP_OVERHEAD * segs_out) / delivered if delivered else 0.0,
        frames_up=frames_up,
    )


def tcp_counts(port: int, exclude: set[int] = frozenset()) -> tuple[int, int, int, int]:  # type: ignore[assignment]
    """(bytes received, bytes sent, segments in, segments out) of the broker's established
    connections on ``port``, as the kernel counts them (``ss -ti``)."""
    exe = shutil.which("ss") or "/usr/bin/ss"
    out = subprocess.run(
        [exe, "-tinH", "state", "established", f"( sport = :{port} )"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    rx = tx = si = so = 0
    peer = 0
    for line in out.splitlines():
        if not line.startswith(("\t", " ")):
            m = re.search(r":(\d+)\s*$", line.strip())
            peer = int(m.group(1)) if m else 0
            continue
        if peer in exclude:
            continue
        got = dict(re.findall(r"\b(bytes_received|bytes_acked|segs_in|segs_out):(\d+)", line))
        rx += int(got.get("bytes_received", 0))
        tx += int(got.get("bytes_acked", 0))
        si += int(got.get("segs_in", 0))
        so += int(got.get("segs_out", 0))
    return rx, tx, si, so


class _SysBytes:
    """$SYS/broker/bytes/received, read by a short-lived client that waits for a fresh value
    (Mosquitto refreshes $SYS every 2 s with ``sys_interval 1``; three uptime ticks after the
    subscription the counter is current). ``own_up``: what this client itself sends per read."""

    BYTES = "$SYS/broker/bytes/received"
    TICK = "$SYS/broker/uptime"

    def __init__(self, port: int) -> None:
        self.port = port
        self.own_up = 0

    async def read(self) -> int:
        import aiomqtt

        value: int | None = None
        ticks = 0
        async with aiomqtt.Client(
            "127.0.0.1", self.port, identifier=f"live-sys-{time.time_ns()}"
        ) as c:
            await c.subscribe([(self.BYTES, 0), (self.TICK, 0)])
            async with asyncio.timeout(60):
                async for m in c.messages:
                    if m.retain:
                        continue
                    if m.topic.matches(self.TICK):
                        ticks += 1
                    elif isinstance(m.payload, bytes):
                        value = int(m.payload)
                    if ticks >= 3 and value is not None:
                        break
        # CONNECT (~40 B) + SUBSCRIBE (~60 B) + DISCONNECT (2 B) of this client, counted too
        self.own_up += 102
        assert value is not None
        return value


# == real nodes =====================================================================================


def _real_row(row: Row, port: int) -> tuple[int, int, tuple[int, int, int, int], float]:
    from seedswarm.daemon.launch.broker import free_port

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        names = [f"n{i}" for i in range(row.nodes)]
        procs: list[tuple[str, subprocess.Popen[bytes], int]] = []
        keys: list[str] = []
        if row.signed:
            keys = _keys(base, names)
        try:
            for i, name in enumerate(names):
                http = free_port()
                args = [
                    sys.executable, "-m", "seedswarm.daemon.cli", "node", "--node", name,
                    "--data-dir", str(base / name), "--http", f"127.0.0.1:{http}",
                    "--broker", f"mqtt://127.0.0.1:{port}", "--steps", str(row.steps),
                    "--shard", f"{i}/{row.nodes}", "--torch-threads", "1",
                    "--max-latency", str(row.max_latency),
                    "--step-interval", str(1 / row.steps_per_s if row.steps_per_s else 0),
                    "--join-wait", "2",
                ]  # fmt: skip
                if row.signed:
                    args += ["--keys", keys[0], "--key-file", str(base / f"{name}.key")]
                log = (base / f"{name}.log").open("wb")
                proc = subprocess.Popen(
                    args, stdout=log, stderr=log, env=_env(), start_new_session=True
                )
                log.close()
                procs.append((name, proc, http))
            expect = dict.fromkeys(names, row.steps)
            deadline = (
                time.monotonic()
                + 60
                + row.steps * (1 / row.steps_per_s if row.steps_per_s else 0.3) * 2
            )
            statuses: list[NodeStatus] = []
            while time.monotonic() < deadline:
                for name, proc, _ in procs:
                    if proc.poll() is not None:
                        tail = (base / f"{name}.log").read_text(errors="replace")[-2000:]
                        raise ConfigError(f"bench live: node {name} exited: {tail}")
                got = [_status(http) for _, _, http in procs]
                statuses = [st for st in got if st is not None]
                if len(statuses) == len(procs) and all(
                    st.version_vector == expect for st in statuses
                ):
                    break
                time.sleep(1.0)
            else:
                raise ConfigError(f"bench live: row {row.name!r} did not converge in time")
            tcp = tcp_counts(port)
            produced = row.steps * row.nodes
            delivered = produced * (row.nodes - 1)
            frame_bytes = sum(st.broker.frame_bytes_published for st in statuses)
            for _, proc, _ in procs:
                proc.send_signal(signal.SIGTERM)
            for _, proc, _ in procs:
                proc.wait(120)
            return produced, delivered, tcp, frame_bytes / produced
        finally:
            for _, proc, _ in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def _keys(base: Path, names: list[str]) -> list[str]:
    from seedswarm.protocol.signing import NodeKey

    pairs = []
    for name in names:
        key = NodeKey.generate()
        (base / f"{name}.key").write_text(key.private_hex())
        pairs.append(f"{name}={key.public_hex()}")
    return [",".join(pairs)]


def _status(http: int) -> NodeStatus | None:
    url = f"http://127.0.0.1:{http}/status"
    with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(url, timeout=10) as r:
        return NodeStatus.from_json(json.loads(r.read()))
    return None


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


# == simulated nodes ================================================================================


async def _sim_row(row: Row, port: int) -> tuple[int, int, tuple[int, int, int, int], float]:
    from seedswarm.daemon.settings import BrokerAddress
    from seedswarm.protocol.manifest import Manifest, TaskSpec
    from seedswarm.protocol.signing import NodeKey

    from .loadgen import Clock, SimNode, SimSettings, run_sims

    names = [f"s{i:04d}" for i in range(row.nodes)]
    keys = {n: NodeKey.generate() for n in names} if row.signed else {}
    manifest = Manifest(
        name=f"live{row.nodes}",
        model="simulated",
        base_hash="0" * 64,
        task=TaskSpec(kind="causal_lm"),
        keys=tuple(sorted((n, k.public_hex()) for n, k in keys.items())),
    )
    settings = SimSettings(rate=row.steps_per_s or 40.0, max_latency=row.max_latency)
    address = BrokerAddress.parse(f"mqtt://127.0.0.1:{port}")
    clock = Clock()
    nodes = [
        SimNode(n, manifest, address, settings, clock=clock, key=keys.get(n), seed=i)
        for i, n in enumerate(names)
    ]
    counts: list[tuple[int, int, int, int]] = []
    complete = await run_sims(
        nodes,
        clock,
        steps=row.steps,
        settle=0.5,
        patience=600,
        before_stop=lambda: counts.append(tcp_counts(port)),
    )
    if not complete:
        raise ConfigError(f"bench live: the simulated row {row.name!r} did not converge")
    tcp = counts[0]
    produced = sum(n.produced for n in nodes)
    delivered = sum(n.delivered for n in nodes)
    frame_bytes = sum(n.transport.statistics().frame_bytes_published for n in nodes)
    return produced, delivered, tcp, frame_bytes / produced if produced else 0.0


def print_live(result: LiveResult) -> str:
    rows = [
        [
            r.row,
            f"{r.nodes}{' sim' if r.simulated else ''}{' signed' if r.signed else ''}",
            "-" if not r.steps_per_s else f"{r.steps_per_s:g}",
            f"{r.max_latency:g}",
            r.produced,
            "-" if r.up_sys is None else f"{r.up_sys:.2f}",
            f"{r.up_tcp:.2f}",
            f"{r.up_ip:.2f}",
            f"{r.down_tcp:.2f}",
            f"{r.down_ip:.2f}",
            f"{r.frames_up:.2f}",
            f"{r.seconds:.0f}",
        ]
        for r in result.rows
    ]
    return "bytes per own record (up) and per record delivered (down), every byte counted\n" + table(
        [
            "row", "nodes", "steps/s", "latency s", "records", "up $SYS", "up TCP", "up IP",
            "down TCP", "down IP", "frames only", "s",
        ],
        rows,
    )  # fmt: skip
