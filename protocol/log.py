"""The ordered update log as a data structure (sans-IO).

Theory of operation
-------------------
Records arrive in frames, from the publisher or relayed by anyone, in any order, any number of
times. ``OrderedLog`` turns that stream into a set of records keyed by ``(node, seq)`` and
answers three questions: is this input new, does it contradict what is held, and which
contiguous prefix of each node's records is complete.

Per node it keeps the contiguous prefix ``0 .. next_seq-1`` as one byte per record plus the
clocks as runs ``(first_seq, clock)``, and a bounded map of records beyond the first gap. A
million records cost about a megabyte.

Invariants:
  * A ``(node, seq)`` holds one byte forever. A second, different byte is equivocation: the
    frame that carries it is rejected as a whole and nothing of it is stored.
  * A node's clocks never decrease with seq. A frame that would break this is rejected.
  * ``next_seq(node)`` only grows; records below it are never removed.
  * A frame may not raise the largest clock seen by more than ``MAX_CLOCK_JUMP``.
  * Frames more than ``future_window`` records beyond a node's prefix are rejected
    (``future_seq``), which bounds the memory a peer can make us spend.
  * The total order shown to people is ``(clock, node, seq)`` over the contiguous records.
    It is a presentation: the model state is the *set* of records, not their order.
"""

from __future__ import annotations

import bisect
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
    advanced: bool  # whether the node's contiguous prefix grew


@dataclass(slots=True)
class _NodeLog:
    held: bytearray = field(default_factory=bytearray)
    run_firsts: list[int] = field(default_factory=list)  # clock runs over the held prefix
    run_clocks: list[int] = field(default_factory=list)
    pending: dict[int, tuple[int, int]] = field(default_factory=dict)  # seq -> (byte, clock)

    @property
    def next_seq(self) -> int:
        return len(self.held)

    def clock_of(self, seq: int) -> int | None:
        if seq < len(self.held):
            return self.run_clocks[bisect.bisect_right(self.run_firsts, seq) - 1]
        got = self.pending.get(seq)
        return None if got is None else got[1]

    def clock_below(self, seq: int) -> int | None:
        """The clock of the nearest held or pending record before ``seq``."""
        if seq <= 0:
            return None
        got = self.clock_of(seq - 1)
        if got is not None:
            return got
        below = [s for s in self.pending if s < seq]  # only when seq - 1 lies in a gap
        if below:
            return self.pending[max(below)][1]
        return self.run_clocks[-1] if self.held else None

    def clock_from(self, seq: int) -> int | None:
        """The clock of the nearest held or pending record at or after ``seq``."""
        got = self.clock_of(seq)
        if got is not None:
            return got
        above = [s for s in self.pending if s > seq]  # only when seq lies in a gap
        return self.pending[min(above)][1] if above else None

    def byte_of(self, seq: int) -> int | None:
        if seq < len(self.held):
            return self.held[seq]
        got = self.pending.get(seq)
        return None if got is None else got[0]

    def append(self, byte: int, clock: int) -> None:
        if not self.run_clocks or self.run_clocks[-1] != clock:
            self.run_firsts.append(len(self.held))
            self.run_clocks.append(clock)
        self.held.append(byte)


