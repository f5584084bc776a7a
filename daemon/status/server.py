"""The HTTP endpoint of a peer (aiohttp, in the peer's event loop): one server for the node and
the relay.

    /healthz   200 while the process runs
    /readyz    200 once the peer is ready (a node: started, connected and joined; a relay:
               started and connected); 503 otherwise
    /status    JSON: the peer's typed status (status/schema.py: NodeStatus, RelayStatus)

A peer adds its own endpoints as ``routes`` (a node: the dashboard, /log, /history, /metrics
from node_routes.py, and the snapshot it serves). Handlers read a ``StatusSource``, the typed
view a peer offers of itself; they never touch its objects or the model's tensors.

The read-only JSON endpoints (/status, /history, /log) answer any origin (CORS ``*``): the
dashboard of one node reads its peers' endpoints directly from the browser. They take no
credentials and change nothing, and they tell little beyond what the node publishes to the
broker anyway (its records, its presence), so a page of another site that reads them through a
visitor's browser learns about what any peer can. The other way, a proxy on the node, would
have the node fetch the URLs its peers advertise: any peer of an open run could aim it at an
address of its choosing, and every viewer's polling would cost the node's event loop.

The endpoint cannot starve the peer: at most ``MAX_CONNECTIONS`` connections are open (more
are closed at once: each is a file descriptor the node needs for its log and snapshots), and
idle ones are closed after ``KEEPALIVE_S``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from aiohttp import web

from seedswarm.daemon.errors import ConfigError
from seedswarm.daemon.settings import parse_listen

MAX_CONNECTIONS = 128
KEEPALIVE_S = 15.0
CORS_PATHS = frozenset({"/status", "/history", "/log"})  # read-only JSON: any origin may read


class Report(Protocol):
    def to_json(self) -> dict[str, Any]: ...


class StatusSource(Protocol):
    """What the endpoint reads of a peer: readiness, its phase, a typed status."""

    @property
    def ready(self) -> bool: ...

    @property
    def phase(self) -> str: ...

    async def status(self, *, fresh: bool) -> Report:
        """The peer now; ``fresh``: a node hashes its weights if the last fingerprint is stale."""
        ...


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
        """``routes``: the peer's own endpoints (node_routes.py, the snapshot a node serves)."""
        self.source = source
        self.app = web.Application()
        self.app.on_response_prepare.append(_cors)
        self.app.add_routes(list(routes))
        self.app.add_routes(
            [
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/status", self.status),
            ]
        )
        self._runner: _CappedRunner | None = None

    @property
    def refused(self) -> int:
        """Connections closed because ``MAX_CONNECTIONS`` were open."""
        return self._runner.refused if self._runner is not None else 0

    async def start(self, listen: str, *, advertise: str = "") -> str:
        """Listen on ``listen`` (host:port, port 0: any free one); the URL to tell peers."""
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


async def _cors(request: web.Request, response: web.StreamResponse) -> None:
    if request.path in CORS_PATHS:
        response.headers["Access-Control-Allow-Origin"] = "*"
