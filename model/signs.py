"""Philox4x32-10 sign generation in plain torch: the portable reference backend.

This computes exactly what ``seedswarm.protocol.philox`` computes, with torch integer ops, on
any device (CPU, CUDA). Faster backends (the C kernel on CPU, Triton on CUDA; see kernels.py)
are tested bit for bit against it and against the numpy reference.

torch has no unsigned 32-bit multiply-high, and int64 products of two 32-bit words can exceed
2**63, so ``_mulhilo`` splits the constant multiplier into 16-bit halves: every intermediate
stays below 2**49 and nothing relies on signed overflow.
"""

from __future__ import annotations

import torch

from seedswarm.protocol.philox import (
    BLOCK,
    PHILOX_M0,
    PHILOX_M1,
    PHILOX_W0,
    PHILOX_W1,
    ROUNDS,
    STREAM_SIGNS,
)

_MASK32 = 0xFFFFFFFF
_MASK16 = 0xFFFF


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of the 64-bit product a * m, for int64 ``a`` in [0, 2**32)."""
    t_lo = a * (m & _MASK16)  # < 2**48
    t_hi = a * (m >> 16)  # < 2**48
    hi = (t_hi + (t_lo >> 16)) >> 16
    lo = (((t_hi & _MASK16) << 16) + t_lo) & _MASK32
    return hi, lo


def philox_words(
    key0: torch.Tensor, key1: torch.Tensor, c0: torch.Tensor, c1: int, c2: int, c3: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32-10 with int64 tensors holding uint32 values.

    key0, key1: broadcastable to c0's shape (e.g. (R, 1) keys against (1, nb) counters).
    c0: the varying counter word; c1..c3 are constants. Returns four int64 tensors.
    """
    x0 = c0
    x1 = torch.full_like(c0, c1)
    x2 = torch.full_like(c0, c2)
    x3 = torch.full_like(c0, c3)
    k0, k1 = key0, key1
    for r in range(ROUNDS):
        if r:
            k0 = (k0 + PHILOX_W0) & _MASK32
            k1 = (k1 + PHILOX_W1) & _MASK32
        hi0, lo0 = _mulhilo(x0, PHILOX_M0)
        hi1, lo1 = _mulhilo(x2, PHILOX_M1)
        x0, x1, x2, x3 = hi1 ^ x1 ^ k0, lo1, hi0 ^ x3 ^ k1, lo0
    return x0, x1, x2, x3


def seed_keys(seeds: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, 1) int64 tensors of the low and high key words of each seed."""
    k0 = torch.tensor([s & _MASK32 for s in seeds], dtype=torch.int64, device=device)
    k1 = torch.tensor([s >> 32 for s in seeds], dtype=torch.int64, device=device)
    return k0.view(-1, 1), k1.view(-1, 1)


def sign_bits_torch(
    seeds: list[int],
    tensor_id: int,
    first_block: int,
    n_blocks: int,
    device: torch.device,
    stream: int = STREAM_SIGNS,
) -> torch.Tensor:
    """(R, n_blocks * 128) uint8 bits (1 means -1) of blocks first_block.. for each seed."""
    k0, k1 = seed_keys(seeds, device)
    blocks = torch.arange(first_block, first_block + n_blocks, dtype=torch.int64, device=device)
    words = torch.stack(philox_words(k0, k1, blocks.view(1, -1), tensor_id, 0, stream), -1)
    shifts = torch.arange(32, dtype=torch.int64, device=device)
    bits = (words.unsqueeze(-1) >> shifts) & 1  # (R, nb, 4, 32)
    return bits.reshape(len(seeds), n_blocks * BLOCK).to(torch.uint8)


def signs_torch(seed: int, tensor_id: int, numel: int, device: torch.device) -> torch.Tensor:
    """The direction z in {-1, +1} (int8) of one tensor, flattened."""
    n_blocks = -(-numel // BLOCK)
    bits = sign_bits_torch([seed], tensor_id, 0, n_blocks, device)[0, :numel]
    return (1 - 2 * bits.to(torch.int8)).to(torch.int8)


def sign_matrix(
    seeds: list[int],
    tensor_id: int,
    n: int,
    stream: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    chunk_blocks: int = 1024,
) -> torch.Tensor:
    """(R, n) signs in {-1, +1} of ``stream`` for each seed (the low-rank a or b vectors)."""
    n_blocks = -(-n // BLOCK)
    out = torch.empty(len(seeds), n_blocks * BLOCK, dtype=dtype, device=device)
    for b0 in range(0, n_blocks, chunk_blocks):
        nb = min(chunk_blocks, n_blocks - b0)
        bits = sign_bits_torch(seeds, tensor_id, b0, nb, device, stream)
        out[:, b0 * BLOCK : (b0 + nb) * BLOCK] = 1 - 2 * bits.to(dtype)
    return out[:, :n]
