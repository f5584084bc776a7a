"""Unsigned LEB128 varints, the integers of the binary frame and bundle formats.

Seven bits per byte, least significant group first, the high bit set on every byte but the
last. Only the shortest encoding of a value is valid (no trailing ``0x80`` groups), so every
value has one encoding and every frame one byte string.
"""

from __future__ import annotations

from .errors import DecodeError

MAX_VARINT_BYTES = 10  # enough for 64 bits


def encode(value: int) -> bytes:
    if value < 0:
        raise ValueError(f"a varint is unsigned, got {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode(data: bytes | memoryview, pos: int, *, limit: int = 1 << 64) -> tuple[int, int]:
    """The value at ``data[pos:]`` and the position after it; ``DecodeError`` if truncated,
    not minimal, or not below ``limit``."""
    value = 0
    shift = 0
    for i in range(MAX_VARINT_BYTES):
        if pos + i >= len(data):
            raise DecodeError("a varint runs past the end", reason="truncated")
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise DecodeError("a varint is not in its shortest form", reason="malformed")
            if value >= limit:
                raise DecodeError(f"a varint of {value} is out of range", reason="bad_range")
            return value, pos + i + 1
        shift += 7
    raise DecodeError("a varint is longer than 10 bytes", reason="malformed")
