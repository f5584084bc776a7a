"""Hostile snapshot donors cannot crash, stall or fill a joining node (issue 20).

Real ``seedswarm node`` processes and a real Mosquitto; the donors are written here: each is a
real HTTP server (aiohttp) and a real MQTT client (aiomqtt) that keeps a *retained* presence
advertising a snapshot, so a joiner meets it at start and again at every restart. In the signed
run each donor is a member of the run (its key is in the manifest, its presence is signed).

The honest swarm is n0 (which serves a snapshot) and n1, 30 steps each. Each joiner meets a set
of hostile donors that advertise more records than n0 (so it tries them first), refuses each
one with the reason, counted under that donor in /status, and then joins by n0's snapshot or by
replay; no node exits; what lies in the joiner's ``incoming/`` (sampled every 20 ms) never
exceeds the true size of a snapshot a donor has; and the join ends, so stepping starts, within
the sum of the deadlines of its tries (``bound``, from daemon/node/download.py and join.py).

  * the description: a JSON list, ``"bytes": "lots"``, a made-up version vector of 2·10^9
    records (refused before any download: the swarm's presences report 60), under the default
    ``--join auto`` (which then replays: n0's snapshot is not worth it);
  * the file: 10^12 advertised bytes (refused before a byte), the true size but zeros without
    end (refused at its 8th byte), one byte every 20 s (refused after 10 s of silence); the
    joiner then takes n0's snapshot (``--join snapshot``);
  * kill -9 during a join, with an unaudited complete download in ``incoming/``: the next
    start keeps that one file, resumes it (no byte fetched again), refuses it when the log
    does not fill in (15 s without a record it covers), joins by n0, and leaves nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import torch
from aiohttp import web
from safetensors import safe_open

from seedswarm.daemon.node import download as dl
from seedswarm.daemon.node import join as jn
from seedswarm.daemon.node.download import file_sha256
from seedswarm.daemon.store import snapshots
from seedswarm.daemon.store.snapshots import SnapshotLayout
from seedswarm.protocol.messages import Presence, SnapshotAdvert, encode_presence
from seedswarm.protocol.signing import NodeKey
from seedswarm.protocol.topics import Topics
from seedswarm.protocol.vv import digest, digest_bytes

from ..helpers import (
    Broker,
    LoopThread,
    NodeProc,
    converged,
    free_port,
    loop_thread,
    running,
    serve,
    started_broker,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.broker]

STEPS = 30
HONEST = {"n0": STEPS, "n1": STEPS}
DONORS = ("evil-list", "evil-lots", "evil-madeup", "evil-huge", "evil-zeros", "evil-trickle",
          "evil-ghost")  # fmt: skip
JOINERS = ("j1", "j2", "j3")
AUDIT_ALLOWANCE = 60.0  # seconds for the joiner's own audit and load (not a donor's doing)


@dataclass
class Run:
    broker: Broker
    tmp: Path
    signed: bool
    keys: dict[str, NodeKey]
    common: list[str]
    run_id: bytes
    n0: NodeProc
    n1: NodeProc
    layout: SnapshotLayout
    honest_size: int  # the size of n0's snapshot file

    def joiner(self, name: str, *args: str) -> NodeProc:
        key = ["--key-file", str(self.tmp / f"{name}.key")] if self.signed else []
        return NodeProc(name, self.tmp, self.broker.url, *self.common, *key, *args, steps=3)


@pytest.fixture(scope="module", params=["open", "signed"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp(str(request.param))
    for broker in started_broker("mosquitto", tmp):
        yield from _swarm(broker, tmp, signed=request.param == "signed")


def _swarm(broker: Broker, tmp: Path, *, signed: bool) -> Iterator[Run]:
    keys = {n: NodeKey.generate() for n in ("n0", "n1", *JOINERS, *DONORS)}
    common = ["--max-latency", "0.3"]
    if signed:
        for name, k in keys.items():
            (tmp / f"{name}.key").write_text(k.private_hex())
        common += ["--keys", ",".join(f"{n}={k.public_hex()}" for n, k in keys.items())]

    def node(name: str, *args: str) -> NodeProc:
        key = ["--key-file", str(tmp / f"{name}.key")] if signed else []
        return NodeProc(name, tmp, broker.url, *common, *key, *args, steps=STEPS)

    n0 = node("n0", "--snapshot-every", "20")
    n1 = node("n1", "--snapshot-every", "100000")
    with running(n0, n1):
        for p in (n0, n1):
            p.start()
        for p in (n0, n1):
            p.wait_ready()
        wait_until(lambda: converged([n0, n1], HONEST), timeout=300, what="n0 and n1 to train")
        wait_until(lambda: n0.status()["snapshots"]["served"] is not None, timeout=60,
                   what="n0 to serve a snapshot")  # fmt: skip
        path = n0.data_dir / "snapshots" / n0.status()["snapshots"]["last"]
        with safe_open(str(path), framework="pt") as f:
            layout = SnapshotLayout.of((k, f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
        yield Run(
            broker, tmp, signed, keys, common, bytes.fromhex(n0.status()["run_id"]), n0, n1,
            layout, path.stat().st_size,
        )  # fmt: skip


# == the hostile donors ============================================================================

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Donor:
    """One hostile donor: what its presence advertises, and its two endpoints."""

    name: str
    vv: dict[str, int]
    info: Callable[[Donor], Any]  # the /snapshot/info JSON (any JSON value)
    file: Callable[[Donor], Handler] | None = None
    fingerprint: str = "ee" * 32
    size: int = 0  # what a consistent description says
    sha: str = "00" * 32
    port: int = field(default_factory=free_port)
    requests: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def described(self, **changes: Any) -> dict[str, Any]:
        """A description that passes every check (until the file)."""
        return {
            "fingerprint": self.fingerprint, "version_vector": self.vv,
            "vv_digest": digest(self.vv), "records": sum(self.vv.values()), "bytes": self.size,
            "sha256": self.sha, **changes,
        }  # fmt: skip

    def app(self) -> web.Application:
        async def info(request: web.Request) -> web.StreamResponse:
            self.requests.append(request.path)
            return web.Response(body=json.dumps(self.info(self)), content_type="application/json")

        async def file(request: web.Request) -> web.StreamResponse:
            self.requests.append(request.path)
            assert self.file is not None
            with contextlib.suppress(ConnectionError):
                return await self.file(self)(request)
            return web.Response(status=500)

        app = web.Application()
        app.router.add_get("/snapshot/info", info)
        app.router.add_get("/snapshot/{fp}", file)
        return app


class Donors:
    """The donors of one attack, served and announced while the ``with`` block runs."""

    def __init__(self, lt: LoopThread, run: Run, donors: list[Donor]) -> None:
        self.lt, self.run, self.donors = lt, run, donors
        self.stop = asyncio.Event()
        self.topics = Topics("seedswarm", "default")
        self.runners: list[web.AppRunner] = []

    def presence(self, d: Donor, alive: bool = True) -> bytes:
        advert = SnapshotAdvert(
            digest_bytes(d.vv), bytes.fromhex(d.fingerprint), sum(d.vv.values())
        )
        p = Presence(d.name, self.run.run_id, alive, http=d.url, snapshot=advert)
        return encode_presence(p, self.run.keys[d.name] if self.run.signed else None)

    async def _announce(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.run.broker.port, identifier="donors") as c:
            while True:
                for d in self.donors:  # retained: a node meets it at every start
                    await c.publish(self.topics.presence(d.name), self.presence(d), 1, retain=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), 0.3)
                if self.stop.is_set():
                    for d in self.donors:
                        await c.publish(self.topics.presence(d.name), b"", 1, retain=True)
                    return

    def __enter__(self) -> Donors:
        for d in self.donors:
            self.runners.append(self.lt.call(lambda d=d: serve(d.app(), d.port)))  # type: ignore[misc]
        self.announcing = asyncio.run_coroutine_threadsafe(self._announce(), self.lt.loop)
        return self

    def __exit__(self, *exc: object) -> None:
        self.lt.loop.call_soon_threadsafe(self.stop.set)
        self.announcing.result(30)
        for r in self.runners:
            self.lt.call(r.cleanup)


def endless_zeros(d: Donor) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"X-Content-SHA256": d.sha})
        await resp.prepare(request)
        while True:
            await resp.write(b"\0" * 65536)

    return handler


def trickle(d: Donor) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"X-Content-SHA256": d.sha})
        resp.content_length = d.size
        await resp.prepare(request)
        for _ in range(d.size):
            await resp.write(b"\1")
            await asyncio.sleep(20)
        return resp

    return handler


def whole_file(path: Path) -> Callable[[Donor], Handler]:
    def make(d: Donor) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(path, headers={"X-Content-SHA256": d.sha})

        return handler

    return make


# == measuring a joiner ============================================================================


class DiskSampler:
    """The largest total size of the files in ``incoming/``, sampled every 20 ms."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.most = directory, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            with contextlib.suppress(OSError):
                for p in self.directory.iterdir():
                    with contextlib.suppress(OSError):
                        total += p.stat().st_size
            self.most = max(self.most, total)
            time.sleep(0.02)

    def __enter__(self) -> DiskSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def bound(run: Run, tries: list[tuple[int, int]], log_records: int = STEPS * 2) -> float:
    """The most a join may take, from the deadlines in daemon/node: the wait for peers, then per
    try (size downloaded, records to fetch): the description, the download, the log fetch, the
    audit (the joiner's own work)."""
    total = 0.5  # --join-wait
    for size, records in tries:
        total += dl.INFO_TIMEOUT + (dl.deadline_for(size) if size else 0.0)
        if records:
            total += jn.LOG_SLACK + records / jn.LOG_MIN_RATE + AUDIT_ALLOWANCE
    return total + 1.0 * len(tries)  # a "moved" pause at most, per try


