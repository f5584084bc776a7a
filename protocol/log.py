"""The ordered update log as a data structure (sans-IO).

Theory of operation
-------------------
Records arrive in frames, from the publisher or relayed by anyone, in any order, any number of
times. ``OrderedLog`` turns that stream into a set of records keyed by ``(node, seq)`` and
answers three questions: is this input new, does it contradict what is held, and which
contiguous prefix of each node's records is complete.

Per node it keeps only the contiguous prefix ``0 .. next_seq-1``: one byte per record plus the
clocks as runs ``(first_seq, clock)``. A million records cost about a megabyte. A frame that
starts beyond the prefix is not kept (``Offered.beyond_gap``): its range is asked for, from its
author, by gap filling. So nobody can park records at a node's future seqs, and memory is
bounded by what is contiguous.

Each node's prefix has a *trusted* part ``0 .. trusted-1``: records that came from their author
(or, in a signed run, with its signature). Records beyond it are *provisional*: copies from a
third party, taken in an open run while the author was away. When the author comes back, the
provisional records are given back (``retract``) and asked for again from their author, so a
third party's copy never blocks the copy its author publishes.

Per node it also keeps the *content digest* of its prefix: a hash of the bytes ``q`` of seqs
``0 .. next_seq-1`` (docs/PROTOCOL.md §8), updated as records arrive and recomputed when a
prefix is cut. Two logs with equal version vectors and equal content digests hold the same
records; presence carries a digest over all of them, so replicas that hold equal vectors but
different bytes (a tampering relay, in an open run) find out.

Invariants:
  * A ``(node, seq)`` holds one byte while it is held. A second, different byte is
    equivocation: the frame that carries it is rejected as a whole and nothing of it is stored.
  * A node's clocks never decrease with seq. A frame that would break this is rejected.
  * ``next_seq(node)`` only grows, except that ``retract`` gives back provisional records.
  * A frame may not raise the largest clock seen by more than ``MAX_CLOCK_JUMP`` (2**32).
  * The total order shown to people is ``(clock, node, seq)`` over the contiguous records.
    It is a presentation: the model state is the *set* of records, not their order.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field

from .errors import ConflictError, ProtocolError
from .records import Frame, Record, byte_to_q

OrderKey = tuple[int, str, int]  # (clock, node, seq)

# A Lamport clock grows by about one per frame. A frame that jumps it by more than this is
# hostile or broken: accepted, it would push every later own frame towards the 2**63 limit.
MAX_CLOCK_JUMP = 1 << 32


@dataclass(frozen=True, slots=True)
class Offered:
    """What a frame contributed: records never seen before, and how many were duplicates."""

    new: tuple[Record, ...]
    duplicates: int
    beyond_gap: bool = False  # it starts after the prefix: nothing was kept


CONTENT_DOMAIN = b"seedswarm/content/v1"
CONTENT_BYTES = 16


def content_start(node: str) -> hashlib._Hash:
    """The content digest's hash before any record of ``node`` (docs/PROTOCOL.md §8)."""
    raw = node.encode()
    return hashlib.sha256(CONTENT_DOMAIN + bytes([len(raw)]) + raw)


def content_digest(node: str, qs: bytes) -> bytes:
    """16 bytes naming the records ``qs`` (one two's-complement byte per record, seqs 0, 1, ..)
    of ``node``: SHA-256(domain || u8(len(node)) || node || qs), cut."""
    h = content_start(node)
    h.update(qs)
    return h.digest()[:CONTENT_BYTES]


@dataclass(slots=True)
class _NodeLog:
    name: str = ""
    held: bytearray = field(default_factory=bytearray)
    run_firsts: list[int] = field(default_factory=list)  # clock runs over the held prefix
    run_clocks: list[int] = field(default_factory=list)
    trusted: int = 0  # records below this came from their author
    hasher: hashlib._Hash | None = None  # the content hash over held[:hashed]
    hashed: int = 0

    @property
    def next_seq(self) -> int:
        return len(self.held)

    def content(self) -> bytes:
        """The content digest of the held prefix (hashing only what came since last time)."""
        if self.hasher is None:
            self.hasher, self.hashed = content_start(self.name), 0
        if self.hashed < len(self.held):
            self.hasher.update(self.held[self.hashed :])
            self.hashed = len(self.held)
        return self.hasher.copy().digest()[:CONTENT_BYTES]

    def clock_of(self, seq: int) -> int:
        return self.run_clocks[bisect.bisect_right(self.run_firsts, seq) - 1]

    def append(self, byte: int, clock: int) -> None:
        if not self.run_clocks or self.run_clocks[-1] != clock:
            self.run_firsts.append(len(self.held))
            self.run_clocks.append(clock)
        self.held.append(byte)

    def truncate(self, seq: int) -> None:
        del self.held[seq:]
        cut = bisect.bisect_left(self.run_firsts, seq)
        del self.run_firsts[cut:]
        del self.run_clocks[cut:]
        self.trusted = min(self.trusted, seq)
        if seq < self.hashed:  # the hash covers records no longer held: start it again
            self.hasher, self.hashed = None, 0


