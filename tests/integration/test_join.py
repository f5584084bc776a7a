"""Joining late by a peer's snapshot, with real node processes, a real broker and real HTTP.

* A late joiner downloads a snapshot through a slow link, is killed (-9) in the middle of the
  download, restarts, resumes the download with a range request, audits the snapshot, and ends
  in agreement; ``seedswarm replay`` on its data directory then rebuilds the swarm's weights
  from the base model and the log alone.
* A donor (a real HTTP endpoint and a real MQTT client, written here) serves the true weights
  with one element moved by one grid step and a fingerprint computed over its altered bytes, so
  every hash it offers is consistent. The audit recomputes every block (``--audit-blocks`` at
  least the model's block count: detection probability 1; with k of B blocks it is k / B, see
  model/audit.py), refuses the snapshot, counts it against the donor, and the joiner takes an
  honest donor's snapshot instead or, when there is none, replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import aiohttp
import aiomqtt
import pytest
from aiohttp import web

from seedswarm.daemon.node.join import file_sha256, snapshot_routes
from seedswarm.daemon.store import snapshots
from seedswarm.daemon.store.datadir import DataDir
from seedswarm.model.audit import total_blocks
from seedswarm.model.engine import Engine
from seedswarm.protocol.codec import encode_bundle, encode_frame
from seedswarm.protocol.messages import Presence, SnapshotAdvert, encode_presence
from seedswarm.protocol.records import Frame
from seedswarm.protocol.topics import Topics
from seedswarm.protocol.vv import digest_bytes

from ..helpers import (
    Broker,
    NodeProc,
    cli_json,
    converged,
    free_port,
    loop_thread,
    running,
    serve,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.broker]

AUDIT_ALL = ["--audit-blocks", "100000"]  # more than the tiny model's blocks: every one


def slow_proxy(upstream: str, seen: list[dict[str, str]], rate: int = 48 * 1024) -> web.Application:
    """A link of ``rate`` bytes/s in front of a node's endpoint; it notes each request's
    path and Range header."""

    async def forward(request: web.Request) -> web.StreamResponse:
        seen.append({"path": request.path, "range": request.headers.get("Range", "")})
        headers = {"Range": request.headers["Range"]} if "Range" in request.headers else {}
        async with (
            aiohttp.ClientSession() as http,
            http.get(upstream + request.path_qs, headers=headers) as up,
        ):
            out = web.StreamResponse(status=up.status)
            for name in ("Content-Type", "Content-Length", "Content-Range", "X-Content-SHA256"):
                if name in up.headers:
                    out.headers[name] = up.headers[name]
            await out.prepare(request)
            chunk = rate // 8
            async for data in up.content.iter_chunked(chunk):
                await out.write(data)
                await asyncio.sleep(len(data) / rate)
            await out.write_eof()
            return out

    app = web.Application()
    app.router.add_get("/{tail:.*}", forward)
    return app


def test_a_joiner_killed_mid_download_resumes_audits_and_agrees(
    mosquitto: Broker, tmp_path: Path
) -> None:
    proxy_port = free_port()
    seen: list[dict[str, str]] = []
    # n0 serves snapshots, through the slow link it advertises; n1 never writes one
    n0 = NodeProc(
        "n0", tmp_path, mosquitto.url, "--snapshot-every", "20",
        "--advertise", f"http://127.0.0.1:{proxy_port}", steps=40,
    )  # fmt: skip
    n1 = NodeProc("n1", tmp_path, mosquitto.url, "--snapshot-every", "100000", steps=40)
    joiner = ["--join", "snapshot", *AUDIT_ALL]
    n2 = NodeProc("n2", tmp_path, mosquitto.url, *joiner, steps=5)
    with loop_thread() as lt, running(n0, n1, n2):
        runner = lt.call(lambda: serve(slow_proxy(n0.url, seen), proxy_port))
        try:
            for n in (n0, n1):
                n.start()
            for n in (n0, n1):
                n.wait_ready()
            wait_until(lambda: converged([n0, n1], {"n0": 40, "n1": 40}), timeout=300,
                       what="n0 and n1 to train")  # fmt: skip
            n2.start()

            def downloading() -> bool:
                j = n2.status()["join"] if n2.ready("/healthz") else {}
                return j.get("state") == "downloading" and 0 < j["bytes"] < j["total"] // 2

            wait_until(downloading, timeout=180, what="n2 to be downloading")
            n2.stop(signal.SIGKILL)
            parts = list((n2.data_dir / "incoming").glob("*.part"))
            assert len(parts) == 1, parts
            assert parts[0].stat().st_size > 0
            assert not list(n2.data_dir.glob("snapshots/*.safetensors")), "nothing half-trusted"

            n2.start()
            expect = {"n0": 40, "n1": 40, "n2": 5}
            wait_until(lambda: converged([n0, n1, n2], expect), timeout=300, what="agreement")
            statuses = [n.status(fresh=True) for n in (n0, n1, n2)]
            assert len({st["fingerprint"] for st in statuses}) == 1
            join = statuses[2]["join"]
            assert join["state"] == "done", join
            assert join["donor"] == "n0"
            assert join["records"] >= 60
            assert join["refused"] == {}
            assert join["audit_blocks"] > 0
            # the second download went on from where the first was cut
            ranges = [r["range"] for r in seen if r["path"].startswith("/snapshot/") and
                      r["path"] != "/snapshot/info"]  # fmt: skip
            assert ranges[0] == ""
            assert ranges[-1].startswith("bytes=")
            assert ranges[-1] != "bytes=0-"
            assert not list((n2.data_dir / "incoming").glob("*"))
            assert n2.stop() == 0, n2.tail()
        finally:
            lt.call(runner.cleanup)

    # the joiner's log is whole: base + log alone give the swarm's weights
    replayed = cli_json("replay", str(n2.data_dir), "--json")
    assert replayed["fingerprint"] == statuses[0]["fingerprint"]
    assert replayed["records"] == 85
    assert replayed["beyond_gaps"] == 0


# == a donor that lies ================================================================================

LIAR_RECORDS = 20


def forged_snapshot(source: Path, out: Path) -> tuple[snapshots.SnapshotInfo, int]:
    """The true state after ``source``'s whole log, with one element moved by one grid step
    and the fingerprint of that altered state; and the model's block count."""
    manifest, log, _ = DataDir(source).load()
    engine = Engine.open(manifest)
    engine.apply(list(log.ordered()))
    state = engine.trainable_state()
    t = max(range(len(engine.grids)), key=lambda i: engine.grids[i].numel)
    name = engine.trainable[t][0]
    flat = state[name].view(-1)
    flat[1000] += 1  # one grid step
    engine.load_trainable_state(state)
    snap = snapshots.save(
        out, state, run_id=manifest.run_id().hex(), version_vector=log.held(),
        fingerprint=engine.fingerprint(),
    )  # fmt: skip
    return snap, total_blocks(engine)


