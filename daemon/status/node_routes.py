"""A node's own endpoints, beside the common ones of status/server.py:

    /log       records in the total order (clock, node, seq): ?after=CURSOR&limit=N, or the
               newest N: ?last=N
    /history   the dashboard's curves: own steps and evaluations after ?since=UNIX_TIME
    /metrics   Prometheus text format (prometheus-client, one registry per scrape)
    /          the dashboard (status/dashboard/: a static page that polls the endpoints above,
               this node's and its peers'); its files are under /dashboard/NAME

A page of ``/log`` holds at most ``MAX_LOG_LIMIT`` records, and at most ``HEAVY`` pages (and
scrapes) are built at a time, so viewers cannot starve the node's own tasks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from seedswarm.protocol.log import OrderKey

from .schema import NodeStatus

MAX_LOG_LIMIT = 1000
HEAVY = 2  # /log pages and /metrics built at once; the rest wait their turn

# The dashboard's files (package data in status/dashboard/), served from memory; nothing else
# under /dashboard/ exists. The page's policy lets it run only its own scripts and styles, and
# connect anywhere (its peers' status endpoints).
DASHBOARD = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
    "uPlot.iife.min.js": "text/javascript",
    "uPlot.min.css": "text/css",
    "uPlot.LICENSE": "text/plain",
}
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src *; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True, slots=True)
class LogPage:
    records: list[dict[str, Any]]  # {clock, node, seq, q}
    next: str | None  # the cursor of the next page, None at the end
    total: int


class NodeSource(Protocol):
    """What these endpoints read of a node: its typed status, a page of its log, its curves."""

    async def status(self, *, fresh: bool) -> NodeStatus: ...

    def log_page(self, after: OrderKey | None, limit: int) -> LogPage: ...

    def history(self, since: float) -> dict[str, Any]:
        """Curves for the dashboard: own steps and evaluations after ``since`` (unix time)."""
        ...


class _Collector:
    """Prometheus view of one status snapshot."""

    def __init__(self, st: NodeStatus) -> None:
        self.st = st

    def collect(self) -> Iterator[Any]:
        st = self.st
        me = [st.node]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=["node"])
            g.add_metric(me, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=["node"])
            c.add_metric(me, value)
            return c

        yield counter(
            "seedswarm_steps", "ZO steps taken by this node (this session)", st.steps.this_session
        )
        if st.steps.examples is not None:
            yield gauge(
                "seedswarm_step_examples",
                "examples the last own step drew, or the next will (grows with --batch-growth)",
                st.steps.examples,
            )
        yield gauge(
            "seedswarm_records_applied", "records applied to the local model", st.records.applied
        )
        yield gauge("seedswarm_records_held", "records in the durable log", st.records.held)
        yield counter("seedswarm_duplicates", "duplicate records received", st.duplicates)
        yield gauge(
            "seedswarm_broker_connected",
            "1 while connected to the broker",
            1.0 if st.broker.state == "connected" else 0.0,
        )
        yield counter(
            "seedswarm_bytes_published",
            "payload bytes acknowledged by the broker",
            st.broker.bytes_published,
        )
        yield counter(
            "seedswarm_records_published",
            "records acknowledged by the broker",
            st.broker.records_published,
        )
        yield gauge("seedswarm_outbox", "messages waiting for the broker", st.broker.outbox)
        if st.headroom_bits is not None and st.headroom_records is not None:
            yield gauge(
                "seedswarm_headroom_bits",
                "doublings the state can still take before its exact range ends",
                st.headroom_bits,
            )
            yield gauge(
                "seedswarm_headroom_records",
                "records of the largest update the state can still take, at least",
                float(st.headroom_records),
            )
        yield gauge("seedswarm_peers", "peers seen", len(st.peers))
        if st.loss.recent is not None:
            yield gauge("seedswarm_loss", "mean loss over the last steps", st.loss.recent)
        if st.eval is not None:
            yield gauge("seedswarm_eval_loss", "held-out loss at the last evaluation", st.eval.loss)
            yield gauge(
                "seedswarm_eval_records", "records applied at the last evaluation", st.eval.records
            )
            if st.eval.accuracy is not None:
                yield gauge(
                    "seedswarm_eval_accuracy",
                    "held-out accuracy at the last evaluation",
                    st.eval.accuracy,
                )
        dropped = CounterMetricFamily(
            "seedswarm_dropped",
            "input dropped, by reason and sender",
            labels=["node", "reason", "sender"],
        )
        for reason, per_sender in sorted(st.dropped.items()):
            for sender, count in sorted(per_sender.items()):
                dropped.add_metric([st.node, reason, sender], count)
        yield dropped


class NodeRoutes:
    """The handlers of a node's own endpoints; ``routes()`` for the StatusServer."""

    def __init__(self, source: NodeSource) -> None:
        self.source = source
        self._heavy = asyncio.Semaphore(HEAVY)
        self._assets = _load_dashboard()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.dashboard),
            web.get("/dashboard/{name}", self.dashboard),
            web.get("/log", self.log),
            web.get("/history", self.history),
            web.get("/metrics", self.metrics),
        ]

    async def dashboard(self, request: web.Request) -> web.Response:
        name = request.match_info.get("name", "index.html")
        if name not in self._assets:
            raise web.HTTPNotFound()
        headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        if name == "index.html":
            headers["Content-Security-Policy"] = PAGE_POLICY
        return web.Response(
            body=self._assets[name], content_type=DASHBOARD[name], charset="utf-8", headers=headers
        )

    async def log(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "100"))
            after = parse_cursor(request.query.get("after", ""))
            last = int(request.query.get("last", "0"))
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        async with self._heavy:
            if last > 0:
                page = newest(self.source, min(last, MAX_LOG_LIMIT))
            else:
                page = self.source.log_page(after, max(1, min(limit, MAX_LOG_LIMIT)))
            body = {"records": page.records, "next": page.next, "total": page.total}
            await asyncio.sleep(0)  # let the node's own tasks run between two pages
        return web.json_response(body)

    async def history(self, request: web.Request) -> web.Response:
        try:
            since = float(request.query.get("since", "0"))
        except ValueError:
            return web.json_response({"error": "since must be a unix time"}, status=400)
        async with self._heavy:
            body = self.source.history(since)
        return web.json_response(body)

    async def metrics(self, request: web.Request) -> web.Response:
        async with self._heavy:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Collector(await self.source.status(fresh=False)))
            body = generate_latest(registry)
        return web.Response(body=body, content_type="text/plain", charset="utf-8")


