"""Kernels: every backend adds ``sum_r steps_r * z_r`` to the int64 state and rewrites the
weights ``fp32(n) * 2**e`` from it, with exactly the same bits.

The oracle is an independent numpy computation from the numpy Philox reference
(helpers.reference_accumulate). States are drawn across the whole int64 range, far beyond the
2**24 where protocol 2's fp32 weights stopped being exact, so the weights' rounding (to nearest,
ties to even) and the wrap-around at 2**63 are checked too. The torch backend runs with tiny
chunks too, and the C kernel single- and multi-threaded with a lowered ``min_split`` so that its
split-by-block-range path runs.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seedswarm.model.errors import ModelError
from seedswarm.model.grid import TensorGrid, make_grid
from seedswarm.model.kernels import (
    Backend,
    CpuKernelBackend,
    TorchBackend,
    available_backends,
    make_backend,
)
from seedswarm.model.layout import FlatLayout, pack_
from seedswarm.protocol.grid import weight
from seedswarm.protocol.philox import BLOCK

from .helpers import C_KERNEL_ERROR, assert_same_bits, reference_accumulate, requires_c

SIZES = [1, 2, 127, 128, 129, 1000, 4095, 4096, 4097, 2 * 4096 + 131, 20011]


def _cpu(threads: int, min_split: int | None = None) -> Backend:
    k = CpuKernelBackend(threads=threads)
    if min_split is not None:
        k.min_split = min_split
    return k


# name -> factory; the C variants skip cleanly when the extension is not importable
BACKENDS: dict[str, Callable[[], Backend]] = {
    "torch": TorchBackend,
    "torch-chunk4blocks": lambda: TorchBackend(chunk_elements=4 * BLOCK),
    "torch-chunk3blocks": lambda: TorchBackend(chunk_elements=3 * BLOCK * 64),
    "cpu-1": lambda: _cpu(1),
    "cpu-2-split": lambda: _cpu(2, min_split=1),
    "cpu-3-split": lambda: _cpu(3, min_split=1),
}
C_MARKS = [requires_c]
BACKEND_PARAMS = [
    pytest.param(name, marks=C_MARKS if name.startswith("cpu") else [], id=name)
    for name in BACKENDS
]


def _state(rng: np.random.Generator, n: int, bits: int = 20) -> torch.Tensor:
    """int64 states: most |n| < 2**bits, and some anywhere in the int64 range (ties, the top)."""
    ints = rng.integers(-(2**bits), 2**bits, size=n, dtype=np.int64)
    if n > 8:
        wide = rng.integers(-(2**62), 2**62, size=n // 8, dtype=np.int64)
        ints[rng.choice(n, size=n // 8, replace=False)] = wide
        ints[:4] = [2**24 + 1, -(2**25) - 2, 2**63 - 1, -(2**63)]  # ties and the wrap
    return torch.from_numpy(ints)


def _weights(n: torch.Tensor) -> torch.Tensor:
    """Stale weights: the kernels must rewrite every element they touch."""
    return torch.full(n.shape, 0.1234, dtype=torch.float32)


def _records(rng: random.Random, r: int, max_step: int = 1000) -> tuple[list[int], list[int]]:
    seeds = [rng.choice([0, 2**64 - 1, rng.getrandbits(64)]) for _ in range(r)]
    steps = [rng.randint(-max_step, max_step) for _ in range(r)]
    return seeds, steps


def _expected(
    n: torch.Tensor, tid: int, seeds: list[int], steps: list[int], exp: int
) -> tuple[torch.Tensor, torch.Tensor]:
    state, weights = reference_accumulate(n.numpy(), tid, seeds, steps, exp)
    return torch.from_numpy(state), torch.from_numpy(weights)


def _run(
    backend: str, n: torch.Tensor, tid: int, seeds: list[int], steps: list[int], exp: int
) -> tuple[torch.Tensor, torch.Tensor]:
    state, w = n.clone(), _weights(n)
    BACKENDS[backend]().accumulate(state, w, tid, seeds, steps, math.ldexp(1.0, exp))
    return state, w


def _same(
    got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor], what: str
) -> None:
    assert_same_bits(got[0], want[0], f"{what} (state)")
    assert_same_bits(got[1], want[1], f"{what} (weights)")


@pytest.mark.parametrize(
    ("backend", "n"),
    [
        pytest.param(b.values[0], n, marks=b.marks, id=f"{b.id}-{n}")
        for b in BACKEND_PARAMS
        for n in SIZES
        # tiny chunks on a large tensor are slow; their boundaries are crossed at 4097 already
        if not (b.id == "torch-chunk4blocks" and n > 5000)
    ],
)
def test_accumulate_equals_reference(backend: str, n: int) -> None:
    rng = random.Random(n)
    nrng = np.random.default_rng(n)
    for exp, tid, r in ((-20, 0, 1), (-7, 2**32 - 1, 5), (0, 12345, 16), (-100, 7, 3)):
        base = _state(nrng, n)
        seeds, steps = _records(rng, r)
        want = _expected(base, tid, seeds, steps, exp)
        _same(_run(backend, base, tid, seeds, steps, exp), want, f"{backend} n={n} exp={exp}")


# int64 values whose fp32 rounding goes wrong through float64 (2**62 + 2**38 + 1 rounds to a
# float64 tie, then to even: 2**62 instead of 2**62 + 2**39), ties themselves, and the ends
TRICKY = [2**62 + 2**38 + 1, -(2**62 + 2**38 + 1), 2**24 + 1, 2**25 + 6, 2**63 - 1, -(2**63)]


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_weights_round_to_nearest_even_at_the_hardest_states(backend: str) -> None:
    """The first elements are aimed so that, after the records, the state is exactly one of
    TRICKY: every backend's weights are then IEEE's rounding, as the integer reference says."""
    n = 300
    rng = random.Random(21)
    seeds, steps = _records(rng, 6)
    base = _state(np.random.default_rng(21), n)
    moved = _expected(base, 4, seeds, steps, -20)[0] - base
    base[: len(TRICKY)] = torch.tensor(TRICKY) - moved[: len(TRICKY)]
    got = _run(backend, base, 4, seeds, steps, -20)
    assert got[0][: len(TRICKY)].tolist() == TRICKY
    want = [weight(v, -20) for v in TRICKY]
    assert got[1][: len(TRICKY)].tolist() == want
    _same(got, _expected(base, 4, seeds, steps, -20), backend)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=9000),
    r=st.integers(min_value=1, max_value=12),
    tid=st.integers(min_value=0, max_value=2**32 - 1),
    exp=st.integers(min_value=-100, max_value=40),
    bits=st.integers(min_value=0, max_value=62),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_all_backends_agree_with_reference_hypothesis(
    n: int, r: int, tid: int, exp: int, bits: int, seed: int
) -> None:
    rng = random.Random(seed)
    base = _state(np.random.default_rng(seed), n, bits)
    seeds, steps = _records(rng, r, max_step=5000)
    want = _expected(base, tid, seeds, steps, exp)
    names = [k for k in BACKENDS if not (k.startswith("cpu") and C_KERNEL_ERROR)]
    for name in names:
        _same(_run(name, base, tid, seeds, steps, exp), want, name)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_zero_steps_are_no_ops(backend: str) -> None:
    k = BACKENDS[backend]()
    n = _state(np.random.default_rng(1), 1000)
    w = _weights(n)
    before = (n.clone(), w.clone())
    k.accumulate(n, w, 3, [1, 2, 3], [0, 0, 0], 2.0**-10)
    k.accumulate(n, w, 3, [], [], 2.0**-10)
    _same((n, w), before, "all-zero steps touch nothing")
    # zeros mixed with real steps: the same as leaving them out
    a, b = (n.clone(), w.clone()), (n.clone(), w.clone())
    k.accumulate(*a, 3, [1, 2, 3, 4], [0, 5, 0, -9], 2.0**-10)
    k.accumulate(*b, 3, [2, 4], [5, -9], 2.0**-10)
    _same(a, b, "zeros mixed in")
    k.accumulate(torch.zeros(0, dtype=torch.int64), torch.zeros(0), 3, [1], [1], 1.0)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("n", [129, 5000])
def test_order_and_batching_independence(backend: str, n: int) -> None:
    """One call with R records == R calls of one == any permutation == any split, with states
    far beyond 2**24 and across the wrap at 2**63."""
    k = BACKENDS[backend]()
    rng = random.Random(99)
    base = _state(np.random.default_rng(99), n, bits=40)
    seeds, steps = _records(rng, 9)
    scale = 2.0**-16
    together = (base.clone(), _weights(base))
    k.accumulate(*together, 1, seeds, steps, scale)
    one_by_one = (base.clone(), _weights(base))
    for s, st_ in zip(seeds, steps, strict=True):
        k.accumulate(*one_by_one, 1, [s], [st_], scale)
    _same(one_by_one, together, "one by one")
    order = list(range(len(seeds)))
    for trial in range(4):
        rng.shuffle(order)
        w = (base.clone(), _weights(base))
        cut = 1 + trial
        for part in (order[:cut], order[cut:]):
            k.accumulate(*w, 1, [seeds[i] for i in part], [steps[i] for i in part], scale)
        _same(w, together, f"permutation {order}")
    assert not torch.equal(together[0], base)


@requires_c
def test_c_kernel_split_path_covers_uneven_ranges() -> None:
    """Thread counts that do not divide the number of blocks, and more threads than blocks."""
    rng = random.Random(5)
    for n, threads in itertools.product([BLOCK * 7 + 3, BLOCK * 2, 100], [2, 3, 8]):
        base = _state(np.random.default_rng(n), n)
        seeds, steps = _records(rng, 4)
        want = _expected(base, 6, seeds, steps, -12)
        got = (base.clone(), _weights(base))
        _cpu(threads, min_split=1).accumulate(*got, 6, seeds, steps, 2.0**-12)
        _same(got, want, f"n={n} threads={threads}")


@requires_c
def test_c_kernel_refuses_what_it_cannot_address() -> None:
    k = CpuKernelBackend(threads=1)
    state = torch.zeros(10, dtype=torch.int64)
    with pytest.raises(ModelError, match="contiguous CPU tensors"):
        k.accumulate(torch.zeros(10, 10, dtype=torch.int64)[:, ::2], torch.zeros(10, 10)[:, ::2],
                     0, [1], [1], 1.0)  # fmt: skip
    with pytest.raises(ModelError, match="int64 state, fp32 weights"):
        k.accumulate(state, torch.zeros(10, dtype=torch.float64), 0, [1], [1], 1.0)
    with pytest.raises(ModelError, match="int64 state, fp32 weights"):
        k.accumulate(state.to(torch.int32), torch.zeros(10), 0, [1], [1], 1.0)
    with pytest.raises(ModelError, match="one shape"):
        k.accumulate(state[:5], torch.zeros(10), 0, [1], [1], 1.0)
    _, _, flat, st8, layout, _ = _packed(np.random.default_rng(0), [200, 10])
    steps = layout.steps_matrix([(1, 0, 5)])
    with pytest.raises(ModelError, match="int64 state, fp32 weights"):
        k.accumulate_flat(st8, flat.double(), layout, [1], steps)
    before = (st8.clone(), flat.clone())
    k.accumulate_flat(st8, flat, layout, [], steps[:0])
    _same((st8, flat), before, "no records")


# -- the packed buffer (layout.py) --------------------------------------------------------------


def _packed(
    rng: np.random.Generator, numels: list[int], *, unit_exp: int = -12
) -> tuple[
    list[torch.Tensor], list[TensorGrid], torch.Tensor, torch.Tensor, FlatLayout, list[torch.Tensor]
]:
    """Tensors of assorted magnitudes, packed on their grids; returns the snapped originals."""
    tensors = []
    for i, n in enumerate(numels):
        t = torch.from_numpy(rng.standard_normal(n).astype(np.float32)) * (4.0**i / 64)
        if i == 1:
            t.zero_()  # a zero tensor sits on grid_min_exp
        tensors.append(t.reshape(-1, 1) if i % 2 else t)
    grids = make_grid(
        [(f"p{i}", t) for i, t in enumerate(tensors)],
        epsilon=1e-3,
        unit_exp=unit_exp,
        headroom_exp=3,
        grid_min_exp=unit_exp - 8,
    )
    flat, state, layout = pack_(tensors, grids)
    originals = [t.clone() for t in tensors]
    return tensors, grids, flat, state, layout, originals


def test_pack_makes_parameters_views_of_one_block_aligned_buffer() -> None:
    numels = [1, 128, 129, 300, 4097]
    rng = np.random.default_rng(0)
    raw = [torch.from_numpy(rng.standard_normal(n).astype(np.float32)) for n in numels]
    grids = make_grid([(f"p{i}", t) for i, t in enumerate(raw)], epsilon=1e-3, unit_exp=-12,
                      headroom_exp=3, grid_min_exp=-20)  # fmt: skip
    before = [t.clone() for t in raw]
    flat, state, layout = pack_(raw, grids)
    tensors = raw
    assert layout.n_tensors == len(numels)
    assert layout.numels == tuple(numels)
    assert [o % BLOCK for o in layout.offsets] == [0] * len(numels)
    assert layout.n_blocks == sum(-(-n // BLOCK) for n in numels)
    assert layout.size == layout.n_blocks * BLOCK == flat.numel() == state.numel()
    assert state.dtype == torch.int64
    assert layout.exps == tuple(g.exp for g in grids)
    assert layout.block_tensor.tolist() == [
        t for t, n in enumerate(numels) for _ in range(-(-n // BLOCK))
    ]
    assert layout.block_local.tolist() == [b for n in numels for b in range(-(-n // BLOCK))]
    for t, o, g, off in zip(tensors, before, grids, layout.offsets, strict=True):
        assert t.shape == o.shape
        # the state is the base rounded half to even onto the grid, the weights follow from it
        want = np.round(o.numpy().astype(np.float64) * 2.0**-g.exp)
        assert state[off : off + t.numel()].tolist() == want.astype(np.int64).tolist()
        assert np.array_equal(t.numpy().astype(np.float64), np.ldexp(want, g.exp))
        assert t.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
    flat.add_(1.0)
    assert_same_bits(tensors[2], torch.from_numpy(np.ldexp(np.round(
        before[2].numpy().astype(np.float64) * 2.0**-grids[2].exp), grids[2].exp).astype(
        np.float32)) + 1.0, "views see the buffer")  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    shifts=st.lists(st.integers(min_value=-12, max_value=20), min_size=1, max_size=6),
    eps=st.lists(st.integers(min_value=1, max_value=5000), min_size=6, max_size=6),
    terms=st.lists(st.tuples(st.integers(-2, 2), st.integers(-127, 127)), min_size=1, max_size=10),
)
def test_steps_matrix_equals_update_steps(
    shifts: list[int], eps: list[int], terms: list[tuple[int, int]]
) -> None:
    grids = [TensorGrid(f"t{i}", i, -20, 128, eps[i], s) for i, s in enumerate(shifts)]
    _, _, layout = pack_([torch.zeros(128) for _ in grids], grids)
    got = layout.steps_matrix([(7, m, q) for m, q in terms])
    assert got.dtype == np.int32
    want = [[m * g.eps_steps - g.update_steps(q) for g in grids] for m, q in terms]
    assert got.tolist() == want


@pytest.mark.parametrize("shift", [25, 40, 63, 64, 100])
def test_steps_matrix_refuses_steps_beyond_int32(shift: int) -> None:
    """A grid far finer than the update unit must raise, never wrap around silently."""
    grids = [TensorGrid("t", 0, -100, 128, 1, shift)]
    _, _, layout = pack_([torch.zeros(128)], grids)
    with pytest.raises(OverflowError, match="int32"):
        layout.steps_matrix([(1, 0, 127)])
    with pytest.raises(OverflowError, match="int32"):
        layout.steps_matrix([(1, 0, -1), (2, 0, 127)])


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_accumulate_flat_equals_per_tensor_reference(backend: str) -> None:
    numels = [1, 130, 64, 4096 + 5, 257]
    _, grids, flat, state, layout, _ = _packed(np.random.default_rng(3), numels, unit_exp=-19)
    assert min(g.unit_shift for g in grids) < 0 < max(g.unit_shift for g in grids)
    # states far beyond 2**24 in part of every tensor
    wide = torch.from_numpy(np.random.default_rng(4).integers(-(2**60), 2**60, state.numel()))
    state[::3] = wide[::3]
    before = state.clone()
    rng = random.Random(4)
    terms = [
        (rng.getrandbits(64), rng.choice([0, 1, -2]), rng.randint(-127, 127)) for _ in range(11)
    ]
    terms.append((2**64 - 1, 0, 0))  # a term that moves nothing
    steps = layout.steps_matrix(terms)
    seeds = [s for s, _, _ in terms]
    BACKENDS[backend]().accumulate_flat(state, flat, layout, seeds, steps)
    for t, (g, off, n) in enumerate(zip(grids, layout.offsets, layout.numels, strict=True)):
        want = _expected(before[off : off + n], t, seeds, [int(x) for x in steps[:, t]], g.exp)
        _same((state[off : off + n], flat[off : off + n]), want, f"{backend} tensor {t}")


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_accumulate_flat_batching_independence(backend: str) -> None:
    numels = [300, 5, 4200]
    rng = random.Random(8)
    terms = [(rng.getrandbits(64), 0, rng.randint(-127, 127)) for _ in range(20)]
    results = []
    for split in ([20], [1] * 20, [7, 7, 6], [13, 7]):
        order = list(range(20))
        random.Random(sum(split)).shuffle(order)
        _, _, flat, state, layout, _ = _packed(np.random.default_rng(0), numels)
        start = 0
        for size in split:
            part = [terms[i] for i in order[start : start + size]]
            start += size
            BACKENDS[backend]().accumulate_flat(
                state, flat, layout, [s for s, _, _ in part], layout.steps_matrix(part)
            )
        results.append((state.clone(), flat.clone()))
    for other in results[1:]:
        _same(other, results[0], "batching")


def test_make_backend_and_available_backends() -> None:
    cpu = torch.device("cpu")
    names = available_backends(cpu)
    assert names[0] == "torch"
    assert ("cpu" in names) == (not C_KERNEL_ERROR)
    assert make_backend("torch", cpu).name == "torch"
    assert make_backend("auto", cpu).name == names[-1]
    with pytest.raises(ModelError, match="unknown kernel"):
        make_backend("fast", cpu)
    with pytest.raises(ModelError, match="CUDA"):
        make_backend("triton", cpu)
    with pytest.raises(ModelError, match="CPU"):
        make_backend("cpu", torch.device("cuda"))


@requires_c
def test_make_backend_cpu_takes_its_thread_count_as_a_parameter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SEEDSWARM_KERNEL_THREADS", "5")  # model/ reads no environment
    k = make_backend("cpu", torch.device("cpu"), threads=3)
    assert isinstance(k, CpuKernelBackend)
    assert k.threads == 3


def test_exact_batches_keep_every_tensor_sum_below_2_pow_24() -> None:
    from seedswarm.model.layout import EXACT_SUM, exact_batches

    small = np.array([[5, -3], [7, 1]], dtype=np.int32)
    assert exact_batches(small) == [(0, 2)]
    big = np.array([[2**23, 1], [-(2**23), 1], [2**22, -5], [3, 3]], dtype=np.int32)
    batches = exact_batches(big)
    assert batches[0] == (0, 1)
    assert [hi for _, hi in batches][-1] == 4
    for lo, hi in batches:
        assert np.abs(big[lo:hi].astype(np.int64)).sum(axis=0).max() < EXACT_SUM
    with pytest.raises(OverflowError):
        exact_batches(np.array([[EXACT_SUM, 0]], dtype=np.int32))
    assert exact_batches(np.zeros((0, 3), dtype=np.int32)) == []
