"""``seedswarm bench control``: what the control plane costs one node as the swarm grows.

Measured in-process on the real ``Session`` (protocol/session.py), without a network: this is
the control plane's CPU at one node, not the broker's. For each swarm size N in ``--peers``,
a node is built that holds records of N peers (``PEER_RECORDS`` each) and its own, in an open
run, and then:

  presence   the bytes of its own presence as it goes on the wire (``Session.presence``), open
             and signed (the same presence, signed by the node's key)
  heartbeat  one heartbeat round at that node: N peers' presences received (``receive``), its
             own presence encoded, one gap-filling plan (``wants(now)``) and ``tick(now)``, in
             two states: *in sync* (every peer holds what the node holds: nothing to ask) and
             *behind* (every peer is one record ahead: every node is open, the plan has work)
  frame      the cost to accept one frame: ``receive`` of a one-record frame on
             ``records/<peer>``, each continuing its author's prefix, round-robin over the peers
  vv copy    one ``log.held()``: the node's whole version vector as a fresh dict, which the
             session builds for every presence and plan and the daemon once per inbox batch

Times are this thread's CPU time (``time.thread_time``: what the control plane costs the node,
not how long a shared machine kept it waiting), medians over ``--repeats`` rounds after one
warm-up round. Ratios are against the smallest N, per message (a presence received, a frame
accepted), so a cost of O(1) per message reads as a ratio near 1 at every N.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any

from seedswarm.protocol.codec import encode_frame
from seedswarm.protocol.manifest import Manifest, TaskSpec
from seedswarm.protocol.messages import Presence, encode_presence
from seedswarm.protocol.records import Frame
from seedswarm.protocol.session import Dropped, FrameAccepted, Session
from seedswarm.protocol.signing import NodeKey
from seedswarm.protocol.vv import digest_bytes

from .console import table
from .errors import ConfigError

ME = "me"
PEER_RECORDS = 8  # records of each peer the node holds when a measurement starts
OWN_RECORDS = 8
FRAMES = 1000  # frames received per timed round of the accept measurement
VV_COPIES = 20  # log.held() calls per timed round
HEARTBEAT_S = 60.0  # the daemon's default presence interval: rounds are this far apart
HTTP = "http://10.0.0.1:8080"  # a typical status URL, in every presence
LOSS = 2.5
MANIFEST = Manifest(name="bench", model="tiny", base_hash="0" * 64, task=TaskSpec(kind="causal_lm"))


def peer_sizes(raw: str) -> list[int]:
    """``--peers 10,100,1000``: positive integers, at least one."""
    try:
        sizes = [int(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ConfigError("--peers: a comma-separated list of positive integers, e.g. 10,100,1000")
    return sizes


def _names(n: int) -> list[str]:
    return [f"p{i:05d}" for i in range(n)]


def _peer_presence(session: Session, name: str, own: int, held: dict[str, int]) -> bytes:
    p = Presence(
        node=name,
        run_id=session.run_id,
        alive=True,
        own=own,
        held_digest=digest_bytes(held),
        held_total=sum(held.values()),
        steps=own,
        loss=LOSS,
        http=HTTP,
    )
    return encode_presence(p)


def _node(n: int) -> tuple[Session, list[str]]:
    """A node that heard N peers announce themselves and holds their first records."""
    s = Session(MANIFEST, ME)
    s.http = HTTP
    names = _names(n)
    vv = dict.fromkeys(names, PEER_RECORDS) | {ME: OWN_RECORDS}
    for name in names:
        _check(s.receive(s.topics.presence(name), _peer_presence(s, name, PEER_RECORDS, vv), 0.0))
    for name in names:
        f = Frame(s.run_id, name, 0, s.log.max_clock + 1, bytes([1]) * PEER_RECORDS)
        _check(s.receive(s.topics.records(name), encode_frame(f), 0.0))
    s.stored(s.seal([1] * OWN_RECORDS))
    if s.log.held() != dict(sorted(vv.items())):
        raise RuntimeError("bench control: the node does not hold what it was given")
    return s, names


def _check(events: list[Any]) -> None:
    bad = [e for e in events if isinstance(e, Dropped)]
    if bad:
        raise RuntimeError(f"bench control: the session dropped its input: {bad[0]}")


def _presence_bytes(s: Session) -> dict[str, int]:
    key = NodeKey.generate()
    signed = Session(MANIFEST.replace(keys=((ME, key.public_hex()),)), ME, key=key, log=s.log)
    signed.http, signed.own_stored = s.http, s.own_stored
    return {
        "open": len(s.presence(steps=OWN_RECORDS, loss=LOSS).payload),
        "signed": len(signed.presence(steps=OWN_RECORDS, loss=LOSS).payload),
    }


def _heartbeat(n: int, repeats: int, *, behind: bool) -> dict[str, Any]:
    """Medians of one heartbeat round's parts, and the wants one round sends."""
    s, names = _node(n)
    ahead = 1 if behind else 0
    vv = dict.fromkeys(names, PEER_RECORDS + ahead) | {ME: OWN_RECORDS}
    # what the peers send is their work, not this node's: encoded before the clock starts
    presences = [
        (s.topics.presence(name), _peer_presence(s, name, PEER_RECORDS + ahead, vv))
        for name in names
    ]
    parts: dict[str, list[float]] = {"receive": [], "presence": [], "wants": [], "tick": []}
    sent: list[int] = []
    for r in range(repeats + 1):
        now = HEARTBEAT_S * (r + 1)
        events: list[Any] = []
        gc.collect()
        t0 = time.thread_time()
        for topic, payload in presences:
            events += s.receive(topic, payload, now)
        t1 = time.thread_time()
        s.presence(steps=OWN_RECORDS, loss=LOSS)
        t2 = time.thread_time()
        out = s.wants(now)
        t3 = time.thread_time()
        events += s.tick(now)
        t4 = time.thread_time()
        t = [t1 - t0, t2 - t1, t3 - t2, t4 - t3]
        _check(events)
        if r == 0:
            continue  # the warm-up round
        for name, value in zip(parts, t, strict=True):
            parts[name].append(value)
        sent.append(len(out))
    seconds = {name: statistics.median(v) for name, v in parts.items()}
    seconds["total"] = sum(seconds.values())
    return {"seconds": seconds, "messages_out": max(sent)}


