"""Canonical msgpack: one byte string per value, so hashes and signatures agree everywhere.

Rules (docs/PROTOCOL.md §1): maps are written with keys sorted by their UTF-8 bytes, integers
in their shortest msgpack form, floats as float64, strings as str and byte strings as bin.
``msgpack.packb`` already writes the shortest integer forms and float64 for Python floats, so
sorting map keys is all that is left to do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import msgpack


def _sorted(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _sorted(value[k]) for k in sorted(value, key=lambda s: str(s).encode())}
    if isinstance(value, list | tuple):
        return [_sorted(v) for v in value]
    return value


def packb(value: Any) -> bytes:
    """Canonical msgpack encoding of ``value`` (maps sorted by key)."""
    out: bytes = msgpack.packb(_sorted(value), use_bin_type=True)
    return out


def sha256(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()