def joined(run: Run, joiner: NodeProc) -> dict[str, Any]:
    """Wait for the joiner to agree with n0 and n1 (who hold the earlier joiners' records
    too); its /status then."""
    expect = {**run.n0.status()["version_vector"], joiner.name: 3}
    wait_until(lambda: converged([run.n0, run.n1, joiner], expect), timeout=300,
               what=f"{joiner.name} to agree")  # fmt: skip
    sts = [n.status(fresh=True) for n in (run.n0, run.n1, joiner)]
    assert len({st["fingerprint"] for st in sts}) == 1
    assert run.n0.alive()
    assert run.n1.alive()
    return sts[2]


def taken_size(joiner: NodeProc) -> int:
    """The true size of the snapshot the joiner took (it lies in its snapshots/ now)."""
    return max(p.stat().st_size for p in (joiner.data_dir / "snapshots").glob("snap-*"))


def first_step(joiner: NodeProc, started: float, limit: float) -> float:
    """Seconds from the process's start to its first step (waited for up to ``limit``)."""
    wait_until(lambda: joiner.ready("/healthz") and joiner.status()["steps"]["taken"] > 0,
               timeout=limit, what=f"{joiner.name} to step", interval=0.1)  # fmt: skip
    return time.monotonic() - started


STARTUP = 120.0  # seconds a node may take to load torch and its model on a loaded machine