def _frame_accept(n: int, repeats: int) -> float:
    """Median seconds to receive one new one-record frame from a peer."""
    s, names = _node(n)
    seqs = dict.fromkeys(names, PEER_RECORDS)
    clock = s.log.max_clock
    rounds = []
    for _ in range(repeats + 1):
        batch = []
        for i in range(FRAMES):
            name = names[i % n]
            clock += 1
            f = Frame(s.run_id, name, seqs[name], clock, bytes([1 + i % 100]))
            seqs[name] += 1
            batch.append((s.topics.records(name), encode_frame(f)))
        rounds.append(batch)
    per_frame = []
    for r, batch in enumerate(rounds):
        now = 1.0 + r
        got = []
        gc.collect()
        t0 = time.thread_time()
        for topic, payload in batch:
            got.append(s.receive(topic, payload, now))
        t = time.thread_time() - t0
        if not all(len(e) == 1 and isinstance(e[0], FrameAccepted) for e in got):
            raise RuntimeError("bench control: a frame was not accepted")
        if r:
            per_frame.append(t / FRAMES)
    return statistics.median(per_frame)


def _vv_copy(n: int, repeats: int) -> float:
    s, _ = _node(n)
    times = []
    for _ in range(repeats + 1):
        gc.collect()
        t0 = time.thread_time()
        for _ in range(VV_COPIES):
            s.log.held()
        times.append((time.thread_time() - t0) / VV_COPIES)
    return statistics.median(times[1:])


