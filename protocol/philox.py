"""Philox4x32-10 in numpy: the reference every sign generator in seedswarm is tested against.

Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011) is a
counter-based generator: ``out = philox(counter, key)`` is a pure function of a 128-bit counter
and a 64-bit key. It is the generator of cuRAND, JAX, Triton and Random123, so every backend can
produce the same bits. This module is the normative implementation; docs/PROTOCOL.md describes
the same layout in words.

Layout used by seedswarm (all words are uint32):

    key     = (seed & 0xFFFFFFFF, seed >> 32)              seed: the record's 64-bit seed
    counter = (block, tensor_id, 0, STREAM_SIGNS)          signs of elements 128*block .. +127
    counter = (0, 0, 0, STREAM_QUANTISER)                  the quantiser's uniform draw
    counter = (block, tensor_id, 0, STREAM_LOWRANK_A)      low-rank a: rows 128*block .. +127
    counter = (block, tensor_id, 0, STREAM_LOWRANK_B)      low-rank b: columns 128*block .. +127
    counter = (e div 4, index, 0, STREAM_INIT)             initial value of element e of an
                                                           adapter tensor (key: init_seed;
                                                           protocol/adapter.py)

Within a sign block, element ``128*block + 32*w + b`` takes bit ``b`` (least significant
first) of output word ``w``; a 0 bit means +1 and a 1 bit means -1. The low-rank streams use
the same layout for the entries of the vectors a (length rows) and b (length cols) of a matrix
tensor (rows, cols), whose direction is then z[i*cols + j] = a[i] * b[j] (``lowrank_signs``):
every entry is still +1 or -1, so the exact grid and the update rule do not change.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

PHILOX_M0: Final = 0xD2511F53
PHILOX_M1: Final = 0xCD9E8D57
PHILOX_W0: Final = 0x9E3779B9
PHILOX_W1: Final = 0xBB67AE85
ROUNDS: Final = 10

STREAM_SIGNS: Final = 0
STREAM_QUANTISER: Final = 1
STREAM_DATA: Final = 2  # batch sampling; not part of the wire protocol
STREAM_LOWRANK_A: Final = 3  # rank-1 directions of matrices (manifest direction "lowrank")
STREAM_LOWRANK_B: Final = 4
STREAM_INIT: Final = 5  # seeded initial values (an adapter's A), keyed by the manifest's init_seed

BLOCK: Final = 128  # elements per Philox output (4 words x 32 bits)
_MASK32: Final = np.uint64(0xFFFFFFFF)

U32Array = npt.NDArray[np.uint32]


def philox4x32(counter: U32Array, key: U32Array, rounds: int = ROUNDS) -> U32Array:
    """Philox4x32-R on ``n`` counters at once.

    counter: (n, 4) uint32; key: (2,) or (n, 2) uint32. Returns (n, 4) uint32.
    """
    ctr = np.asarray(counter, dtype=np.uint32)
    if ctr.ndim != 2 or ctr.shape[1] != 4:
        raise ValueError(f"counter must have shape (n, 4), got {ctr.shape}")
    k = np.broadcast_to(np.asarray(key, dtype=np.uint32), (ctr.shape[0], 2))
    c0, c1, c2, c3 = (ctr[:, i].astype(np.uint64) for i in range(4))
    k0 = k[:, 0].astype(np.uint64)
    k1 = k[:, 1].astype(np.uint64)
    m0 = np.uint64(PHILOX_M0)
    m1 = np.uint64(PHILOX_M1)
    for r in range(rounds):
        if r:
            k0 = (k0 + np.uint64(PHILOX_W0)) & _MASK32
            k1 = (k1 + np.uint64(PHILOX_W1)) & _MASK32
        p0 = c0 * m0  # < 2**64: exact in uint64
        p1 = c2 * m1
        hi0, lo0 = p0 >> np.uint64(32), p0 & _MASK32
        hi1, lo1 = p1 >> np.uint64(32), p1 & _MASK32
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return np.stack([c0, c1, c2, c3], axis=1).astype(np.uint32)


def seed_key(seed: int) -> U32Array:
    """The Philox key of a 64-bit seed: (low word, high word)."""
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be a 64-bit unsigned integer, got {seed}")
    return np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint32)


def sign_words(
    seed: int, tensor_id: int, first_block: int, n_blocks: int, stream: int = STREAM_SIGNS
) -> U32Array:
    """The (n_blocks, 4) Philox outputs that hold the signs of blocks first_block.. ."""
    if not 0 <= tensor_id < 2**32:
        raise ValueError(f"tensor_id must fit in 32 bits, got {tensor_id}")
    if first_block < 0 or first_block + n_blocks > 2**32:
        raise ValueError("sign blocks must lie in [0, 2**32)")
    ctr = np.zeros((n_blocks, 4), dtype=np.uint32)
    ctr[:, 0] = np.arange(first_block, first_block + n_blocks, dtype=np.uint64).astype(np.uint32)
    ctr[:, 1] = tensor_id
    ctr[:, 3] = stream
    return philox4x32(ctr, seed_key(seed))


def sign_bits(
    seed: int, tensor_id: int, numel: int, stream: int = STREAM_SIGNS
) -> npt.NDArray[np.uint8]:
    """One bit per element of a tensor of ``numel`` elements (1 means -1)."""
    n_blocks = -(-numel // BLOCK)
    words = sign_words(seed, tensor_id, 0, n_blocks, stream)  # (n_blocks, 4)
    shifts = np.arange(32, dtype=np.uint32)
    bits = (words[:, :, None] >> shifts) & np.uint32(1)  # (n_blocks, 4, 32)
    return bits.reshape(-1)[:numel].astype(np.uint8)


def signs(
    seed: int, tensor_id: int, numel: int, stream: int = STREAM_SIGNS
) -> npt.NDArray[np.int8]:
    """The Rademacher direction z in {-1, +1} for one tensor, flattened in row-major order."""
    return (1 - 2 * sign_bits(seed, tensor_id, numel, stream).astype(np.int8)).astype(np.int8)


def lowrank_factors(
    seed: int, tensor_id: int, rows: int, cols: int
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.int8]]:
    """The vectors a (rows) and b (cols) in {-1, +1} of a matrix tensor's rank-1 direction."""
    return (
        signs(seed, tensor_id, rows, STREAM_LOWRANK_A),
        signs(seed, tensor_id, cols, STREAM_LOWRANK_B),
    )


def lowrank_signs(seed: int, tensor_id: int, rows: int, cols: int) -> npt.NDArray[np.int8]:
    """The rank-1 direction z = a b^T of a (rows, cols) matrix tensor, flattened row-major."""
    a, b = lowrank_factors(seed, tensor_id, rows, cols)
    return np.outer(a, b).astype(np.int8).reshape(-1)


def stream_word(seed: int, stream: int, index: int = 0) -> int:
    """Word 0 of Philox(counter=(index, 0, 0, stream), key=seed): a uniform 32-bit draw."""
    ctr = np.array([[index, 0, 0, stream]], dtype=np.uint32)
    return int(philox4x32(ctr, seed_key(seed))[0, 0])