class OrderedLog:
    """The set of records of one run, with contiguous-prefix tracking and a total order."""

    def __init__(self, *, future_window: int = 1 << 20) -> None:
        self._nodes: dict[str, _NodeLog] = {}
        self._future_window = future_window
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

    def pending_count(self) -> int:
        """Records held beyond a gap (waiting for the gap to be filled)."""
        return sum(len(n.pending) for n in self._nodes.values())

    def get(self, node: str, seq: int) -> Record | None:
        n = self._nodes.get(node)
        if n is None or seq >= n.next_seq or seq < 0:
            return None
        clock = n.clock_of(seq)
        assert clock is not None
        return Record(node, seq, byte_to_q(n.held[seq]), clock)

    def records(self, node: str, start: int, end: int) -> list[Record]:
        """Contiguous records ``start <= seq < end`` of ``node`` (clipped to what is held)."""
        n = self._nodes.get(node)
        if n is None:
            return []
        end = min(end, n.next_seq)
        out: list[Record] = []
        for seq in range(max(start, 0), end):
            clock = n.clock_of(seq)
            assert clock is not None
            out.append(Record(node, seq, byte_to_q(n.held[seq]), clock))
        return out

    # -- input -------------------------------------------------------------------------------

    def offer(self, frame: Frame) -> Offered:
        """Add a frame's records. Raises ``ConflictError`` or ``ProtocolError(future_seq)``."""
        n = self._nodes.get(frame.node)
        if n is None:
            n = _NodeLog()
        if frame.clock > self._max_clock + MAX_CLOCK_JUMP:
            raise ProtocolError(
                f"frame of {frame.node} jumps the clock from {self._max_clock} to {frame.clock}",
                reason="clock_jump",
            )
        if frame.first_seq > n.next_seq + self._future_window:
            raise ProtocolError(
                f"frame of {frame.node} starts at {frame.first_seq}, more than "
                f"{self._future_window} beyond {n.next_seq}",
                reason="future_seq",
            )
        # Check everything before changing anything: a frame is accepted or rejected whole.
        new: list[int] = []
        for i, b in enumerate(frame.qs):
            seq = frame.first_seq + i
            have = n.byte_of(seq)
            if have is None:
                new.append(i)
            elif have != b:
                raise ConflictError(
                    f"equivocation: {frame.node} seq {seq} is {byte_to_q(have)} here "
                    f"and {byte_to_q(b)} in the frame",
                    reason="equivocation",
                )
            elif n.clock_of(seq) != frame.clock:
                raise ConflictError(
                    f"{frame.node} seq {seq} carries clock {frame.clock}, held with "
                    f"{n.clock_of(seq)}",
                    reason="equivocation",
                )
        # Compare with the nearest known records, not only the adjacent seqs: a frame beyond a
        # gap must also keep the order, or the gap could never be filled consistently.
        before = n.clock_below(frame.first_seq)
        after = n.clock_from(frame.end_seq)
        if (before is not None and before > frame.clock) or (
            after is not None and after < frame.clock
        ):
            raise ConflictError(
                f"clock {frame.clock} of {frame.node} at seq {frame.first_seq} breaks the "
                "node's clock order",
                reason="clock_regression",
            )
        if not new:
            return Offered((), len(frame.qs), False)
        self._nodes[frame.node] = n
        for i in new:
            n.pending[frame.first_seq + i] = (frame.qs[i], frame.clock)
        start = n.next_seq
        while (got := n.pending.pop(n.next_seq, None)) is not None:
            n.append(*got)
        self._held_total += n.next_seq - start
        self._max_clock = max(self._max_clock, frame.clock)
        records = tuple(
            Record(frame.node, frame.first_seq + i, byte_to_q(frame.qs[i]), frame.clock)
            for i in new
        )
        return Offered(records, len(frame.qs) - len(new), n.next_seq > start)

    def add_own(self, frame: Frame) -> None:
        """Append a node's own new records: it is their author, so nobody else's copy counts.

        ``frame`` must start at the node's prefix, and its clock may not go below the last
        own record's. Raises ``ConflictError`` and changes nothing otherwise.
        """
        n = self._nodes.get(frame.node)
        if n is None:
            n = _NodeLog()
        if n.pending:
            raise ConflictError(
                f"records of {frame.node} beyond a gap exist: own seq would collide"
            )
        if frame.first_seq != n.next_seq:
            raise ConflictError(
                f"own frame starts at {frame.first_seq}, the prefix ends at {n.next_seq}"
            )
        last = n.clock_of(n.next_seq - 1) if n.next_seq else None
        if last is not None and frame.clock < last:
            raise ConflictError("own clock went backwards", reason="clock_regression")
        self._nodes[frame.node] = n
        for b in frame.qs:
            n.append(b, frame.clock)
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
                clock = n.clock_of(mid)
                assert clock is not None
                if (clock, name, mid) > after:
                    hi = mid
                else:
                    lo = mid + 1
            start = lo
        run = max(bisect.bisect_right(n.run_firsts, start) - 1, 0)
        for seq in range(start, n.next_seq):
            while run + 1 < len(n.run_firsts) and n.run_firsts[run + 1] <= seq:
                run += 1
            yield Record(name, seq, byte_to_q(n.held[seq]), n.run_clocks[run])