class Liar:
    """A peer of an open run, written here: it publishes records of its own (valid ones, so its
    snapshot covers more records than an honest donor's and is the one a joiner tries first,
    daemon/node/join.py: choose), then serves a forged snapshot with the node's own serving code and
    advertises it in its presence, twice a second, like a node."""

    def __init__(self, broker: Broker, run_id: bytes) -> None:
        self.broker, self.run_id = broker, run_id
        self.topics = Topics("seedswarm", "default")
        self.port = free_port()
        self.snap: snapshots.SnapshotInfo | None = None
        self.sha = ""
        self.stop = asyncio.Event()

    def served_snapshot(self) -> tuple[snapshots.SnapshotInfo, str] | None:
        return None if self.snap is None else (self.snap, self.sha)

    def presence(self) -> Presence:
        snap = self.snap
        advert = None
        if snap is not None:
            vv = snap.version_vector
            advert = SnapshotAdvert(digest_bytes(vv), bytes.fromhex(snap.fingerprint), snap.records)
        return Presence(
            "evil", self.run_id, True, own=LIAR_RECORDS, http=f"http://127.0.0.1:{self.port}",
            snapshot=advert,
        )  # fmt: skip

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.add_routes(snapshot_routes(self))
        return await serve(app, self.port)

    async def run(self) -> None:
        topic = self.topics.presence("evil")
        qs = bytes((i * 37) % 200 + 28 for i in range(LIAR_RECORDS))  # no 0x80 among them
        frame = encode_frame(Frame(self.run_id, "evil", 0, 1, qs))
        async with aiomqtt.Client("127.0.0.1", self.broker.port, identifier="evil") as c:
            await c.subscribe(self.topics.sync("evil", "+"), qos=1)
            await c.publish(topic, encode_presence(self.presence()), qos=1)
            await c.publish(self.topics.records("evil"), frame, qos=1)
            async with asyncio.TaskGroup() as tg:
                answering = tg.create_task(self._answer(c, frame))
                while not self.stop.is_set():
                    await c.publish(topic, encode_presence(self.presence()), qos=1)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop.wait(), 0.5)
                await c.publish(topic, b"", qos=1, retain=True)
                answering.cancel()

    async def _answer(self, c: aiomqtt.Client, frame: bytes) -> None:
        """An author answers wants for its own records (in an open run nobody else may): any
        message to it gets its one frame back, in a bundle."""
        async for message in c.messages:
            asker = str(message.topic).rsplit("/", 1)[-1]
            await c.publish(self.topics.sync(asker, "evil"), encode_bundle([("evil", frame)]))


