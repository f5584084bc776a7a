"""The seeded initial values of an adapter: the reference of docs/PROTOCOL.md §2 ("Adapters").

A LoRA adapter on a module with ``in`` inputs and ``out`` outputs is two tensors, ``A`` (rank,
in) and ``B`` (out, rank), and the module computes ``W x + (alpha / rank) * B A x``. ``B``
starts at zero, so the adapted model *is* the base until records move it, and ``A`` starts
at values drawn uniformly from ``(-1/sqrt(in), 1/sqrt(in))`` -- the distribution of
``nn.Linear``'s and peft's default (Kaiming-uniform with a = sqrt(5)) -- but from Philox under
the manifest's ``init_seed`` instead of torch's generator, so any implementation, with or
without torch, on any device, computes the same bits:

    word(e)  = word (e mod 4) of Philox4x32-10(counter = (e div 4, index, 0, STREAM_INIT),
                                               key = (init_seed & 0xFFFFFFFF, init_seed >> 32))
    x(e)     = (2 * (word(e) >> 8) + 1 - 2**24) * 2**-24          (exact: odd / 2**24 in (-1, 1))
    A[e]     = binary32( x(e) * (1 / sqrt(in)) )                   (binary64 ops, then one
                                                                     rounding to binary32)

``e`` is the element's index in the row-major flattening of ``A`` and ``index`` the tensor's
position among all adapter tensors sorted by name (``A`` and ``B`` of every adapted module).
The values then enter the grid like any base tensor's (§5): the grid is chosen from them, and
the state is their snapped value.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from .philox import STREAM_INIT, philox4x32, seed_key

WORDS_PER_COUNTER = 4


def lora_a_init(init_seed: int, index: int, rows: int, cols: int) -> npt.NDArray[np.float32]:
    """The initial ``A`` of shape (rows = rank, cols = in): see the module docstring."""
    if not 0 <= index < 2**32:
        raise ValueError(f"the tensor index must fit in 32 bits, got {index}")
    if rows < 1 or cols < 1:
        raise ValueError(f"an adapter tensor has a positive shape, got ({rows}, {cols})")
    n = rows * cols
    counters = -(-n // WORDS_PER_COUNTER)
    if counters > 2**32:
        raise ValueError("an adapter tensor of more than 2**34 elements has no init counter")
    ctr = np.zeros((counters, 4), dtype=np.uint32)
    ctr[:, 0] = np.arange(counters, dtype=np.uint64).astype(np.uint32)
    ctr[:, 1] = index
    ctr[:, 3] = STREAM_INIT
    words = philox4x32(ctr, seed_key(init_seed)).reshape(-1)[:n]
    u = (words >> np.uint32(8)).astype(np.float64)  # 24 uniform bits
    x = (2.0 * u + 1.0 - 2.0**24) * 2.0**-24  # every step exact in binary64
    bound = 1.0 / math.sqrt(cols)
    return (x * bound).astype(np.float32).reshape(rows, cols)
