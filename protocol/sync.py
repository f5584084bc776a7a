"""Gap filling: deciding which records to ask which peer for (sans-IO).

Theory of operation
-------------------
The broker is a transport, not the log: it may drop, duplicate or delay frames, and a node that
was down misses everything published meanwhile (beyond what a persistent session queues). So
every node advertises, in its retained presence, the version vector of what it *holds*. The
planner compares that with what this node holds and asks for the difference.

Invariants:
  * A request names one node's range ``[first, first + count)`` starting at our own prefix, so
    every answer is immediately useful (it extends the contiguous prefix).
  * At most one request per node is in flight: while its answer arrives (the prefix is inside
    the requested range) nothing more is asked. A request whose answer is complete is followed
    by the next one at once; one that is not complete after ``retry_after`` seconds is repeated
    from the new prefix, rotating through the peers that hold the range if nothing arrived,
    so a dead or slow peer only delays the fill.
  * The planner reads no clock: ``now`` comes from the caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .vv import VersionVector


@dataclass(frozen=True, slots=True)
class PeerView:
    """What this node knows of a peer from its presence."""

    node: str
    alive: bool
    held: VersionVector


@dataclass(frozen=True, slots=True)
class Request:
    """Ask ``target`` for ``count`` records of ``node`` starting at ``first``."""

    target: str
    node: str
    first: int
    count: int


@dataclass(slots=True)
class _Inflight:
    first: int
    count: int
    sent_at: float
    attempt: int


@dataclass(slots=True)
class SyncPlanner:
    me: str
    max_request: int = 4096
    retry_after: float = 3.0
    _inflight: dict[str, _Inflight] = field(default_factory=dict)

    def plan(self, held: VersionVector, peers: Mapping[str, PeerView], now: float) -> list[Request]:
        """The requests to send now, given what we hold and what the peers advertise."""
        out: list[Request] = []
        live = {name: p for name, p in peers.items() if p.alive and name != self.me}
        wanted: set[str] = set()
        for p in live.values():
            wanted.update(p.held)
        for node in sorted(wanted):
            if node == self.me:
                continue  # a node never asks for its own records: it is their only author
            mine = held.get(node, 0)
            holders = sorted(
                (name for name, p in live.items() if p.held.get(node, 0) > mine),
                key=lambda name: (name != node, -live[name].held.get(node, 0), name),
            )
            if not holders:
                self._inflight.pop(node, None)
                continue
            prev = self._inflight.get(node)
            answering = prev is not None and prev.first <= mine < prev.first + prev.count
            if answering and prev is not None and now - prev.sent_at < self.retry_after:
                continue  # the answer is still arriving: a second request would only duplicate it
            attempt = prev.attempt + 1 if prev is not None and prev.first == mine else 0
            target = holders[attempt % len(holders)]
            count = min(live[target].held.get(node, 0) - mine, self.max_request)
            self._inflight[node] = _Inflight(mine, count, now, attempt)
            out.append(Request(target, node, mine, count))
        return out

    def forget(self, node: str) -> None:
        self._inflight.pop(node, None)
