"""The dashboard's side of the HTTP endpoint, over a fake StatusSource on a real port: the
page and its files are served from the package (and nothing else under /dashboard/), the
read-only JSON endpoints answer any origin, and ``/log?last=N`` gives the newest N records of
the total order, which the log can only page forward."""

from __future__ import annotations

import itertools
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seedswarm.daemon.status.node_routes import (
    DASHBOARD,
    MAX_LOG_LIMIT,
    LogPage,
    NodeRoutes,
    newest,
)
from seedswarm.daemon.status.schema import NodeStatus
from seedswarm.daemon.status.server import StatusServer
from seedswarm.protocol.log import OrderKey


class FakeSource:
    """A log as a sorted list of (clock, node, seq), paged like Node.log_page."""

    ready = True
    phase = "running"

    def __init__(self, clocks: dict[str, list[int]]) -> None:
        self.keys = sorted(
            (c, node, seq) for node, cs in clocks.items() for seq, c in enumerate(cs)
        )
        self.pages = 0

    async def status(self, *, fresh: bool) -> NodeStatus:
        raise NotImplementedError

    def log_page(self, after: OrderKey | None, limit: int) -> LogPage:
        self.pages += 1
        rest = [k for k in self.keys if after is None or k > after]
        records = [{"clock": c, "node": n, "seq": s, "q": 1} for c, n, s in rest[:limit]]
        last = records[-1] if len(records) == limit else None
        cursor = f"{last['clock']}:{last['node']}:{last['seq']}" if last else None
        return LogPage(records, cursor, len(self.keys))

    def history(self, since: float) -> dict[str, Any]:
        return {"steps": [[since + 1, 1, 2.5, 1]], "evals": []}


def _keys(page: LogPage) -> list[tuple[int, str, int]]:
    return [(r["clock"], r["node"], r["seq"]) for r in page.records]


# a node's clocks never decrease along its seqs; many records may share one clock (a frame)
_node_clocks = st.lists(st.integers(0, 40), max_size=60).map(sorted)


@settings(max_examples=300, deadline=None)
@given(clocks=st.dictionaries(st.sampled_from(["a", "b", "n0", "n1", "z"]), _node_clocks),
       n=st.integers(1, 30))  # fmt: skip
def test_newest_is_the_tail_of_the_total_order(clocks: dict[str, list[int]], n: int) -> None:
    source = FakeSource(clocks)
    page = newest(source, n)
    assert _keys(page) == source.keys[-n:]
    assert page.next is None
    assert page.total == len(source.keys)


def test_newest_costs_pages_by_the_clock_not_by_the_length_of_the_log() -> None:
    # a million-record log would be a thousand forward pages; this is ~2 log2(clock) pages
    clocks = {"n0": [c for c in range(0, 100_000, 3) for _ in range(3)], "n1": list(range(50_000))}
    source = FakeSource(clocks)
    page = newest(source, 20)
    assert _keys(page) == source.keys[-20:]
    assert source.pages < 2 * 17 + 4
    one_clock = FakeSource({"n0": [7] * (3 * MAX_LOG_LIMIT), "n1": [7] * 5})  # one huge clock
    assert _keys(newest(one_clock, 10)) == one_clock.keys[-10:]


@pytest.mark.asyncio
async def test_the_page_its_files_and_cross_origin_reads() -> None:
    clocks = {"n0": list(range(30)), "n1": list(range(10))}
    source = FakeSource(clocks)
    server = StatusServer(source, routes=NodeRoutes(source).routes())
    url = await server.start("127.0.0.1:0")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/") as resp:
                assert resp.status == 200
                assert resp.content_type == "text/html"
                page = await resp.text()
                policy = resp.headers["Content-Security-Policy"]
            assert "script-src 'self'" in policy
            assert "connect-src *" in policy  # the swarm view reads its peers' endpoints
            for name in ("app.js", "style.css", "uPlot.iife.min.js", "uPlot.min.css"):
                assert f"dashboard/{name}" in page  # relative: works behind a path prefix
            for name, kind in DASHBOARD.items():
                async with http.get(f"{url}/dashboard/{name}") as resp:
                    assert resp.status == 200, name
                    assert resp.content_type == kind
                    assert len(await resp.read()) > 100
            for bad in ("nope.js", "..%2Fhttp_status.py", "%2E%2E%2Fnode.py"):
                async with http.get(f"{url}/dashboard/{bad}") as resp:
                    assert resp.status == 404, bad
            async with http.get(url + "/log?last=5") as resp:
                assert resp.headers["Access-Control-Allow-Origin"] == "*"
                body = await resp.json()
            assert [(r["clock"], r["node"]) for r in body["records"]] == [
                (25, "n0"), (26, "n0"), (27, "n0"), (28, "n0"), (29, "n0"),
            ]  # fmt: skip
            assert body["total"] == 40
            async with http.get(url + "/log?last=x") as resp:
                assert resp.status == 400
            async with http.get(url + "/history?since=10") as resp:
                assert resp.headers["Access-Control-Allow-Origin"] == "*"
                assert (await resp.json())["steps"] == [[11.0, 1, 2.5, 1]]
            for private in ("/", "/healthz", "/dashboard/app.js"):
                async with http.get(url + private) as resp:
                    assert "Access-Control-Allow-Origin" not in resp.headers, private
    finally:
        await server.stop()


def test_the_wheel_config_ships_every_dashboard_file() -> None:
    """pyproject's package data names the folder; every file the server serves is in it."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = config["package-data"]["seedswarm.daemon.status"]
    status = root / "daemon" / "status"
    on_disk = {p.name for p in (status / "dashboard").iterdir()}
    shipped = {p.name for p in itertools.chain.from_iterable(status.glob(g) for g in patterns)}
    assert set(DASHBOARD) <= shipped == on_disk
    assert not any(p.endswith(".c") or "csrc" in p for p in patterns)