class OrderedLog:
    """The set of records of one run, with contiguous-prefix tracking and a total order."""

    def __init__(self) -> None:
        self._nodes: dict[str, _NodeLog] = {}
        self._max_clock = 0
        self._held_total = 0

    # -- queries -----------------------------------------------------------------------------

    @property
    def max_clock(self) -> int:
        """The largest clock seen; a new batch of own records takes ``max_clock + 1``."""
        return self._max_clock

    def next_seq(self, node: str) -> int:
        n = self._nodes.get(node)
        return 0 if n is None else n.next_seq

    def held(self) -> dict[str, int]:
        """Version vector of the contiguous records held."""
        return {k: v.next_seq for k, v in sorted(self._nodes.items()) if v.next_seq}

    def held_count(self) -> int:
        return self._held_total

    def content(self, node: str) -> bytes:
        """The content digest of ``node``'s held prefix (16 bytes)."""
        n = self._nodes.get(node)
        return content_digest(node, b"") if n is None else n.content()

    def content_at(self, node: str, end: int) -> bytes:
        """The content digest of ``node``'s first ``end`` records (``end`` <= its next seq)."""
        n = self._nodes.get(node)
        held = b"" if n is None else bytes(n.held[:end])
        if len(held) != end:
            raise ValueError(f"{node}: {end} records asked for, {len(held)} held")
        return content_digest(node, held)

    def held_content(self) -> dict[str, tuple[int, bytes]]:
        """``{node: (next_seq, content digest)}`` for every node with records, sorted."""
        return {k: (v.next_seq, v.content()) for k, v in sorted(self._nodes.items()) if v.next_seq}

    def provisional(self, node: str) -> int:
        """How many of ``node``'s records are provisional (copies from a third party)."""
        n = self._nodes.get(node)
        return 0 if n is None else n.next_seq - n.trusted

    def get(self, node: str, seq: int) -> Record | None:
        n = self._nodes.get(node)
        if n is None or seq >= n.next_seq or seq < 0:
            return None
        return Record(node, seq, byte_to_q(n.held[seq]), n.clock_of(seq))

    def records(self, node: str, start: int, end: int) -> list[Record]:
        """Contiguous records ``start <= seq < end`` of ``node`` (clipped to what is held)."""
        n = self._nodes.get(node)
        if n is None:
            return []
        end = min(end, n.next_seq)
        return [
            Record(node, seq, byte_to_q(n.held[seq]), n.clock_of(seq))
            for seq in range(max(start, 0), end)
        ]

    # -- input -------------------------------------------------------------------------------

    def offer(self, frame: Frame, *, provisional: bool = False, jump_check: bool = True) -> Offered:
        """Add a frame's records; ``provisional``: it is a copy from a third party.

        Raises ``ConflictError`` (equivocation, clock regression) or ``ProtocolError``
        (``clock_jump``), and then nothing of the frame is kept. ``jump_check=False`` leaves
        out the clock-jump rule, which guards live input (its bound is relative to what came
        before) and is no property of a set of records: for a log read back whole (an export).
        """
        if jump_check and frame.clock > self._max_clock + MAX_CLOCK_JUMP:
            raise ProtocolError(
                f"frame of {frame.node} jumps the clock from {self._max_clock} to {frame.clock}",
                reason="clock_jump",
            )
        n = self._nodes.get(frame.node) or _NodeLog(frame.node)
        if frame.first_seq > n.next_seq:
            return Offered((), 0, beyond_gap=True)
        # Check everything before changing anything: a frame is accepted or rejected whole.
        overlap = min(frame.end_seq, n.next_seq) - frame.first_seq
        for i in range(overlap):
            seq = frame.first_seq + i
            if n.held[seq] != frame.qs[i]:
                raise ConflictError(
                    f"equivocation: {frame.node} seq {seq} is {byte_to_q(n.held[seq])} here "
                    f"and {byte_to_q(frame.qs[i])} in the frame",
                    reason="equivocation",
                )
            if n.clock_of(seq) != frame.clock:
                raise ConflictError(
                    f"{frame.node} seq {seq} carries clock {frame.clock}, held with "
                    f"{n.clock_of(seq)}",
                    reason="equivocation",
                )
        if frame.first_seq > 0 and n.clock_of(frame.first_seq - 1) > frame.clock:
            raise ConflictError(
                f"clock {frame.clock} of {frame.node} at seq {frame.first_seq} breaks the "
                "node's clock order",
                reason="clock_regression",
            )
        if not provisional and frame.first_seq <= n.trusted:
            n.trusted = max(n.trusted, frame.end_seq)  # the author's word on all of it
        if overlap == frame.count:
            return Offered((), frame.count)
        self._nodes[frame.node] = n
        for b in frame.qs[overlap:]:
            n.append(b, frame.clock)
        self._held_total += frame.count - overlap
        self._max_clock = max(self._max_clock, frame.clock)
        records = tuple(
            Record(frame.node, frame.first_seq + i, byte_to_q(frame.qs[i]), frame.clock)
            for i in range(overlap, frame.count)
        )
        return Offered(records, overlap)

    def retract(self, node: str) -> list[Record]:
        """Give back ``node``'s provisional records (the author is here to ask instead)."""
        n = self._nodes.get(node)
        if n is None or n.trusted == n.next_seq:
            return []
        gone = self.records(node, n.trusted, n.next_seq)
        n.truncate(n.trusted)
        self._held_total -= len(gone)
        return gone

    def truncate(self, node: str, seq: int = 0) -> list[Record]:
        """Give back every record of ``node`` from ``seq`` on, trusted or not: its copy here
        contradicts its author's (a repair; docs/PROTOCOL.md §9)."""
        n = self._nodes.get(node)
        if n is None or seq >= n.next_seq:
            return []
        gone = self.records(node, seq, n.next_seq)
        n.truncate(seq)
        self._held_total -= len(gone)
        return gone

    def add_own(self, frame: Frame) -> None:
        """Append a node's own new records: it is their author, so nobody else's copy counts.

        ``frame`` must start at the node's prefix, and its clock may not go below the last
        own record's. Raises ``ConflictError`` and changes nothing otherwise.
        """
        n = self._nodes.get(frame.node) or _NodeLog(frame.node)
        if frame.first_seq != n.next_seq:
            raise ConflictError(
                f"own frame starts at {frame.first_seq}, the prefix ends at {n.next_seq}"
            )
        if n.next_seq and frame.clock < n.clock_of(n.next_seq - 1):
            raise ConflictError("own clock went backwards", reason="clock_regression")
        self._nodes[frame.node] = n
        for b in frame.qs:
            n.append(b, frame.clock)
        n.trusted = n.next_seq
        self._held_total += frame.count
        self._max_clock = max(self._max_clock, frame.clock)

    # -- total order -------------------------------------------------------------------------

    def ordered(self, after: OrderKey | None = None) -> Iterator[Record]:
        """Contiguous records in the order ``(clock, node, seq)``, strictly after ``after``."""
        streams = [self._node_stream(name, n, after) for name, n in sorted(self._nodes.items())]
        merged = heapq.merge(*streams, key=lambda r: (r.clock, r.node, r.seq))
        yield from merged

    def _node_stream(self, name: str, n: _NodeLog, after: OrderKey | None) -> Iterator[Record]:
        start = 0
        if after is not None:
            # clocks are non-decreasing in seq, so the order key is monotone in seq: bisect.
            lo, hi = 0, n.next_seq
            while lo < hi:
                mid = (lo + hi) // 2
                if (n.clock_of(mid), name, mid) > after:
                    hi = mid
                else:
                    lo = mid + 1
            start = lo
        run = max(bisect.bisect_right(n.run_firsts, start) - 1, 0)
        for seq in range(start, n.next_seq):
            while run + 1 < len(n.run_firsts) and n.run_firsts[run + 1] <= seq:
                run += 1
            yield Record(name, seq, byte_to_q(n.held[seq]), n.run_clocks[run])
