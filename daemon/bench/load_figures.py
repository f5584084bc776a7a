"""The figures of a ``bench load`` row: the broker's ``$SYS`` counters over time, the CPU of
the processes involved, and what a row's measurements add up to (``figures``)."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from seedswarm.daemon.status.schema import NodeStatus

from .load_types import (
    KEPT_MIN,
    LAG_LIMIT_S,
    LoadResult,
    LoadRow,
    RelayStats,
    WorkerResult,
    WorkerSpec,
)

SYS_COUNTERS = (
    "publish/messages/sent",
    "publish/messages/received",
    "publish/messages/dropped",
    "bytes/sent",
    "bytes/received",
)


class SysSeries:
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


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all cores (/proc/stat)."""
    cpu = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = cpu[3] + cpu[4]
    return sum(cpu) - idle, sum(cpu)


@dataclass(frozen=True, slots=True)
class Snap:
    at: float
    cpu: dict[str, float]  # broker, sims, relay, real
    jiffies: tuple[int, int]
    load: float
    messages_in: tuple[float, int]  # the workers' last report: (when, messages received)
    real_own: int


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def figures(
    row: LoadRow,
    specs: list[WorkerSpec],
    results: dict[int, WorkerResult | None],
    series: SysSeries,
    at0: Snap,
    at1: Snap,
    w0: float,
    w1: float,
    *,
    connected: int,
    via_relay: int,
    completed_at: float | None,
    real_status: dict[str, NodeStatus | None],
    relay_stats: RelayStats | None,
) -> LoadResult:
    """A row's figures, from what its workers, the broker's $SYS series, the real nodes and the
    relay reported (the module docstring of load.py says what each is)."""
    n, rate = row.nodes, row.frame_rate
    n_sim = n - row.real
    window = at1.at - at0.at
    whole = all(results.get(s.index) for s in specs)
    parts = [res for res in results.values() if res]
    sent = {k: t for res in parts for k, t in res.sent.items()}
    own = {k: c for res in parts for k, c in res.own.items()}
    origins = {k: t for res in parts for k, t in res.origins.items()}
    vvs = {name: st.version_vector for name, st in real_status.items() if st}
    for name in real_status:
        own[name] = int(vvs.get(name, {}).get(name, 0))
    in_window = [(k, t) for k, t in sent.items() if w0 <= t < w1]
    records = len(in_window) + at1.real_own - at0.real_own
    late = [t - (origins[x] + (seq + 1) / rate) for (x, seq), t in in_window if x in origins]
    # from the moment the last record was due to every node holding every record
    last_due = max(origins.values(), default=w1) + max(own.values(), default=0) / rate
    complete_after = None if completed_at is None else completed_at - last_due
    lags: list[float] = []
    for res in parts:
        r = res.receipts
        ids = list(r.names)
        for i, seq, got in zip(r.node, r.seq, r.at, strict=True):
            t = sent.get((ids[i], seq))
            if t is not None and w0 <= t < w1:
                lags.append(got - t)
    # what each full simulated node and each real node lacks of what the others wrote
    holders = {me: held for res in parts for me, held in res.held.items()} | vvs
    lost = (
        sum(
            max(0, c - held.get(x, 0))
            for me, held in holders.items()
            for x, c in own.items()
            if x != me
        )
        if whole and len(vvs) == len(real_status)
        else None
    )
    agree: bool | None = None
    if real_status:
        prints = {st.fingerprint for st in real_status.values() if st is not None}
        same = {json.dumps(vv, sort_keys=True) for vv in vvs.values()}
        agree = len(vvs) == len(real_status) and len(prints) == 1 and len(same) == 1
    seconds, grew = series.between(w0, w1)
    _, overall = series.between(-math.inf, math.inf)
    per_s = {k: v / seconds if seconds else 0.0 for k, v in grew.items()}
    busy = (at1.jiffies[0] - at0.jiffies[0]) / max(1, at1.jiffies[1] - at0.jiffies[1])
    (m0t, m0), (m1t, m1) = at0.messages_in, at1.messages_in

    def pct(key: str) -> float:
        return 100.0 * (at1.cpu[key] - at0.cpu[key]) / window

    lag50, lag99 = percentile(lags, 0.50), percentile(lags, 0.99)
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
    return LoadResult(
        nodes=n, relay=row.relay, real=row.real, full=sum(sum(s.full) for s in specs),
        workers=len(specs), connected=connected, via_relay=via_relay,
        seconds=round(window, 2), load_avg=(at0.load, at1.load),
        machine_cpu_pct=100.0 * busy, records=records, kept=kept,
        late_p99=percentile(late, 0.99),
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
        real_agree=agree, relay_stats=relay_stats, saturated=tuple(reasons),
    )  # fmt: skip
