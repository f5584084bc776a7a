"""Seed derivation: every record's randomness comes from ``(run, node, seq)`` alone.

    seed = uint64_le(SHA-256("seedswarm/seed/v1" || run_id || u8(len(node)) || node
                             || u64_le(seq))[:8])

The seed keys the Philox streams of philox.py: the direction's signs and the quantiser's
uniform draw. Because the seed depends only on the record's name, anyone holding the log can
regenerate the direction; nobody needs to store it.
"""

from __future__ import annotations

import hashlib
import struct

SEED_DOMAIN = b"seedswarm/seed/v1"


def derive_seed(run_id: bytes, node: str, seq: int) -> int:
    """The 64-bit seed of record ``(node, seq)`` in run ``run_id``."""
    if len(run_id) != 8:
        raise ValueError("run_id must be 8 bytes")
    if not 0 <= seq < 2**63:
        raise ValueError(f"seq out of range: {seq}")
    name = node.encode()
    h = hashlib.sha256(SEED_DOMAIN + run_id + bytes([len(name)]) + name + struct.pack("<Q", seq))
    value: int = struct.unpack("<Q", h.digest()[:8])[0]
    return value
