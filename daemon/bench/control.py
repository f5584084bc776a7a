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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from seedswarm.daemon.console import table
from seedswarm.protocol.codec import encode_frame
from seedswarm.protocol.events import Dropped, Event, FrameAccepted
from seedswarm.protocol.log import content_digest
from seedswarm.protocol.manifest import Manifest, TaskSpec
from seedswarm.protocol.messages import Presence, encode_presence
from seedswarm.protocol.records import Frame
from seedswarm.protocol.session import Session
from seedswarm.protocol.signing import NodeKey
from seedswarm.protocol.vv import held_digest

from .settings import BenchSettings, sizes

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
    return sizes(raw, "peers", "10,100,1000")


@dataclass(frozen=True, slots=True)
class HeartbeatParts:
    """Median seconds of one heartbeat round's parts."""

    receive: float  # N peers' presences received
    presence: float  # its own presence encoded
    wants: float  # one gap-filling plan
    tick: float

    @property
    def total(self) -> float:
        return self.receive + self.presence + self.wants + self.tick


@dataclass(frozen=True, slots=True)
class Heartbeat:
    seconds: HeartbeatParts
    messages_out: int  # wants and vv requests one round sends

    def to_json(self) -> dict[str, Any]:
        p = self.seconds
        seconds = {"receive": p.receive, "presence": p.presence, "wants": p.wants, "tick": p.tick}
        return {"seconds": {**seconds, "total": p.total}, "messages_out": self.messages_out}


@dataclass(frozen=True, slots=True)
class ControlRow:
    peers: int
    presence_open: int  # bytes of the node's presence, open
    presence_signed: int  # ... and signed
    in_sync: Heartbeat
    behind: Heartbeat
    frame_accept_seconds: float
    vv_copy_seconds: float

    @property
    def per_presence(self) -> float:
        """Seconds to receive one peer's presence (in sync)."""
        return self.in_sync.seconds.receive / self.peers


@dataclass(frozen=True, slots=True)
class ControlResult:
    repeats: int
    rows: tuple[ControlRow, ...]

    def ratios(self, row: ControlRow) -> dict[str, float]:
        """Against the smallest swarm, per message: 1.00 is the same cost per message."""
        first = self.rows[0]
        out = {
            "presence_bytes": row.presence_open / first.presence_open,
            "frame_accept": row.frame_accept_seconds / first.frame_accept_seconds,
            "receive_per_presence": row.per_presence / first.per_presence,
        }
        for state in ("in_sync", "behind"):
            mine: Heartbeat = getattr(row, state)
            base: Heartbeat = getattr(first, state)
            out[f"heartbeat_per_peer_{state}"] = (mine.seconds.total / row.peers) / (
                base.seconds.total / first.peers
            )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "peers": [row.peers for row in self.rows],
            "repeats": self.repeats,
            "clock": "thread CPU time",
            "frames_per_round": FRAMES,
            "peer_records": PEER_RECORDS,
            "rows": [
                {
                    "peers": row.peers,
                    "presence_bytes": {"open": row.presence_open, "signed": row.presence_signed},
                    "heartbeat": {"in_sync": row.in_sync.to_json(), "behind": row.behind.to_json()},
                    "frame_accept_seconds": row.frame_accept_seconds,
                    "vv_copy_seconds": row.vv_copy_seconds,
                    "ratios": self.ratios(row),
                }
                for row in self.rows
            ],
        }


def _names(n: int) -> list[str]:
    return [f"p{i:05d}" for i in range(n)]


def _peer_presence(session: Session, name: str, own: int, held: dict[str, int]) -> bytes:
    p = Presence(
        node=name,
        run_id=session.run_id,
        alive=True,
        own=own,
        held_digest=held_digest(_contents(held)),
        held_total=sum(held.values()),
        steps=own,
        loss=LOSS,
        http=HTTP,
    )
    return encode_presence(p)


def _contents(held: dict[str, int]) -> dict[str, tuple[int, bytes]]:
    """What a node holding ``held`` of this bench's records holds: every record byte is 1."""
    return {n: (k, content_digest(n, bytes([1]) * k)) for n, k in held.items()}


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


def _check(events: Sequence[Event]) -> None:
    bad = [e for e in events if isinstance(e, Dropped)]
    if bad:
        raise RuntimeError(f"bench control: the session dropped its input: {bad[0]}")


def _presence_bytes(s: Session) -> tuple[int, int]:
    """(open, signed) bytes of the node's presence."""
    key = NodeKey.generate()
    signed = Session(MANIFEST.replace(keys=((ME, key.public_hex()),)), ME, key=key, log=s.log)
    signed.http, signed.own_stored = s.http, s.own_stored
    return (
        len(s.presence(steps=OWN_RECORDS, loss=LOSS).payload),
        len(signed.presence(steps=OWN_RECORDS, loss=LOSS).payload),
    )


def _heartbeat(n: int, repeats: int, *, behind: bool) -> Heartbeat:
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
        events: list[Event] = []
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
    m = {name: statistics.median(v) for name, v in parts.items()}
    return Heartbeat(HeartbeatParts(m["receive"], m["presence"], m["wants"], m["tick"]), max(sent))


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


def bench_control(s: BenchSettings) -> ControlResult:
    rows: list[ControlRow] = []
    for n in peer_sizes(s.peers):  # one measurement at a time: nothing else of this bench runs
        node, _ = _node(n)
        presence_open, presence_signed = _presence_bytes(node)
        rows.append(
            ControlRow(
                peers=n,
                presence_open=presence_open,
                presence_signed=presence_signed,
                in_sync=_heartbeat(n, s.repeats, behind=False),
                behind=_heartbeat(n, s.repeats, behind=True),
                frame_accept_seconds=_frame_accept(n, s.repeats),
                vv_copy_seconds=_vv_copy(n, s.repeats),
            )
        )
    return ControlResult(s.repeats, tuple(rows))


def print_control(result: ControlResult) -> str:
    n0 = result.rows[0].peers
    head = (
        f"one node's control plane, in-process on the real Session (open run), CPU time, median of "
        f"{result.repeats}; ratios against N = {n0} (1.00x: the same cost per message)"
    )
    rows = []
    for row in result.rows:
        r = result.ratios(row)
        sync = row.in_sync.seconds
        rest = sync.presence + sync.wants + sync.tick
        rows.append(
            [
                row.peers,
                f"{row.presence_open}/{row.presence_signed}",
                f"{sync.total * 1e3:.2f}",
                f"{row.per_presence * 1e6:.1f}",
                f"{r['receive_per_presence']:.2f}x",
                f"{rest * 1e6:.0f}",
                f"{row.behind.seconds.total * 1e3:.2f}",
                row.behind.messages_out,
                f"{row.frame_accept_seconds * 1e6:.1f}",
                f"{r['frame_accept']:.2f}x",
                f"{row.vv_copy_seconds * 1e6:.1f}",
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
                row.peers,
                state.replace("_", " "),
                f"{hb.seconds.receive * 1e3:.2f}",
                f"{hb.seconds.presence * 1e6:.0f}",
                f"{hb.seconds.wants * 1e6:.0f}",
                f"{hb.seconds.tick * 1e6:.0f}",
            ]
            for row in result.rows
            for state, hb in (("in_sync", row.in_sync), ("behind", row.behind))
        ],
    )
    return f"{head}\n{main}\n\none heartbeat round, by part\n{parts}"
