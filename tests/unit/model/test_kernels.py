"""Kernels: every backend adds ``scale * sum_r steps_r * z_r`` with exactly the same bits.

The oracle is an independent float64 numpy computation from the numpy Philox reference, on
values chosen so that every intermediate is exactly representable (grid values with |n| < 2**24).
The torch backend runs with tiny chunks too, and the C kernel single- and multi-threaded with a
lowered ``min_split`` so that its split-by-block-range path runs.
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
from seedswarm.model.grid import TensorGrid, make_grid, snap_
from seedswarm.model.kernels import (
    Backend,
    CpuKernelBackend,
    TorchBackend,
    available_backends,
    make_backend,
    scale_of,
)
from seedswarm.model.layout import FlatLayout, pack_
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


def _grid_weights(rng: np.random.Generator, n: int, exp: int) -> torch.Tensor:
    """Weights n_i * 2**exp with |n_i| < 2**20: on the grid, with room for the updates."""
    ints = rng.integers(-(2**20), 2**20, size=n)
    return torch.from_numpy(np.ldexp(ints.astype(np.float64), exp).astype(np.float32))


def _records(rng: random.Random, r: int, max_step: int = 1000) -> tuple[list[int], list[int]]:
    seeds = [rng.choice([0, 2**64 - 1, rng.getrandbits(64)]) for _ in range(r)]
    steps = [rng.randint(-max_step, max_step) for _ in range(r)]
    return seeds, steps


def _expected(
    w: torch.Tensor, tid: int, seeds: list[int], steps: list[int], exp: int
) -> torch.Tensor:
    ref = reference_accumulate(w.numpy().astype(np.float64), tid, seeds, steps, math.ldexp(1, exp))
    out = ref.astype(np.float32)
    assert np.array_equal(out.astype(np.float64), ref), "the oracle itself must be exact"
    return torch.from_numpy(out)


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
def test_accumulate_equals_float64_reference(backend: str, n: int) -> None:
    rng = random.Random(n)
    nrng = np.random.default_rng(n)
    for exp, tid, r in ((-20, 0, 1), (-7, 2**32 - 1, 5), (0, 12345, 16)):
        w = _grid_weights(nrng, n, exp)
        seeds, steps = _records(rng, r)
        want = _expected(w, tid, seeds, steps, exp)
        BACKENDS[backend]().accumulate(w, tid, seeds, steps, scale_of(exp))
        assert_same_bits(w, want, f"{backend} n={n} exp={exp}")


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=9000),
    r=st.integers(min_value=1, max_value=12),
    tid=st.integers(min_value=0, max_value=2**32 - 1),
    exp=st.integers(min_value=-40, max_value=0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_all_backends_agree_with_reference_hypothesis(
    n: int, r: int, tid: int, exp: int, seed: int
) -> None:
    rng = random.Random(seed)
    base = _grid_weights(np.random.default_rng(seed), n, exp)
    seeds, steps = _records(rng, r, max_step=5000)
    want = _expected(base, tid, seeds, steps, exp)
    names = [k for k in BACKENDS if not (k.startswith("cpu") and C_KERNEL_ERROR)]
    for name in names:
        w = base.clone()
        BACKENDS[name]().accumulate(w, tid, seeds, steps, scale_of(exp))
        assert_same_bits(w, want, name)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_zero_steps_are_no_ops(backend: str) -> None:
    k = BACKENDS[backend]()
    w = _grid_weights(np.random.default_rng(1), 1000, -10)
    w[:7] = -0.0  # even the sign of zero survives
    before = w.clone()
    k.accumulate(w, 3, [1, 2, 3], [0, 0, 0], scale_of(-10))
    k.accumulate(w, 3, [], [], scale_of(-10))
    assert_same_bits(w, before, "all-zero steps")
    # zeros mixed with real steps: the same as leaving them out
    a, b = w.clone(), w.clone()
    k.accumulate(a, 3, [1, 2, 3, 4], [0, 5, 0, -9], scale_of(-10))
    k.accumulate(b, 3, [2, 4], [5, -9], scale_of(-10))
    assert_same_bits(a, b, "zeros mixed in")
    empty = torch.zeros(0)
    k.accumulate(empty, 3, [1], [1], 1.0)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("n", [129, 5000])
def test_order_and_batching_independence(backend: str, n: int) -> None:
    """One call with R records == R calls of one == any permutation == any split."""
    k = BACKENDS[backend]()
    rng = random.Random(99)
    base = _grid_weights(np.random.default_rng(99), n, -16)
    seeds, steps = _records(rng, 9)
    scale = scale_of(-16)
    together = base.clone()
    k.accumulate(together, 1, seeds, steps, scale)
    one_by_one = base.clone()
    for s, st_ in zip(seeds, steps, strict=True):
        k.accumulate(one_by_one, 1, [s], [st_], scale)
    assert_same_bits(together, one_by_one, "one by one")
    order = list(range(len(seeds)))
    for trial in range(4):
        rng.shuffle(order)
        w = base.clone()
        cut = 1 + trial
        for part in (order[:cut], order[cut:]):
            k.accumulate(w, 1, [seeds[i] for i in part], [steps[i] for i in part], scale)
        assert_same_bits(together, w, f"permutation {order}")
    assert not torch.equal(together, base)


@requires_c
def test_c_kernel_split_path_covers_uneven_ranges() -> None:
    """Thread counts that do not divide the number of blocks, and more threads than blocks."""
    rng = random.Random(5)
    for n, threads in itertools.product([BLOCK * 7 + 3, BLOCK * 2, 100], [2, 3, 8]):
        base = _grid_weights(np.random.default_rng(n), n, -12)
        seeds, steps = _records(rng, 4)
        want = _expected(base, 6, seeds, steps, -12)
        w = base.clone()
        _cpu(threads, min_split=1).accumulate(w, 6, seeds, steps, scale_of(-12))
        assert_same_bits(w, want, f"n={n} threads={threads}")


@requires_c
def test_c_kernel_refuses_what_it_cannot_address() -> None:
    k = CpuKernelBackend(threads=1)
    with pytest.raises(ModelError, match="contiguous fp32"):
        k.accumulate(torch.zeros(10, 10)[:, ::2], 0, [1], [1], 1.0)
    with pytest.raises(ModelError, match="contiguous fp32"):
        k.accumulate(torch.zeros(10, dtype=torch.float64), 0, [1], [1], 1.0)
    _, _, flat, layout, _ = _packed(np.random.default_rng(0), [200, 10])
    steps = layout.steps_matrix([(1, 0, 5)])
    with pytest.raises(ModelError, match="contiguous fp32"):
        k.accumulate_flat(flat.double(), layout, [1], steps)
    before = flat.clone()
    k.accumulate_flat(flat, layout, [], steps[:0])
    assert_same_bits(flat, before, "no records")


# -- the packed buffer (layout.py) --------------------------------------------------------------


def _packed(
    rng: np.random.Generator, numels: list[int], *, unit_exp: int = -12
) -> tuple[list[torch.Tensor], list[TensorGrid], torch.Tensor, FlatLayout, list[torch.Tensor]]:
    """Tensors of assorted magnitudes on their grids, packed; returns copies of the originals."""
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
    for t, g in zip(tensors, grids, strict=True):
        snap_(t, g.exp)
    originals = [t.clone() for t in tensors]
    flat, layout = pack_(tensors, grids)
    return tensors, grids, flat, layout, originals


def test_pack_makes_parameters_views_of_one_block_aligned_buffer() -> None:
    numels = [1, 128, 129, 300, 4097]
    tensors, _, flat, layout, originals = _packed(np.random.default_rng(0), numels)
    assert layout.n_tensors == len(numels)
    assert layout.numels == tuple(numels)
    assert [o % BLOCK for o in layout.offsets] == [0] * len(numels)
    assert layout.n_blocks == sum(-(-n // BLOCK) for n in numels)
    assert layout.size == layout.n_blocks * BLOCK == flat.numel()
    assert layout.block_tensor.tolist() == [
        t for t, n in enumerate(numels) for _ in range(-(-n // BLOCK))
    ]
    assert layout.block_local.tolist() == [b for n in numels for b in range(-(-n // BLOCK))]
    for t, o in zip(tensors, originals, strict=True):
        assert t.shape == o.shape
        assert_same_bits(t, o, "pack keeps the values")
        assert t.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
    flat.add_(1.0)
    assert_same_bits(tensors[2], originals[2] + 1.0, "views see the buffer")


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
    _, layout = pack_([torch.zeros(128) for _ in grids], grids)
    got = layout.steps_matrix([(7, m, q) for m, q in terms])
    assert got.dtype == np.int32
    want = [[m * g.eps_steps - g.update_steps(q) for g in grids] for m, q in terms]
    assert got.tolist() == want


@pytest.mark.parametrize("shift", [25, 40, 63, 64, 100])
def test_steps_matrix_refuses_steps_beyond_int32(shift: int) -> None:
    """A grid far finer than the update unit must raise, never wrap around silently."""
    grids = [TensorGrid("t", 0, -100, 128, 1, shift)]
    _, layout = pack_([torch.zeros(128)], grids)
    with pytest.raises(OverflowError, match="int32"):
        layout.steps_matrix([(1, 0, 127)])
    with pytest.raises(OverflowError, match="int32"):
        layout.steps_matrix([(1, 0, -1), (2, 0, 127)])


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_accumulate_flat_equals_per_tensor_reference(backend: str) -> None:
    numels = [1, 130, 64, 4096 + 5, 257]
    tensors, grids, flat, layout, originals = _packed(
        np.random.default_rng(3), numels, unit_exp=-19
    )
    assert min(g.unit_shift for g in grids) < 0 < max(g.unit_shift for g in grids)
    rng = random.Random(4)
    terms = [
        (rng.getrandbits(64), rng.choice([0, 1, -2]), rng.randint(-127, 127)) for _ in range(11)
    ]
    terms.append((2**64 - 1, 0, 0))  # a term that moves nothing
    steps = layout.steps_matrix(terms)
    seeds = [s for s, _, _ in terms]
    BACKENDS[backend]().accumulate_flat(flat, layout, seeds, steps)
    for t, (g, o) in enumerate(zip(grids, originals, strict=True)):
        want = _expected(o.reshape(-1), t, seeds, [int(x) for x in steps[:, t]], g.exp)
        assert_same_bits(tensors[t].reshape(-1), want, f"{backend} tensor {t}")


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_accumulate_flat_batching_independence(backend: str) -> None:
    numels = [300, 5, 4200]
    rng = random.Random(8)
    terms = [(rng.getrandbits(64), 0, rng.randint(-127, 127)) for _ in range(20)]
    results = []
    for split in ([20], [1] * 20, [7, 7, 6], [13, 7]):
        order = list(range(20))
        random.Random(sum(split)).shuffle(order)
        tensors, _, flat, layout, _ = _packed(np.random.default_rng(0), numels)
        start = 0
        for size in split:
            part = [terms[i] for i in order[start : start + size]]
            start += size
            BACKENDS[backend]().accumulate_flat(
                flat, layout, [s for s, _, _ in part], layout.steps_matrix(part)
            )
        results.append([t.clone() for t in tensors])
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert_same_bits(a, b, "batching")


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
