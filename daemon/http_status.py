"""The node's HTTP endpoint (aiohttp, in the daemon's event loop).

    /healthz   200 while the process runs
    /readyz    200 once started, connected to the broker and joined; 503 otherwise
    /status    JSON (status.NodeStatus): identity, version vector and fingerprint, progress,
               peers, broker, drops
    /log       records in the total order (clock, node, seq): ?after=CURSOR&limit=N, or the
               newest N: ?last=N
    /history   the dashboard's curves: own steps and evaluations after ?since=UNIX_TIME
    /metrics   Prometheus text format (prometheus-client, one registry per scrape)
    /          the dashboard (daemon/dashboard/: a static page that polls the endpoints above,
               this node's and its peers'); its files are under /dashboard/NAME

The read-only JSON endpoints (/status, /history, /log) answer any origin (CORS ``*``): the
dashboard of one node reads its peers' endpoints directly from the browser. They take no
credentials and change nothing, and they tell little beyond what the node publishes to the
broker anyway (its records, its presence), so a page of another site that reads them through a
visitor's browser learns about what any peer can. The other way, a proxy on the node, would
have the node fetch the URLs its peers advertise: any peer of an open run could aim it at an
address of its choosing, and every viewer's polling would cost the node's event loop.

Handlers read a ``StatusSource``, the typed view a node offers of itself; they never touch
the node's objects or the model's tensors.

The endpoint cannot starve training: at most ``MAX_CONNECTIONS`` connections are open (more
are closed at once: each is a file descriptor the node needs for its log and snapshots), idle
ones are closed after ``KEEPALIVE_S``, a page of ``/log`` holds at most ``MAX_LOG_LIMIT``
records, and at most ``HEAVY`` pages are built at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from seedswarm.protocol.log import OrderKey

from .errors import ConfigError
from .settings import parse_listen
from .status import NodeStatus

MAX_LOG_LIMIT = 1000
MAX_CONNECTIONS = 128
KEEPALIVE_S = 15.0
HEAVY = 2  # /log pages and /metrics built at once; the rest wait their turn
CORS_PATHS = frozenset({"/status", "/history", "/log"})  # read-only JSON: any origin may read

# The dashboard's files (package data in daemon/dashboard/), served from memory; nothing else
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


class StatusSource(Protocol):
    """What the endpoint reads of a node: readiness, a typed status, a page of the log."""

    @property
    def ready(self) -> bool: ...

    @property
    def phase(self) -> str: ...

    async def status(self, *, fresh: bool) -> NodeStatus:
        """The node now; ``fresh``: hash the weights if the last fingerprint is stale."""
        ...

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


class _CappedRunner(web.AppRunner):
    """aiohttp has no cap on open connections: this one keeps at most ``MAX_CONNECTIONS``.

    At the cap a new connection takes the place of the oldest idle one (no request in
    progress), as nginx does with idle keep-alive connections, so connections that are opened
    and left idle cannot lock everyone out; only when every connection is busy with a request
    is the new one closed at once.
    """

    refused = 0  # connections closed because of the cap (idle ones evicted, new ones refused)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        accept = server.connection_made

        def connection_made(handler: Any, transport: Any) -> None:
            accept(handler, transport)
            if len(server.connections) <= MAX_CONNECTIONS:
                return
            self.refused += 1
            for old in server.connections:  # oldest first
                if old is not handler and getattr(old, "_current_request", True) is None:
                    old.force_close()
                    return
            transport.close()

        server.connection_made = connection_made  # type: ignore[method-assign]
        return server


class StatusServer:
    def __init__(self, source: StatusSource, *, routes: Sequence[web.RouteDef] = ()) -> None:
        """``routes``: more endpoints of other modules (the snapshot a node serves)."""
        self.source = source
        self._heavy = asyncio.Semaphore(HEAVY)
        self.app = web.Application()
        self.app.on_response_prepare.append(_cors)
        self.app.add_routes(list(routes))
        self._assets = _load_dashboard()
        self.app.add_routes(
            [
                web.get("/", self.dashboard),
                web.get("/dashboard/{name}", self.dashboard),
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/status", self.status),
                web.get("/log", self.log),
                web.get("/history", self.history),
                web.get("/metrics", self.metrics),
            ]
        )
        self._runner: _CappedRunner | None = None

    @property
    def refused(self) -> int:
        """Connections closed because ``MAX_CONNECTIONS`` were open."""
        return self._runner.refused if self._runner is not None else 0

    async def start(self, listen: str, *, advertise: str = "") -> str:
        host, port = parse_listen(listen)
        self._runner = _CappedRunner(self.app, access_log=None, keepalive_timeout=KEEPALIVE_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(f"--http {listen}: cannot listen ({exc.strerror})") from exc
        bound = self._runner.addresses[0][1] if self._runner.addresses else port
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return advertise or f"http://{shown}:{bound}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        if self.source.ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready ({self.source.phase})\n")

    async def status(self, request: web.Request) -> web.Response:
        fresh = request.query.get("fresh", "") in ("1", "true", "yes")
        st = await self.source.status(fresh=fresh)
        return web.json_response(st.to_json())

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


def newest(source: StatusSource, n: int) -> LogPage:
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
    root = resources.files("seedswarm.daemon").joinpath("dashboard")
    return {name: root.joinpath(name).read_bytes() for name in DASHBOARD}


async def _cors(request: web.Request, response: web.StreamResponse) -> None:
    if request.path in CORS_PATHS:
        response.headers["Access-Control-Allow-Origin"] = "*"


def parse_cursor(text: str) -> tuple[int, str, int] | None:
    """A /log cursor ``clock:node:seq`` (as returned in ``next``); empty means the start."""
    if not text:
        return None
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError("after must be clock:node:seq, as returned in 'next'")
    return int(parts[0]), parts[1], int(parts[2])
