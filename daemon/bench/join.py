"""``seedswarm bench join``: how soon a late joiner is current, by replay and by snapshot.

One run of ``--records`` R records (random bytes from 64 nodes, as a swarm's log would hold),
then a newcomer catches up both ways, side by side, on the same machine:

  replay    the base plus every record, in log order (what ``--join replay`` does)
  snapshot  the donor's snapshot of the first R - T records (T = ``--tail``: records the
            donor applied since its newest snapshot) fetched over real HTTP from the node's
            own serving code (daemon/node/join.py), hashed, read, audited against the log
            (``--audit-blocks`` blocks of the joiner's secret choice), loaded (its weights must
            hash to its fingerprint), then the tail replayed

Both arms need the log (a byte a record, fetched by gap filling) and the base model, so
neither is counted; the figure is the time from "the log is here" to "current". The joiner's
fingerprint must equal the donor's at the end of both arms, or the bench fails.

Then the audit's detection: a snapshot with one element moved by one grid step, audited with
the block that holds it among the chosen ones (refused) and without (passed), and the rate at
which ``--trials`` secret draws of k blocks include it, next to k / B.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import torch
from aiohttp import web

from seedswarm.daemon.console import table
from seedswarm.daemon.errors import ConfigError
from seedswarm.daemon.node.download import DonorInfo
from seedswarm.daemon.node.join import (
    JoinProgress,
    Offer,
    fetch_snapshot,
    file_sha256,
    read_checked,
    snapshot_routes,
)
from seedswarm.daemon.node.startup import resolve_device
from seedswarm.daemon.store import snapshots
from seedswarm.model.audit import Block, audit, choose_blocks, total_blocks
from seedswarm.model.engine import Engine
from seedswarm.model.hyper import Hyper
from seedswarm.model.replica import Replica
from seedswarm.protocol.manifest import TaskSpec
from seedswarm.protocol.philox import BLOCK
from seedswarm.protocol.records import Record
from seedswarm.protocol.vv import digest

from .settings import BenchSettings

NODES = 64


@dataclass(frozen=True, slots=True)
class Detection:
    """The audit's detection of one element moved by one grid step."""

    blocks_total: int
    detect_expected: float  # k / B
    detect_measured: float  # over ``trials`` secret draws
    trials: int
    caught_when_chosen: bool
    passed_when_not_chosen: bool
    detect_1pct_blocks: float  # a snapshot altered in 1% of its blocks


@dataclass(frozen=True, slots=True)
class JoinResult:
    model: str
    params: int
    device: str
    kernel: str
    records: int
    tail: int
    headroom_bits: float
    replay_s: float  # the base plus every record
    snapshot_bytes: int
    fetch_s: float
    read_s: float
    audit_s: float
    audit_blocks: int
    audit_elements: int
    load_s: float
    tail_s: float
    fingerprint: str  # the donor's, and the joiner's after either arm
    detection: Detection

    @property
    def snapshot_s(self) -> float:
        return self.fetch_s + self.read_s + self.audit_s + self.load_s + self.tail_s

    def to_json(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "detection"}
        return {
            **out,
            "replay_records_per_s": self.records / self.replay_s,
            "snapshot_s": self.snapshot_s,
            "speedup": self.replay_s / self.snapshot_s,
            **asdict(self.detection),
        }


def run_records(n: int, rng: random.Random) -> list[Record]:
    """``n`` records of ``NODES`` nodes in a log's total order, q uniform in -127..127."""
    names = [f"node{i:02d}" for i in range(NODES)]
    seqs = dict.fromkeys(names, 0)
    out = []
    for clock in range(n):
        node = names[clock % NODES]
        out.append(Record(node, seqs[node], rng.randint(-127, 127), clock))
        seqs[node] += 1
    return out


def _vv(records: list[Record]) -> dict[str, int]:
    vv: dict[str, int] = {}
    for r in records:
        vv[r.node] = r.seq + 1
    return vv


