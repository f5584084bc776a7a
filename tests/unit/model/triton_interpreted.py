"""Run the Triton backend in Triton's interpreter on the CPU against the torch reference.

Started by test_triton_interpreter.py in a process of its own with ``TRITON_INTERPRET=1`` (Triton
reads it when the kernels are decorated, so it cannot be switched on inside the test process).
The interpreter executes the kernels' own code with numpy: it checks their logic — Philox, the
sign bits, the int32 sums, the int64 state, the weights' rewrite, masking at the edges — not the
GPU's instruction selection, which tests/gpu checks where a GPU is lent.

Prints one line per case and exits 1 if any differs.
"""

from __future__ import annotations

import random
import sys

import numpy as np
import torch

from seedswarm.model import triton_kernel
from seedswarm.model.grid import make_grid
from seedswarm.model.kernels import TorchBackend
from seedswarm.model.layout import pack_


def _interpreted() -> triton_kernel.TritonBackend:
    """The real backend, minus its CUDA checks: the interpreter runs on CPU tensors."""
    k = object.__new__(triton_kernel.TritonBackend)
    k.tile, k.warps = 4, 1
    k._check = lambda n, w: None  # type: ignore[method-assign]
    return k


def _state(gen: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    n = torch.randint(-(2**20), 2**20, shape, generator=gen, dtype=torch.int64)
    flat = n.view(-1)
    flat[::5] = torch.randint(-(2**62), 2**62, (len(flat[::5]),), generator=gen)
    return n


# values whose int64 -> fp32 rounding goes wrong when done through float64 (2**62 + 2**38 + 1
# rounds to a tie in float64, then to even: 2**62 instead of 2**62 + 2**39), or is a tie itself
TRICKY = [2**62 + 2**38 + 1, -(2**62 + 2**38 + 1), 2**24 + 1, 2**25 + 6, 2**63 - 1, -(2**63)]


def _aim(base: torch.Tensor, ref_after: torch.Tensor) -> torch.Tensor:
    """``base`` moved so that its first elements end, after the same records, on TRICKY."""
    out = base.clone().view(-1)
    moved = (ref_after.view(-1) - base.view(-1))[: len(TRICKY)]
    k = min(len(TRICKY), out.numel())
    out[:k] = torch.tensor(TRICKY[:k], dtype=torch.int64) - moved[:k]
    return out.view(base.shape)


def _same(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> bool:
    return torch.equal(a[0], b[0]) and torch.equal(a[1].view(torch.int32), b[1].view(torch.int32))


def main() -> int:
    rng = random.Random(1)
    gen = torch.Generator().manual_seed(1)
    tri, ref = _interpreted(), TorchBackend()
    ok = True
    for n in (1, 127, 128, 129, 1000, 4097):
        base = _state(gen, (n,))
        seeds = [rng.choice([0, 2**64 - 1, rng.getrandbits(64)]) for _ in range(5)]
        steps = [rng.randint(-5000, 5000) for _ in range(5)]
        probe = base.clone()
        ref.accumulate(probe, torch.zeros(n), 9, seeds, steps, 2.0**-20)
        base = _aim(base, probe)
        got = (base.clone(), torch.full((n,), 0.5))
        want = (base.clone(), torch.zeros(n))
        tri.accumulate(*got, 9, seeds, steps, 2.0**-20)
        ref.accumulate(*want, 9, seeds, steps, 2.0**-20)
        print("dense", n, _same(got, want))
        ok &= _same(got, want)
    for rows, cols in ((1, 1), (3, 5), (130, 70)):
        base = _state(gen, (rows, cols))
        seeds = [rng.getrandbits(64) for _ in range(7)]
        steps = [rng.randint(-5000, 5000) for _ in range(7)]
        probe = base.clone()
        ref.accumulate_lowrank(probe, torch.zeros(rows, cols), 4, seeds, steps, 2.0**-20)
        base = _aim(base, probe)
        got = (base.clone(), torch.full((rows, cols), 0.5))
        want = (base.clone(), torch.zeros(rows, cols))
        tri.accumulate_lowrank(*got, 4, seeds, steps, 2.0**-20)
        ref.accumulate_lowrank(*want, 4, seeds, steps, 2.0**-20)
        print("lowrank", rows, cols, _same(got, want))
        ok &= _same(got, want)
    # the packed buffer: dense tensors and low-rank matrices in one call
    shapes = [(300,), (40, 50), (7,), (129, 3)]
    tensors = [torch.randn(s, generator=gen) for s in shapes]
    grids = make_grid([(f"p{i}", t) for i, t in enumerate(tensors)], epsilon=1e-3,
                      unit_exp=-12, headroom_exp=3, grid_min_exp=-20)  # fmt: skip
    flat, state, layout = pack_(tensors, grids, lowrank=True)
    state[::3] += 2**45
    terms = [
        (rng.getrandbits(64), rng.choice([0, 1, -2]), rng.randint(-127, 127)) for _ in range(9)
    ]
    steps_m = layout.steps_matrix(terms)
    seeds = [s for s, _, _ in terms]
    got = (state.clone(), flat.clone())
    want = (state.clone(), flat.clone())
    tri.accumulate_flat(got[0], got[1], layout, seeds, steps_m)
    ref.accumulate_flat(want[0], want[1], layout, seeds, steps_m)
    live = np.concatenate(
        [np.arange(o, o + n) for o, n in zip(layout.offsets, layout.numels, strict=True)]
    )
    sel = torch.from_numpy(live)
    packed = _same((got[0][sel], got[1][sel]), (want[0][sel], want[1][sel]))
    print("packed", packed)
    ok &= packed
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
