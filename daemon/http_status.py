"""The node's HTTP endpoint (aiohttp, in the daemon's event loop).

    /healthz   200 while the process runs
    /readyz    200 once started, connected to the broker and joined; 503 otherwise
    /status    JSON (status.NodeStatus): identity, version vector and fingerprint, progress,
               peers, broker, drops
    /log       records in the total order (clock, node, seq): ?after=CURSOR&limit=N
    /metrics   Prometheus text format (prometheus-client, one registry per scrape)

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
        """Curves for the dashboard: own steps after ``since`` (unix time), evaluations."""
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
    """aiohttp has no cap on open connections: this one closes a new connection at once when
    ``MAX_CONNECTIONS`` are open."""

    refused = 0

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        accept = server.connection_made

        def connection_made(handler: Any, transport: Any) -> None:
            accept(handler, transport)
            if len(server.connections) > MAX_CONNECTIONS:
                self.refused += 1
                transport.close()

        server.connection_made = connection_made  # type: ignore[method-assign]
        return server


class StatusServer:
    def __init__(self, source: StatusSource, *, routes: Sequence[web.RouteDef] = ()) -> None:
        """``routes``: more endpoints of other modules (the snapshot a node serves)."""
        self.source = source
        self._heavy = asyncio.Semaphore(HEAVY)
        self.app = web.Application()
        self.app.add_routes(list(routes))
        self.app.add_routes(
            [
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

    async def log(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "100"))
            after = parse_cursor(request.query.get("after", ""))
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        async with self._heavy:
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


def parse_cursor(text: str) -> tuple[int, str, int] | None:
    """A /log cursor ``clock:node:seq`` (as returned in ``next``); empty means the start."""
    if not text:
        return None
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError("after must be clock:node:seq, as returned in 'next'")
    return int(parts[0]), parts[1], int(parts[2])
