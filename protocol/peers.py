"""A session's entry for one peer, built from its presence, and what each requester may ask of
it (sans-IO)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .messages import Presence


@dataclass(slots=True)
class Peer:
    presence: Presence  # its latest
    last_seen: float  # when it last spoke (any valid message of its own)
    spread: bytes  # where it stands in this node's own order of its peers (``spread``)
    silent: bool = False  # reported gone by the session's tick
    vv_asked: float = -1e18  # when this node last asked it for its version vector

    def alive(self, now: float, timeout: float) -> bool:
        return self.presence.alive and not self.silent and now - self.last_seen < timeout


def spread(me: str, peer: str) -> bytes:
    """Where ``peer`` stands in ``me``'s order of peers: SHA-256(me, 0x00, peer), first 8
    bytes. Every node orders its peers differently, so nodes that have asked none of them yet
    do not all ask the same one (docs/PROTOCOL.md §9, *Vv requests*)."""
    return hashlib.sha256(f"{me}\x00{peer}".encode()).digest()[:8]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class Budgets:
    """Wants and vv requests answered per requester: a token bucket each, ``rate`` a second with
    bursts of ``burst``; at most ``max_requesters`` remembered (a flood of new names starts
    everyone afresh, so memory stays bounded)."""

    def __init__(self, rate: float, burst: float, max_requesters: int) -> None:
        self.rate, self.burst, self.max_requesters = rate, burst, max_requesters
        self._buckets: dict[str, _Bucket] = {}

    def spend(self, requester: str, now: float) -> bool:
        """One token of ``requester``'s budget, if it has one left."""
        b = self._buckets.get(requester)
        if b is None:
            if len(self._buckets) >= self.max_requesters:
                self._buckets.clear()
            b = self._buckets[requester] = _Bucket(self.burst, now)
        b.tokens = min(self.burst, b.tokens + (now - b.at) * self.rate)
        b.at = now
        if b.tokens < 1.0:
            return False
        b.tokens -= 1.0
        return True
