"""Records and frames: what nodes write to their logs and send to each other.

A *record* ``(node, seq, q)`` means: ``theta <- theta - u * q * z(seed(run, node, seq))``. It
carries the Lamport clock of the frame it was published in, which orders the log for people;
the model state does not depend on any order.

A *frame* carries a run of consecutive records of one node: the header (format version, run,
node, first seq, clock) and one byte per record. Frames are what the wire and the relay carry;
in signed runs the node's Ed25519 signature covers the whole frame, so any peer can relay it
verbatim and every receiver can check it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .errors import DecodeError
from .ids import check_node_id

MAX_FRAME_RECORDS = 4096
SEQ_LIMIT = 2**63
CLOCK_LIMIT = 2**63
SIGNATURE_BYTES = 64


def q_to_byte(q: int) -> int:
    """Two's-complement byte of a record value in [-127, 127]."""
    if not -127 <= q <= 127:
        raise ValueError(f"record value out of range: {q}")
    return q & 0xFF


def byte_to_q(b: int) -> int:
    return b - 256 if b >= 128 else b


@dataclass(frozen=True, slots=True)
class Record:
    node: str
    seq: int
    q: int
    clock: int


@dataclass(frozen=True, slots=True)
class Frame:
    """Consecutive records ``first_seq .. first_seq + len(qs) - 1`` of one node.

    ``qs`` holds one two's-complement byte per record; 0x80 (-128) is not a valid value.
    """

    run_id: bytes
    node: str
    first_seq: int
    clock: int
    qs: bytes
    signature: bytes | None = None

    def __post_init__(self) -> None:
        if len(self.run_id) != 8:
            raise DecodeError("run id must be 8 bytes", reason="bad_range")
        check_node_id(self.node)
        if not 1 <= len(self.qs) <= MAX_FRAME_RECORDS:
            raise DecodeError(
                f"a frame carries 1..{MAX_FRAME_RECORDS} records, not {len(self.qs)}",
                reason="bad_range",
            )
        if not 0 <= self.first_seq <= SEQ_LIMIT - len(self.qs):
            raise DecodeError(f"first seq out of range: {self.first_seq}", reason="bad_range")
        if not 0 <= self.clock < CLOCK_LIMIT:
            raise DecodeError(f"clock out of range: {self.clock}", reason="bad_range")
        if 0x80 in self.qs:
            raise DecodeError("record value -128 is not allowed", reason="bad_range")
        if self.signature is not None and len(self.signature) != SIGNATURE_BYTES:
            raise DecodeError("an Ed25519 signature is 64 bytes", reason="bad_signature")

    @property
    def count(self) -> int:
        return len(self.qs)

    @property
    def end_seq(self) -> int:
        """One past the last seq in the frame."""
        return self.first_seq + len(self.qs)

    def records(self) -> Iterator[Record]:
        for i, b in enumerate(self.qs):
            yield Record(self.node, self.first_seq + i, byte_to_q(b), self.clock)