# == the attacks ===================================================================================


def test_bad_descriptions_and_a_made_up_version_vector_are_refused(run: Run) -> None:
    """Under the default --join auto: three donors, each refused before a byte of a file; the
    joiner replays (n0's snapshot of 60 records is not worth a download under auto)."""
    ghost = {"n0": 10**9, "n1": 10**9}  # 2·10^9 records; the swarm holds 60
    donors = [
        Donor("evil-madeup", ghost, lambda d: d.described(bytes=run.honest_size)),
        Donor("evil-list", {"n0": 10**9}, lambda d: [d.described()]),
        Donor("evil-lots", {"n0": 5 * 10**8}, lambda d: d.described(bytes="lots")),
    ]
    joiner = run.joiner("j1")
    with loop_thread() as lt, Donors(lt, run, donors), running(joiner):
        with DiskSampler(joiner.data_dir / "incoming") as disk:
            joiner.start()
            t0 = time.monotonic()
            limit = bound(run, [(0, 0)] * 3)
            took = first_step(joiner, t0, STARTUP + limit)
        st = joined(run, joiner)
        join = st["join"]
        print(f"{run.signed=}: first step {took:.1f} s after start, join {join['seconds']} s "
              f"(bound {limit:.0f} s), {disk.most} bytes in incoming/")  # fmt: skip
        assert join["refused"] == {"evil-madeup": 1, "evil-list": 1, "evil-lots": 1}, join
        why = join["refusals"]
        assert "the swarm's presences report at most" in why["evil-madeup"], why
        assert "JSON list, not an object" in why["evil-list"], why
        assert "bytes is a str" in why["evil-lots"], why
        assert join["state"] == "replay", join
        assert join["seconds"] <= limit
        assert disk.most == 0
        assert all(p == "/snapshot/info" for d in donors for p in d.requests)
        assert joiner.stop() == 0, joiner.tail()


