"""The node's HTTP endpoint (aiohttp, in the daemon's event loop).

    /healthz   200 while the process runs
    /readyz    200 once started, connected to the broker and joined; 503 otherwise
    /status    JSON: identity, version vector and fingerprint, progress, peers, broker, drops
    /log       records in the total order (clock, node, seq): ?after=CURSOR&limit=N
    /metrics   Prometheus text format (prometheus-client, one registry per node)

Handlers read the node's state on the event loop and never touch the model's tensors: the
fingerprint comes from the model thread (node.fingerprint), everything else from plain values.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from seedswarm.protocol.vv import digest

from .errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .node import Node

MAX_LOG_LIMIT = 10000


def parse_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host:
        host = "127.0.0.1"
    try:
        value = int(port)
    except ValueError:
        raise ConfigError(
            f"--http {text!r}: write it as host:port (port 0 picks a free one)"
        ) from None
    if not 0 <= value <= 65535:
        raise ConfigError(f"--http {text!r}: the port must be in 0..65535")
    return host.strip("[]"), value


def status_dict(node: Node, fingerprint: tuple[str, str, bool]) -> dict[str, Any]:
    s = node.stats
    now = time.monotonic()
    fp, fp_digest, stale = fingerprint
    applied = {k: v for k, v in sorted(node.applied.items()) if v}
    held = node.log.held()
    pending = sum(max(held.get(n, 0) - applied.get(n, 0), 0) for n in held if n != node.me)
    pending += node.log.pending_count()
    step_rate, rec_rate = s.rates(now)
    tr = node.transport
    ours = sum(held.values())
    peers = []
    for name, info in sorted(node.peers.items()):
        p = info.presence
        peers.append(
            {
                "node": name,
                "alive": p.alive,
                "last_seen_s": round(now - info.last_seen, 3),
                "held": dict(p.held),
                "records": sum(p.held.values()),
                "lag": ours - sum(p.held.values()),
                "steps": p.steps,
                "loss": p.loss,
                "http": p.http,
            }
        )
    recent = list(s.losses)[-20:]
    return {
        "node": node.me,
        "run": node.manifest.name,
        "run_id": node.run_id.hex(),
        "mode": "open" if node.manifest.open_mode else "signed",
        "phase": node.phase,
        "ready": node.ready,
        "version_vector": applied,
        "vv_digest": digest(applied),
        "fingerprint": fp,
        "fingerprint_vv_digest": fp_digest,
        "fingerprint_stale": stale,
        "records": {
            "applied": sum(applied.values()),
            "held": node.log.held_count(),
            "pending": pending,
            "unflushed": len(node.unflushed),
        },
        "steps": {
            "taken": node.applied.get(node.me, 0),
            "this_session": s.steps,
            "limit": node.max_steps,
            "done": 0 <= node.max_steps <= node.applied.get(node.me, 0),
            "per_s": step_rate,
            "seconds_each": sum(s.step_times) / len(s.step_times) if s.step_times else None,
        },
        "records_per_s": rec_rate,
        "loss": {"recent": sum(recent) / len(recent) if recent else None, "first": s.first_loss},
        "peers": peers,
        "broker": {
            "url": tr.address.display(),
            "state": tr.state,
            "connects": tr.connects,
            "last_error": tr.last_error,
            "outbox": len(tr.outbox),
            "messages_published": tr.messages_published,
            "messages_received": tr.messages_received,
            "bytes_published": tr.bytes_published,
            "records_published": tr.records_published,
            "frame_bytes_published": tr.frame_bytes_published,
            "payload_bytes_per_record": (
                tr.frame_bytes_published / tr.records_published if tr.records_published else None
            ),
        },
        "dropped": {reason: dict(c) for reason, c in sorted(s.dropped.items())},
        "dropped_total": sum(sum(c.values()) for c in s.dropped.values()),
        "duplicates": s.duplicates,
        "sync": {"wants_sent": s.wants_sent, "wants_answered": s.wants_answered},
        "snapshots": {"taken": s.snapshots, "last": s.last_snapshot},
        "headroom_bits": s.headroom_bits,
        "headroom_warning": (s.headroom_bits is not None and s.headroom_bits < 1.0),
        "model_busy": node.model.busy,
        "device": str(node.engine.device),
        "kernel": node.engine.backend.name,
        "uptime_s": round(now - s.started, 3),
        "restored_records": s.restored_records,
        "replayed_records": s.replayed_records,
        "http": node.http_url,
    }


class _NodeCollector:
    """Prometheus view of the node, computed at scrape time from its plain counters."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Any]:
        n, s = self.node, self.node.stats
        labels = ["node"]
        me = [n.me]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(me, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(me, value)
            return c

        yield counter("seedswarm_steps", "ZO steps taken by this node (this session)", s.steps)
        yield gauge(
            "seedswarm_records_applied",
            "records applied to the local model",
            sum(n.applied.values()),
        )
        yield gauge("seedswarm_records_held", "records in the durable log", n.log.held_count())
        yield counter("seedswarm_duplicates", "duplicate records received", s.duplicates)
        yield gauge(
            "seedswarm_broker_connected",
            "1 while connected to the broker",
            1.0 if n.transport.connected.is_set() else 0.0,
        )
        yield counter(
            "seedswarm_bytes_published",
            "payload bytes acknowledged by the broker",
            n.transport.bytes_published,
        )
        yield counter(
            "seedswarm_records_published",
            "records acknowledged by the broker",
            n.transport.records_published,
        )
        yield gauge("seedswarm_outbox", "messages waiting for the broker", len(n.transport.outbox))
        yield gauge("seedswarm_peers", "peers seen", len(n.peers))
        recent = list(s.losses)[-20:]
        if recent:
            yield gauge(
                "seedswarm_loss", "mean loss over the last steps", sum(recent) / len(recent)
            )
        dropped = CounterMetricFamily(
            "seedswarm_dropped",
            "input dropped, by reason and sender",
            labels=["node", "reason", "sender"],
        )
        for reason, per_sender in sorted(s.dropped.items()):
            for sender, count in sorted(per_sender.items()):
                dropped.add_metric([n.me, reason, sender], count)
        yield dropped


class StatusServer:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_NodeCollector(node))
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/status", self.status),
                web.get("/log", self.log),
                web.get("/metrics", self.metrics),
            ]
        )
        self._runner: web.AppRunner | None = None

    async def start(self, listen: str, *, advertise: str = "") -> str:
        host, port = parse_listen(listen)
        self._runner = web.AppRunner(self.app, access_log=None)
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
        if self.node.ready and self.node.transport.connected.is_set():
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready ({self.node.phase})\n")

    async def status(self, request: web.Request) -> web.Response:
        fresh = request.query.get("fresh", "") in ("1", "true", "yes")
        fp = await self.node.fingerprint(fresh=fresh)
        return web.json_response(status_dict(self.node, fp))

    async def log(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "100"))
            after = parse_cursor(request.query.get("after", ""))
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        limit = max(1, min(limit, MAX_LOG_LIMIT))
        records = []
        for r in self.node.log.ordered(after):
            records.append({"clock": r.clock, "node": r.node, "seq": r.seq, "q": r.q})
            if len(records) >= limit:
                break
        last = records[-1] if records else None
        cursor = (
            f"{last['clock']}:{last['node']}:{last['seq']}"
            if last and len(records) == limit
            else None
        )
        return web.json_response(
            {"records": records, "next": cursor, "total": self.node.log.held_count()}
        )

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), content_type="text/plain", charset="utf-8"
        )


def parse_cursor(text: str) -> tuple[int, str, int] | None:
    """A /log cursor ``clock:node:seq`` (as returned in ``next``); empty means the start."""
    if not text:
        return None
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError("after must be clock:node:seq, as returned in 'next'")
    return int(parts[0]), parts[1], int(parts[2])
