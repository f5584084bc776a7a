"""The worker processes of ``bench load``: simulated nodes (loadgen.py), many per process, each
process on its own uvloop, driven over a pipe by the bench (``Workers``).

The bench says ``begin`` (with the schedule's origin) and ``stop``; a worker reports a
``WorkerStatus`` every second and, once stopped, a ``WorkerResult`` (what its nodes sent and
received, and when), or its traceback if it failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import random
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from seedswarm.daemon.errors import ConfigError
from seedswarm.daemon.settings import BrokerAddress

from .load_figures import cpu_seconds
from .load_types import LoadRow, WorkerResult, WorkerSpec, WorkerStatus
from .loadgen import Clock, Receipts, SimNode, SimSettings

CONNECT_PER_S = 50.0  # new MQTT connections per second at most, all workers together
BUSY_CPU = 0.6  # ... and a worker connects its next node only while it is less busy than this
PROGRESS_EVERY_S = 15.0  # how often the bench says how far the nodes got while they join
NODES_PER_WORKER = 300  # light nodes per worker process (at most MAX_WORKERS of them)
MAX_WORKERS = 4


def worker_main(conn: Connection, spec: WorkerSpec) -> None:
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


async def _worker(conn: Connection, spec: WorkerSpec) -> None:
    """Run ``spec.names`` as simulated nodes: connect them, begin their records when told,
    report every second, and when told to stop, send back what they saw."""
    from seedswarm.protocol.manifest import Manifest

    from .loadgen import SimNode

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
    result = WorkerResult(
        sent=clock.published,
        receipts=r,
        own={n.name: n.session.log.next_seq(n.name) for n in nodes},
        held={n.name: n.session.log.held() for n in nodes if n.s.full},
        origins=origins,
        status=_worker_status(nodes),
    )
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


def _worker_status(nodes: list[SimNode]) -> WorkerStatus:
    stats = [n.transport.statistics() for n in nodes]
    return WorkerStatus(
        at=time.monotonic(),
        connected=sum(t.connected for t in stats),
        connects=sum(t.connects for t in stats),
        via_relay=sum(n.via_relay for n in nodes),
        produced=sum(n.produced for n in nodes),
        messages_in=sum(t.messages_received for t in stats),
        full_delivered=tuple(n.delivered for n in nodes if n.s.full),
    )


class Workers:
    """The worker processes of a row, and what they last said."""

    def __init__(self, specs: list[WorkerSpec]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.status: dict[int, WorkerStatus] = {}
        self.history: list[tuple[float, int]] = []  # (when, messages the workers received)
        self.results: dict[int, WorkerResult | None] = {}  # None: the worker died without one
        self.errors: list[str] = []
        self._conns: dict[int, Connection] = {}
        self.procs: list[Any] = []
        self._changed = asyncio.Event()
        loop = asyncio.get_running_loop()
        for spec in specs:
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(theirs, spec), daemon=True)
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
                    total = sum(s.messages_in for s in self.status.values())
                    self.history.append((body.at, total))
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
                self.results[index] = None
        self._changed.set()

    def cpu_seconds(self) -> float:
        """utime + stime of the worker processes so far."""
        return sum(cpu_seconds(p.pid) for p in self.procs if p.pid)

    def total(self, key: str) -> int:
        """The sum of one count of the workers' last reports (``WorkerStatus`` fields)."""
        return sum(int(getattr(s, key)) for s in self.status.values())

    def full_delivered(self) -> list[int]:
        return [d for s in self.status.values() for d in s.full_delivered]

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

    async def stop(self, patience: float) -> dict[int, WorkerResult | None]:
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


def plan_workers(row: LoadRow, names: list[str], port: int, manifest: str) -> list[WorkerSpec]:
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
        WorkerSpec(
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