def test_a_huge_endless_or_trickling_file_is_refused(run: Run) -> None:
    """--join snapshot: three donors whose descriptions pass; 10^12 bytes (refused before a
    byte), zeros without end (refused at the header's length), a byte every 20 s (refused
    after STALL s without one); then n0's snapshot."""
    hi = run.layout.size_bounds({"n0": 30, "n1": 30, "ghost": 3000})[1]
    donors = [
        Donor("evil-trickle", {**HONEST, "ghost": 3000}, lambda d: d.described(), trickle,
              size=hi),
        Donor("evil-zeros", {**HONEST, "ghost": 2000}, lambda d: d.described(), endless_zeros,
              size=hi),
        Donor("evil-huge", {**HONEST, "ghost": 1000}, lambda d: d.described(), endless_zeros,
              size=10**12),
    ]  # fmt: skip
    joiner = run.joiner("j2", "--join", "snapshot")
    with loop_thread() as lt, Donors(lt, run, donors), running(joiner):
        with DiskSampler(joiner.data_dir / "incoming") as disk:
            joiner.start()
            t0 = time.monotonic()
            limit = bound(run, [(hi, 0), (hi, 0), (0, 0), (run.honest_size, 2 * STEPS)])
            took = first_step(joiner, t0, STARTUP + limit)
        st = joined(run, joiner)
        join = st["join"]
        print(f"{run.signed=}: first step {took:.1f} s after start, join {join['seconds']} s "
              f"(bound {limit:.0f} s), at most {disk.most} bytes in incoming/ "
              f"(the snapshot it took: {taken_size(joiner)})")  # fmt: skip
        assert join["refused"] == {"evil-trickle": 1, "evil-zeros": 1, "evil-huge": 1}, join
        why = join["refusals"]
        assert f"sent no byte for {dl.STALL:g} s" in why["evil-trickle"], why
        assert "its header would be 0 bytes long" in why["evil-zeros"], why
        assert "it says its snapshot is 1000000000000 bytes" in why["evil-huge"], why
        assert join["state"] == "done", join
        assert join["donor"] == "n0"
        assert join["seconds"] <= limit
        assert disk.most <= taken_size(joiner)
        assert donors[2].requests == ["/snapshot/info"], "not a byte of the file was asked for"
        assert not list((joiner.data_dir / "incoming").iterdir())
        assert joiner.stop() == 0, joiner.tail()


@pytest.mark.parametrize("run", ["open"], indirect=True)
def test_kill_9_during_a_join_leaves_nothing_after_the_next_start(run: Run) -> None:
    """A donor whose file is whole and consistent but covers 50 records of a node nobody has:
    the joiner downloads it and waits for the log; killed (-9) there, it leaves the complete,
    unaudited file. The next start keeps that one file, resumes it without fetching a byte,
    refuses it when no record it covers comes for LOG_STALL (15) s, joins by n0, and leaves
    nothing in incoming/."""
    vv = {**HONEST, "ghost": 50}
    state = {n: torch.zeros(s, dtype=torch.int64) for n, s in run.layout.shapes.items()}
    snap = snapshots.save(run.tmp / "ghost", state, run_id=run.run_id.hex(), version_vector=vv,
                          fingerprint="ee" * 32)  # fmt: skip
    size, sha = snap.path.stat().st_size, file_sha256(snap.path)
    donor = Donor("evil-ghost", vv, lambda d: d.described(), whole_file(snap.path), size=size,
                  sha=sha)  # fmt: skip
    joiner = run.joiner("j3", "--join", "snapshot")
    incoming = joiner.data_dir / "incoming"
    with loop_thread() as lt, Donors(lt, run, [donor]), running(joiner):
        with DiskSampler(incoming) as disk:
            joiner.start()

            def fetching_log() -> bool:
                return (
                    joiner.ready("/healthz") and joiner.status()["join"]["state"] == "fetching log"
                )

            wait_until(fetching_log, timeout=STARTUP, what="j3 to wait for the log", interval=0.1)
            joiner.stop(signal.SIGKILL)
            left = sorted(incoming.iterdir())
            assert [p.name for p in left] == [f"{donor.fingerprint}.part"]
            assert left[0].stat().st_size == size, "complete, and never audited"
            asked = list(donor.requests)

            joiner.start()
            t0 = time.monotonic()
            limit = bound(run, [(0, 50 + 2 * STEPS), (run.honest_size, 2 * STEPS)])
            took = first_step(joiner, t0, STARTUP + limit)
        st = joined(run, joiner)
        join = st["join"]
        print(f"first step {took:.1f} s after the restart, join {join['seconds']} s "
              f"(bound {limit:.0f} s), at most {disk.most} bytes in incoming/ (the donor's "
              f"file: {size}, the snapshot it took: {taken_size(joiner)})")  # fmt: skip
        assert join["refused"] == {"evil-ghost": 1}, join
        assert f"no record it covers came for {jn.LOG_STALL:g} s" in join["refusals"]["evil-ghost"]
        assert join["state"] == "done", join
        assert join["donor"] == "n0"
        assert join["seconds"] <= limit
        assert donor.requests[len(asked) :] == ["/snapshot/info"], "resumed: no byte again"
        assert disk.most <= max(size, taken_size(joiner))
        assert not list(incoming.iterdir()), "nothing outlives the join"
        assert joiner.stop() == 0, joiner.tail()