def bench_control(values: dict[str, Any]) -> dict[str, Any]:
    sizes = peer_sizes(values["peers"])
    repeats = values["repeats"]
    rows: list[dict[str, Any]] = []
    for n in sizes:  # one measurement at a time: nothing else of this bench runs meanwhile
        s, _ = _node(n)
        rows.append(
            {
                "peers": n,
                "presence_bytes": _presence_bytes(s),
                "heartbeat": {
                    "in_sync": _heartbeat(n, repeats, behind=False),
                    "behind": _heartbeat(n, repeats, behind=True),
                },
                "frame_accept_seconds": _frame_accept(n, repeats),
                "vv_copy_seconds": _vv_copy(n, repeats),
            }
        )
    first = rows[0]
    for row in rows:
        ratios: dict[str, float] = {
            "presence_bytes": row["presence_bytes"]["open"] / first["presence_bytes"]["open"],
            "frame_accept": row["frame_accept_seconds"] / first["frame_accept_seconds"],
            "receive_per_presence": _per_presence(row) / _per_presence(first),
        }
        for state in ("in_sync", "behind"):
            mine = row["heartbeat"][state]["seconds"]["total"] / row["peers"]
            base = first["heartbeat"][state]["seconds"]["total"] / first["peers"]
            ratios[f"heartbeat_per_peer_{state}"] = mine / base
        row["ratios"] = ratios
    return {
        "peers": sizes,
        "repeats": repeats,
        "clock": "thread CPU time",
        "frames_per_round": FRAMES,
        "peer_records": PEER_RECORDS,
        "rows": rows,
    }


def _per_presence(row: dict[str, Any]) -> float:
    """Seconds to receive one peer's presence (in sync)."""
    return float(row["heartbeat"]["in_sync"]["seconds"]["receive"]) / int(row["peers"])


def print_control(result: dict[str, Any]) -> str:
    n0 = result["rows"][0]["peers"]
    head = (
        f"one node's control plane, in-process on the real Session (open run), CPU time, median of "
        f"{result['repeats']}; ratios against N = {n0} (1.00x: the same cost per message)"
    )
    rows = []
    for row in result["rows"]:
        hb, r = row["heartbeat"], row["ratios"]
        sync, behind = hb["in_sync"]["seconds"], hb["behind"]["seconds"]
        rest = sync["presence"] + sync["wants"] + sync["tick"]
        rows.append(
            [
                row["peers"],
                f"{row['presence_bytes']['open']}/{row['presence_bytes']['signed']}",
                f"{sync['total'] * 1e3:.2f}",
                f"{_per_presence(row) * 1e6:.1f}",
                f"{r['receive_per_presence']:.2f}x",
                f"{rest * 1e6:.0f}",
                f"{behind['total'] * 1e3:.2f}",
                hb["behind"]["messages_out"],
                f"{row['frame_accept_seconds'] * 1e6:.1f}",
                f"{r['frame_accept']:.2f}x",
                f"{row['vv_copy_seconds'] * 1e6:.1f}",
            ]
        )
    main = table(
        [
            "peers",
            "presence B open/signed",
            "heartbeat ms",
            "us/presence in",
            "vs N0",
            "own presence+plan+tick us",
            "behind: heartbeat ms",
            "msgs out",
            "frame accept us",
            "vs N0",
            "vv copy us",
        ],
        rows,
    )
    parts = table(
        ["peers", "state", "receive ms", "own presence us", "wants us", "tick us"],
        [
            [
                row["peers"],
                state.replace("_", " "),
                f"{s['receive'] * 1e3:.2f}",
                f"{s['presence'] * 1e6:.0f}",
                f"{s['wants'] * 1e6:.0f}",
                f"{s['tick'] * 1e6:.0f}",
            ]
            for row in result["rows"]
            for state in ("in_sync", "behind")
            for s in [row["heartbeat"][state]["seconds"]]
        ],
    )
    return f"{head}\n{main}\n\none heartbeat round, by part\n{parts}"
