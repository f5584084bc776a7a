"""A node's snapshot endpoint: ``/snapshot/info`` (what its newest snapshot holds) and
``/snapshot/file`` (the file), which joiners download from (join.py)."""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from seedswarm.daemon.store.snapshot_info import SnapshotInfo
from seedswarm.protocol.vv import digest


class SnapshotSource(Protocol):
    """What the endpoint needs of a node: its newest snapshot and that file's SHA-256."""

    def served_snapshot(self) -> tuple[SnapshotInfo, str] | None: ...


def snapshot_routes(source: SnapshotSource) -> list[web.RouteDef]:
    async def info(request: web.Request) -> web.Response:
        got = source.served_snapshot()
        described = None if got is None else _describe(*got)
        if described is None:
            return web.json_response({"error": "no snapshot yet"}, status=404)
        return web.json_response(described)

    async def file(request: web.Request) -> web.StreamResponse:
        got = source.served_snapshot()
        if got is None or got[0].fingerprint != request.match_info["fingerprint"]:
            return web.json_response({"error": "no such snapshot (any more)"}, status=404)
        snap, sha = got
        return web.FileResponse(snap.path, headers={"X-Content-SHA256": sha})

    return [
        web.get("/snapshot/info", info),
        web.get("/snapshot/{fingerprint:[0-9a-f]{64}}", file),
    ]


def _describe(snap: SnapshotInfo, sha: str) -> dict[str, Any] | None:
    try:
        size = snap.path.stat().st_size
    except OSError:
        return None  # deleted a moment ago (its records were given back)
    return {
        "fingerprint": snap.fingerprint,
        "version_vector": snap.version_vector,
        "vv_digest": digest(snap.version_vector),
        "records": snap.records,
        "bytes": size,
        "sha256": sha,
    }
