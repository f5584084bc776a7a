"""Hand-written hostile peers' pieces, shared by the in-process and the integration tests: what a
relay that alters or drops what it forwards does to the bytes (the peers themselves, an MQTT
client or a client of the in-memory bus, are in the tests that use them)."""

from __future__ import annotations

from collections.abc import Callable

from seedswarm.protocol import varint
from seedswarm.protocol.codec import encode_bundle
from seedswarm.protocol.records import byte_to_q, q_to_byte

SIGNATURE = 64


def negated(frame: bytes, *, signed: bool) -> bytes:
    """``frame`` with every record's byte negated (q -> -q), its header (and its signature, in a
    signed run, which then no longer verifies) as it was."""
    pos = 1
    _, pos = varint.decode(frame, pos)  # first seq
    _, pos = varint.decode(frame, pos)  # clock
    end = len(frame) - SIGNATURE if signed else len(frame)
    qs = bytes(q_to_byte(-byte_to_q(b)) for b in frame[pos:end])
    return frame[:pos] + qs + frame[end:]


class HostileBundler:
    """What a relay would bundle, passed through ``alter`` first: ``alter(node, frame)`` gives
    the bytes to forward, or None to drop the frame. Presence is forwarded as it came (a
    relay's bundle carries it), and the relay's own presence leads every bundle."""

    def __init__(self, own_presence: Callable[[], bytes], me: str) -> None:
        self.own_presence = own_presence
        self.me = me
        self.entries: list[tuple[str, bytes]] = []
        self.seen = 0
        self.forwarded = 0

    def take(
        self, kind: str, node: str, payload: bytes, alter: Callable[[str, bytes], bytes | None]
    ) -> None:
        if node == self.me or not payload:
            return
        if kind == "records":
            self.seen += 1
            out = alter(node, payload)
            if out is None:
                return
            self.forwarded += 1
            self.entries.append((node, out))
        elif kind == "presence":
            self.entries.append((node, payload))

    def bundle(self) -> bytes:
        """The next bundle: the relay's presence, then what came (and was not dropped)."""
        entries, self.entries = self.entries, []
        return encode_bundle([(self.me, self.own_presence()), *entries])
