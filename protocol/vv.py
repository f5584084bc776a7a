"""Version vectors ``{node: next_seq}``: the state of a replica, as a value.

Nodes apply only contiguous per-node prefixes of the log, so the set of applied records is
exactly described by how far each node's prefix reaches. Two replicas with equal version
vectors hold equal weights (the exact grid makes the order irrelevant). Nodes with no records
are left out, so ``{}`` is the base model.
"""

from __future__ import annotations

from collections.abc import Mapping

from . import canonical

VersionVector = Mapping[str, int]


def normalise(vv: VersionVector) -> dict[str, int]:
    """A plain dict sorted by node, without zero entries."""
    return {n: vv[n] for n in sorted(vv) if vv[n] > 0}


def digest_bytes(vv: VersionVector) -> bytes:
    """8 bytes naming a version vector: SHA-256 of its canonical msgpack, cut."""
    return canonical.sha256(b"seedswarm/vv/v1", canonical.packb(normalise(vv)))[:8]


def digest(vv: VersionVector) -> str:
    """The same 8 bytes as 16 hex digits (how /status shows them)."""
    return digest_bytes(vv).hex()


def held_digest(held: Mapping[str, tuple[int, bytes]]) -> bytes:
    """8 bytes naming what a replica holds, records *and their bytes*: SHA-256 of the
    canonical msgpack of ``{node: [next_seq, content digest]}`` (docs/PROTOCOL.md §8), cut.

    Presence carries it: equal version vectors with different bytes give different digests.
    """
    body = {n: [s, c] for n, (s, c) in sorted(held.items()) if s > 0}
    return canonical.sha256(b"seedswarm/held/v1", canonical.packb(body))[:8]


def total(vv: VersionVector) -> int:
    """How many records the vector covers."""
    return sum(vv.values())


def dominates(a: VersionVector, b: VersionVector) -> bool:
    """True if ``a`` holds every record ``b`` holds."""
    return all(a.get(n, 0) >= s for n, s in b.items())