def test_a_donor_that_alters_one_weight_is_refused_and_the_joiner_recovers(
    mosquitto: Broker, tmp_path: Path
) -> None:
    rare = ["--snapshot-every", "100000"]  # snapshots only when a node stops
    n0 = NodeProc("n0", tmp_path, mosquitto.url, *rare, steps=30)
    n1 = NodeProc("n1", tmp_path, mosquitto.url, *rare, steps=30)
    joiner = ["--join", "snapshot", *AUDIT_ALL]
    n2 = NodeProc("n2", tmp_path, mosquitto.url, *joiner, steps=2)
    n3 = NodeProc("n3", tmp_path, mosquitto.url, *joiner, steps=2)
    with loop_thread() as lt, running(n0, n1, n2, n3):
        for n in (n0, n1):
            n.start()
        for n in (n0, n1):
            n.wait_ready()
        expect = {"n0": 30, "n1": 30}
        wait_until(lambda: converged([n0, n1], expect), timeout=300, what="n0 and n1 to train")
        # n0 stops (and writes a snapshot of the 60 records), and serves it once back
        assert n0.stop() == 0, n0.tail()
        n0.start()
        n0.wait_ready()
        assert n0.status()["snapshots"]["served"]["records"] == 60
        liar = Liar(mosquitto, bytes.fromhex(n0.status()["run_id"]))
        runner = lt.call(liar.start)
        talking = asyncio.run_coroutine_threadsafe(liar.run(), lt.loop)
        try:
            expect = {**expect, "evil": LIAR_RECORDS}
            wait_until(lambda: converged([n0, n1], expect), timeout=120, what="the liar's records")
            # the truth after all 80 records, one weight moved, every hash consistent with it:
            # it offers more records than n0's snapshot, so a joiner tries it first
            snap, blocks = forged_snapshot(n0.data_dir, tmp_path / "evil")
            assert snap.records == 80
            liar.sha, liar.snap = file_sha256(snap.path), snap

            # the liar is refused; the joiner takes n0's snapshot and replays the tail
            n2.start()
            expect = {**expect, "n2": 2}
            wait_until(lambda: converged([n0, n1, n2], expect), timeout=300, what="n2 to agree")
            st = n2.status(fresh=True)
            assert st["join"]["refused"] == {"evil": 1}, st["join"]
            assert st["join"]["state"] == "done", st["join"]
            assert st["join"]["donor"] == "n0"
            assert st["join"]["records"] == 60
            assert st["join"]["audit_blocks"] == blocks
            assert st["fingerprint"] == n0.status(fresh=True)["fingerprint"] != snap.fingerprint

            # with no honest snapshot left to take (n1 has none, n0 and n2 are gone), the
            # joiner replays
            for n in (n0, n2):
                assert n.stop() == 0, n.tail()
            n3.start()
            expect = {**expect, "n3": 2}
            wait_until(lambda: converged([n1, n3], expect), timeout=300, what="n3 to agree")
            st = n3.status(fresh=True)
            assert st["join"]["refused"] == {"evil": 1}, st["join"]
            assert st["join"]["state"] == "replay", st["join"]
            assert st["fingerprint"] == n1.status(fresh=True)["fingerprint"]
            assert not list((n3.data_dir / "incoming").glob("*")), "the forged file was deleted"
        finally:
            lt.loop.call_soon_threadsafe(liar.stop.set)
            talking.result(30)
            lt.call(runner.cleanup)