class _Served:
    def __init__(self, snap: snapshots.SnapshotInfo) -> None:
        self.snap, self.sha = snap, file_sha256(snap.path)

    def served_snapshot(self) -> tuple[snapshots.SnapshotInfo, str]:
        return self.snap, self.sha


async def _fetch(
    snap: snapshots.SnapshotInfo, layout: snapshots.SnapshotLayout, into: Path
) -> tuple[Path, DonorInfo, float]:
    """Serve ``snap`` on a local port with the node's routes and download it as a joiner does."""
    app = web.Application()
    app.add_routes(snapshot_routes(_Served(snap)))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    offer = Offer("donor", f"http://127.0.0.1:{port}", digest(snap.version_vector),
                  snap.fingerprint, snap.records)  # fmt: skip
    try:
        t0 = time.perf_counter()
        async with aiohttp.ClientSession() as http:
            path, info = await fetch_snapshot(offer, layout, into, JoinProgress("snapshot"), http)
        return path, info, time.perf_counter() - t0
    finally:
        await runner.cleanup()


def bench_join(s: BenchSettings) -> JoinResult:
    total, tail, k = s.records, s.tail, s.audit_blocks
    if not 0 <= tail < total:
        raise ConfigError(f"--tail {tail}: give 0 <= tail < --records ({total})")
    records = run_records(total, random.Random(0))
    head = records[: total - tail]

    # the donor: a run of R records, with a snapshot after the first R - T
    donor = Engine.build(
        "bench-join", s.model, TaskSpec(kind="causal_lm", seq_len=max(s.seq_len, 8)),
        Hyper(), device=resolve_device(s.device), kernel=s.kernel,
    )  # fmt: skip
    t0 = time.perf_counter()
    donor.apply(head)
    head_s = time.perf_counter() - t0
    state, fingerprint = donor.trainable_state(), donor.fingerprint()
    t0 = time.perf_counter()
    donor.apply(records[total - tail :])
    replay_s = head_s + time.perf_counter() - t0  # the replay arm: base + every record
    current = donor.fingerprint()
    bits = donor.headroom(measure=True).bits

    joiner = Engine.open(donor.manifest, device=donor.device, kernel=s.kernel)
    replica = Replica(joiner, "joiner")
    with tempfile.TemporaryDirectory(prefix="seedswarm-bench-join-") as tmp:
        snap = snapshots.save(
            Path(tmp) / "donor", state, run_id=donor.run_id.hex(),
            version_vector=_vv(head), fingerprint=fingerprint,
        )  # fmt: skip
        size = snap.path.stat().st_size
        del state
        layout = snapshots.SnapshotLayout.of((n, p.shape) for n, p in joiner.trainable)
        path, info, fetch_s = asyncio.run(_fetch(snap, layout, Path(tmp) / "incoming"))
        t0 = time.perf_counter()
        got, tensors = read_checked(path, donor.run_id.hex(), info, layout)
        read_s = time.perf_counter() - t0
        rng = random.Random(1)
        t0 = time.perf_counter()
        result = audit(joiner, tensors, head, choose_blocks(joiner, k, rng))
        audit_s = time.perf_counter() - t0
        if not result.passed:
            raise AssertionError("the honest snapshot failed its audit: replicas disagree")
        t0 = time.perf_counter()
        if not replica.load(tensors, got.version_vector, got.fingerprint):
            raise AssertionError("the snapshot does not hash to its fingerprint")
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        replica.apply(records[total - tail :])
        tail_s = time.perf_counter() - t0
        if joiner.fingerprint() != current:
            raise AssertionError("the joiner is not at the donor's weights after the tail")
        detection = _detection(joiner, tensors, head, k, s.trials, rng)
    return JoinResult(
        model=s.model, params=donor.numel, device=str(donor.device), kernel=donor.backend.name,
        records=total, tail=tail, headroom_bits=bits, replay_s=replay_s, snapshot_bytes=size,
        fetch_s=fetch_s, read_s=read_s, audit_s=audit_s, audit_blocks=result.blocks,
        audit_elements=result.elements, load_s=load_s, tail_s=tail_s, fingerprint=current,
        detection=detection,
    )  # fmt: skip


