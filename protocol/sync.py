"""Gap filling: deciding which records to ask which peer for (sans-IO).

Theory of operation
-------------------
The broker is a transport, not the log: it may drop, duplicate or delay frames, and a node that
was down misses everything published meanwhile. So a node collects *claims*: "holder H holds
records of node N up to seq E". They come from an author's presence (``own``) and frames (a
frame beyond a gap says its author holds at least its end), and from the full version vector a
peer sends when asked. The planner asks for the difference between the claims and what this
node holds.

It is incremental: only nodes with a claim above what this node holds are *open*, and a plan
looks at those alone, so a heartbeat costs O(open nodes), not O(every node of the swarm).

Invariants:
  * A request names one node's range ``[first, first + count)`` starting at our own prefix, so
    every answer is immediately useful (it extends the contiguous prefix).
  * At most one request per node is in flight: while its answer arrives (the prefix is inside
    the requested range) nothing more is asked. A request whose answer is complete is followed
    by the next one at once; one that is not complete after ``retry_after`` seconds is repeated
    from the new prefix, rotating through the holders if nothing arrived, so a dead or slow
    peer only delays the fill.
  * The author of a node's records is asked first; whom else to ask is the caller's choice
    (``eligible``: in an open run a live author is the only source of its own records).
  * A node never asks for its own records: it is their only author.
  * The planner reads no clock: ``now`` comes from the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


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
    _claims: dict[str, dict[str, int]] = field(default_factory=dict)  # node -> holder -> end
    _open: set[str] = field(default_factory=set)  # nodes with a claim above what we hold
    _inflight: dict[str, _Inflight] = field(default_factory=dict)

    def claim(self, holder: str, node: str, end: int, held: int) -> None:
        """``holder`` says it holds ``node``'s records below ``end``; we hold ``held`` of them."""
        if node == self.me or end <= 0:
            return
        claims = self._claims.setdefault(node, {})
        if end > claims.get(holder, 0):
            claims[holder] = end
        if end > held:
            self._open.add(node)

    def forget(self, holder: str) -> None:
        """``holder`` is gone for good (pruned): its claims are of no use any more."""
        for node in [n for n, c in self._claims.items() if holder in c]:
            del self._claims[node][holder]
            if not self._claims[node]:
                del self._claims[node]
                self._open.discard(node)
                self._inflight.pop(node, None)

    @property
    def open_nodes(self) -> int:
        return len(self._open)

    def plan(
        self,
        held: Callable[[str], int],
        eligible: Callable[[str, str], bool],
        now: float,
        *,
        limit: int = 64,
    ) -> list[Request]:
        """The requests to send now (at most ``limit``).

        ``held(node)``: our contiguous prefix of ``node``; ``eligible(holder, node)``: whether
        ``holder`` may be asked for ``node``'s records now (alive, and trusted for them).
        """
        out: list[Request] = []
        for node in sorted(self._open):
            if len(out) >= limit:
                break
            mine = held(node)
            claims = self._claims.get(node, {})
            holders = sorted(
                (h for h, end in claims.items() if end > mine and eligible(h, node)),
                key=lambda h: (h != node, -claims[h], h),
            )
            if not holders:
                if all(end <= mine for end in claims.values()):
                    self._open.discard(node)  # nothing left to fetch
                    self._inflight.pop(node, None)
                continue  # claims above us, but nobody to ask now: keep the node open
            prev = self._inflight.get(node)
            answering = prev is not None and prev.first <= mine < prev.first + prev.count
            if answering and prev is not None and now - prev.sent_at < self.retry_after:
                continue  # the answer is still arriving: a second request would only duplicate it
            attempt = prev.attempt + 1 if prev is not None and prev.first == mine else 0
            target = holders[attempt % len(holders)]
            count = min(claims[target] - mine, self.max_request)
            self._inflight[node] = _Inflight(mine, count, now, attempt)
            out.append(Request(target, node, mine, count))
        return out