def newest(source: NodeSource, n: int) -> LogPage:
    """The last ``n`` records of the total order (``next`` is None: nothing follows them).

    The log pages forward only, but the cursor ``(c, "", -1)`` starts at the first record of
    clock ``c`` (node names are not empty), and clocks never decrease along a node's seqs, so
    the clock after which fewer than ``n`` records follow is found by bisection: some forty
    pages of ``n`` records for a clock of a million, whatever the length of the log.
    """

    def count_from(clock: int) -> int:
        return len(source.log_page((clock, "", -1), n).records)

    if count_from(0) < n:
        return source.log_page(None, n)  # n or fewer in all
    lo, hi = 0, 1  # invariant: at least n records from clock lo on, fewer from hi on
    while count_from(hi) >= n:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count_from(mid) >= n else (lo, mid)
    tail = source.log_page((hi, "", -1), n)
    # the rest are the last ones of clock lo (one frame per node and clock: a few pages at most)
    at_lo: list[dict[str, Any]] = []
    after: OrderKey | None = (lo, "", -1)
    while after is not None:
        page = source.log_page(after, MAX_LOG_LIMIT)
        same = [r for r in page.records if r["clock"] == lo]
        at_lo = (at_lo + same)[-(n - len(tail.records)) :]
        after = parse_cursor(page.next or "") if len(same) == len(page.records) else None
    return LogPage(at_lo + tail.records, None, tail.total)


def _load_dashboard() -> dict[str, bytes]:
    root = resources.files("seedswarm.daemon.status").joinpath("dashboard")
    return {name: root.joinpath(name).read_bytes() for name in DASHBOARD}


def parse_cursor(text: str) -> tuple[int, str, int] | None:
    """A /log cursor ``clock:node:seq`` (as returned in ``next``); empty means the start."""
    if not text:
        return None
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError("after must be clock:node:seq, as returned in 'next'")
    return int(parts[0]), parts[1], int(parts[2])