def _detection(
    engine: Engine,
    tensors: dict[str, torch.Tensor],
    records: list[Record],
    k: int,
    trials: int,
    rng: random.Random,
) -> Detection:
    """The audit against a snapshot with one element moved by one grid step."""
    b_total = total_blocks(engine)
    t = max(range(len(engine.grids)), key=lambda i: engine.grids[i].numel)
    name = engine.trainable[t][0]
    bad = Block(t, rng.randrange(engine.grids[t].numel // BLOCK))
    forged = dict(tensors)
    forged[name] = tensors[name].clone()
    flat = forged[name].view(-1)
    e = bad.block * BLOCK + rng.randrange(BLOCK)
    flat[e] = flat[e] + 2.0 ** engine.grids[t].exp
    # ``engine`` holds the snapshot's weights now; the audit starts from the base, as a joiner's
    other = [b for b in choose_blocks(engine, k, rng) if b != bad][: max(0, k - 1)]
    base = Engine.open(engine.manifest, device=engine.device)
    caught = not audit(base, forged, records, [bad, *other]).passed
    missed = audit(base, forged, records, other).passed
    draws = (choose_blocks(engine, k, random.Random(rng.getrandbits(64))) for _ in range(trials))
    hits = sum(bad in d for d in draws)
    return Detection(
        blocks_total=b_total,
        detect_expected=min(1.0, k / b_total),
        detect_measured=hits / trials,
        trials=trials,
        caught_when_chosen=caught,
        passed_when_not_chosen=missed,
        detect_1pct_blocks=1 - (1 - 0.01) ** min(k, b_total),
    )


def print_join(result: JoinResult) -> str:
    r = result.to_json()
    rows = [
        ["replay (base + every record)", f"{r['replay_s']:.2f}", "1.00x",
         f"{r['replay_records_per_s']:.0f} records/s"],
        ["snapshot: fetch over HTTP", f"{r['fetch_s']:.2f}", "",
         f"{r['snapshot_bytes'] / 1e6:.1f} MB, hashed"],
        ["snapshot: read + check", f"{r['read_s']:.2f}", "", ""],
        ["snapshot: audit", f"{r['audit_s']:.2f}", "",
         f"{r['audit_blocks']} blocks of {r['blocks_total']} against {r['records'] - r['tail']} records"],
        ["snapshot: load + fingerprint", f"{r['load_s']:.2f}", "", ""],
        ["snapshot: replay the tail", f"{r['tail_s']:.2f}", "", f"{r['tail']} records"],
        ["snapshot, in all", f"{r['snapshot_s']:.2f}", f"{r['speedup']:.1f}x sooner", ""],
    ]  # fmt: skip
    head = (
        f"model {r['model']} ({r['params'] / 1e6:.1f}M trainable), {r['records']} records, "
        f"{r['device']}, {r['kernel']} kernel; the same fingerprint at the end of both arms"
    )
    detect = (
        f"audit of {r['audit_blocks']} of {r['blocks_total']} blocks: one altered element is "
        f"caught with probability k/B = {r['detect_expected']:.4f} (measured over "
        f"{r['trials']} secret draws: {r['detect_measured']:.4f}); caught when its block is "
        f"drawn: {r['caught_when_chosen']}, passed when not: {r['passed_when_not_chosen']}; "
        f"a snapshot altered in 1% of its blocks is caught with probability "
        f"{r['detect_1pct_blocks']:.4f}"
    )
    return "\n".join([head, table(["", "seconds", "vs replay", ""], rows), detect])
