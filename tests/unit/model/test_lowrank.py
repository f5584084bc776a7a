"""Low-rank directions and K-direction steps: every backend, order and batching gives the same bits.

Oracles: ``protocol.philox.lowrank_signs`` (numpy) in int64 for the kernels (the state, far
beyond 2**24 in part, and the weights rewritten from it); for the engine, replaying a step's
records on a fresh replica (a step must equal applying its records).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seedswarm.model import data
from seedswarm.model.engine import Engine
from seedswarm.model.estimators import spsa_gradient
from seedswarm.model.grid import make_grid
from seedswarm.model.hyper import Hyper
from seedswarm.model.kernels import Backend, CpuKernelBackend, TorchBackend
from seedswarm.model.layout import pack_
from seedswarm.model.loading import byte_tokenizer
from seedswarm.model.tasks import Examples, prepare
from seedswarm.protocol.philox import (
    BLOCK,
    STREAM_LOWRANK_A,
    STREAM_LOWRANK_B,
    STREAM_SIGNS,
    lowrank_factors,
    lowrank_signs,
    sign_words,
    signs,
)
from seedswarm.protocol.quantize import quantize_gradient
from seedswarm.protocol.records import Record

from .helpers import C_KERNEL_ERROR, CAUSAL, HYPER, assert_same_bits, assert_same_state, requires_c

KERNELS = ["torch", pytest.param("cpu", marks=requires_c)]


def _cpu(threads: int, min_split: int | None = None) -> Backend:
    k = CpuKernelBackend(threads=threads)
    if min_split is not None:
        k.min_split = min_split
    return k


BACKENDS: dict[str, Callable[[], Backend]] = {
    "torch": TorchBackend,
    "torch-chunked": lambda: TorchBackend(chunk_elements=3 * BLOCK),
    "cpu-1": lambda: _cpu(1),
    "cpu-3-split": lambda: _cpu(3, min_split=1),
}
BACKEND_PARAMS = [
    pytest.param(n, marks=[requires_c] if n.startswith("cpu") else [], id=n) for n in BACKENDS
]
SHAPES = [(1, 1), (1, 300), (300, 1), (3, 5), (127, 129), (128, 128), (257, 33), (1030, 40)]


def _grid_matrix(rng: np.random.Generator, rows: int, cols: int) -> torch.Tensor:
    """int64 states, most |n| < 2**20 and a tenth anywhere below 2**62."""
    ints = rng.integers(-(2**20), 2**20, size=(rows, cols), dtype=np.int64)
    wide = rng.random((rows, cols)) < 0.1
    ints[wide] = rng.integers(-(2**62), 2**62, size=int(wide.sum()), dtype=np.int64)
    return torch.from_numpy(ints)


def _expected(
    n: torch.Tensor, tid: int, seeds: list[int], steps: list[int], exp: int
) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = n.shape
    acc = np.zeros(rows * cols, dtype=np.int64)
    for s, k in zip(seeds, steps, strict=True):
        acc += k * lowrank_signs(s, tid, rows, cols).astype(np.int64)
    state = n.numpy().reshape(-1) + acc
    w = np.ldexp(state.astype(np.float32).astype(np.float64), exp).astype(np.float32)
    return torch.from_numpy(state.reshape(rows, cols)), torch.from_numpy(w.reshape(rows, cols))


def _fresh(n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return n.clone(), torch.full(n.shape, 0.5, dtype=torch.float32)  # stale weights


def _same(
    got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor], what: str
) -> None:
    assert_same_bits(got[0], want[0], f"{what} (state)")
    assert_same_bits(got[1], want[1], f"{what} (weights)")


# -- the stream ----------------------------------------------------------------------------------


def test_lowrank_stream_test_vectors() -> None:
    """docs/PROTOCOL.md: seed(0123456789abcdef, "n0", 7), tensor 3."""
    seed = 0x5F28BDA3D531142D
    a, b = lowrank_factors(seed, 3, 40, 40)

    def text(v: npt.NDArray[np.int8]) -> str:
        return "".join("+" if x > 0 else "-" for x in v)

    assert text(a) == "--++++-++-+-+-+-+--+-+-++-----------++-+"
    assert text(b) == "++--+-+--+++++++--++-++++++----+-++--+--"
    assert text(signs(seed, 3, 40)) == "+++--+--++-------+++--+--++--++---+--++-"  # §10, unchanged
    z = lowrank_signs(seed, 3, 3, 4)
    assert z.tolist() == [a[i] * b[j] for i in range(3) for j in range(4)]


def test_lowrank_streams_are_their_own_counters() -> None:
    """(block, tensor, 0, 3) and (block, tensor, 0, 4): no overlap with the dense signs'
    (block, tensor, 0, 0), the quantiser's (0, 0, 0, 1) or the data's (i, 0, 0, 2)."""
    seed = 12345
    dense = sign_words(seed, 0, 0, 4, STREAM_SIGNS)
    a = sign_words(seed, 0, 0, 4, STREAM_LOWRANK_A)
    b = sign_words(seed, 0, 0, 4, STREAM_LOWRANK_B)
    assert len({dense.tobytes(), a.tobytes(), b.tobytes()}) == 3
    assert (STREAM_LOWRANK_A, STREAM_LOWRANK_B) == (3, 4)
    # a spans rows and b columns, each laid out exactly like the dense signs
    a_words = sign_words(seed, 9, 0, 2, STREAM_LOWRANK_A)
    got_a, _ = lowrank_factors(seed, 9, 200, 1)
    for e in range(200):
        bit = (int(a_words[e // 128, (e % 128) // 32]) >> (e % 32)) & 1
        assert got_a[e] == 1 - 2 * bit


# -- the kernels ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize(("rows", "cols"), SHAPES)
def test_lowrank_accumulate_equals_reference(backend: str, rows: int, cols: int) -> None:
    rng = random.Random(rows * 1000 + cols)
    nrng = np.random.default_rng(rows + cols)
    for exp, tid, r in ((-20, 0, 1), (-7, 2**32 - 1, 9), (0, 12345, 17)):
        base = _grid_matrix(nrng, rows, cols)
        seeds = [rng.choice([0, 2**64 - 1, rng.getrandbits(64)]) for _ in range(r)]
        steps = [rng.randint(-3000, 3000) for _ in range(r)]
        if r > 2:
            steps[1] = 0
        want = _expected(base, tid, seeds, steps, exp)
        got = _fresh(base)
        BACKENDS[backend]().accumulate_lowrank(*got, tid, seeds, steps, 2.0**exp)
        _same(got, want, f"{backend} {rows}x{cols} exp={exp}")


@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(1, 400),
    cols=st.integers(1, 140),
    r=st.integers(1, 40),
    seed=st.integers(0, 2**32),
)
def test_lowrank_backends_agree_hypothesis(rows: int, cols: int, r: int, seed: int) -> None:
    rng = random.Random(seed)
    base = _grid_matrix(np.random.default_rng(seed), rows, cols)
    seeds = [rng.getrandbits(64) for _ in range(r)]
    # sum |steps| up to 2**23: the kernels' int32 sums get near a batch's exact range's edge
    top = (2**23 - 1) // r
    steps = [rng.randint(-top, top) for _ in range(r)]
    want = _expected(base, 5, seeds, steps, -30)
    names = [k for k in BACKENDS if not (k.startswith("cpu") and C_KERNEL_ERROR)]
    for name in names:
        got = _fresh(base)
        BACKENDS[name]().accumulate_lowrank(*got, 5, seeds, steps, 2.0**-30)
        _same(got, want, name)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_lowrank_order_and_batching_independence(backend: str) -> None:
    k = BACKENDS[backend]()
    rng = random.Random(3)
    base = _grid_matrix(np.random.default_rng(3), 200, 70)
    seeds = [rng.getrandbits(64) for _ in range(21)]
    steps = [rng.randint(-999, 999) for _ in range(21)]
    together = _fresh(base)
    k.accumulate_lowrank(*together, 2, seeds, steps, 2.0**-16)
    for trial in range(3):
        order = list(range(21))
        rng.shuffle(order)
        w = _fresh(base)
        for part in (order[: 5 + trial], order[5 + trial :]):
            k.accumulate_lowrank(
                *w, 2, [seeds[i] for i in part], [steps[i] for i in part], 2.0**-16
            )
        _same(w, together, f"split {trial}")
    assert not torch.equal(together[0], base)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_lowrank_zero_steps_are_no_ops(backend: str) -> None:
    k = BACKENDS[backend]()
    n = _grid_matrix(np.random.default_rng(1), 50, 60)
    w = _fresh(n)
    before = (w[0].clone(), w[1].clone())
    k.accumulate_lowrank(*w, 3, [1, 2], [0, 0], 2.0**-10)
    k.accumulate_lowrank(*w, 3, [], [], 2.0**-10)
    _same(w, before, "zero steps touch nothing")
    k.accumulate_lowrank(torch.zeros(0, 4, dtype=torch.int64), torch.zeros(0, 4), 3, [1], [1], 1.0)


@requires_c
def test_c_lowrank_refuses_what_it_cannot_address() -> None:
    k = CpuKernelBackend(threads=1)
    from seedswarm.model.errors import ModelError

    with pytest.raises(ModelError, match="contiguous CPU tensors"):
        k.accumulate_lowrank(
            torch.zeros(10, 10, dtype=torch.int64)[:, ::2], torch.zeros(10, 10)[:, ::2], 0, [1],
            [1], 1.0,
        )  # fmt: skip
    with pytest.raises(ModelError, match="int64 state"):
        k.accumulate_lowrank(torch.zeros(10, 10), torch.zeros(10, 10), 0, [1], [1], 1.0)


# -- the packed layout -----------------------------------------------------------------------------


def _packed_mixed(
    lowrank: bool,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, object]:
    rng = np.random.default_rng(0)
    shapes = [(300,), (40, 50), (7,), (129, 3), (1, 260), (5, 5, 5)]
    tensors = [torch.from_numpy(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    grids = make_grid(
        [(f"p{i}", t) for i, t in enumerate(tensors)],
        epsilon=1e-3, unit_exp=-12, headroom_exp=3, grid_min_exp=-20,
    )  # fmt: skip
    flat, state, layout = pack_(tensors, grids, lowrank=lowrank)
    return tensors, flat, state, layout


def test_pack_puts_matrices_after_the_dense_tensors() -> None:
    tensors, flat, _, layout = _packed_mixed(lowrank=True)
    from seedswarm.model.layout import FlatLayout

    assert isinstance(layout, FlatLayout)
    assert [m.tensor_id for m in layout.matrices] == [1, 3, 4]
    dense_ids = [0, 2, 5]
    assert layout.n_dense_blocks == sum(-(-tensors[t].numel() // BLOCK) for t in dense_ids)
    assert sorted(set(layout.block_tensor[: layout.n_dense_blocks].tolist())) == dense_ids
    for m in layout.matrices:
        assert m.offset % BLOCK == 0
        assert m.offset >= layout.n_dense_blocks * BLOCK
        assert (m.rows, m.cols) == tuple(tensors[m.tensor_id].shape)
        assert (
            tensors[m.tensor_id].untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
        )
    _, _, _, dense = _packed_mixed(lowrank=False)
    assert isinstance(dense, FlatLayout)
    assert dense.matrices == ()
    assert dense.n_dense_blocks == dense.n_blocks


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_accumulate_flat_with_matrices_equals_per_tensor_reference(backend: str) -> None:
    from seedswarm.model.layout import FlatLayout

    tensors, flat, state, layout = _packed_mixed(lowrank=True)
    assert isinstance(layout, FlatLayout)
    state[::5] += 2**50  # part of every tensor far beyond 2**24
    before = state.clone()
    rng = random.Random(4)
    terms = [
        (rng.getrandbits(64), rng.choice([0, 1, -2]), rng.randint(-127, 127)) for _ in range(9)
    ]
    steps = layout.steps_matrix(terms)
    seeds = [s for s, _, _ in terms]
    BACKENDS[backend]().accumulate_flat(state, flat, layout, seeds, steps)
    matrices = {m.tensor_id for m in layout.matrices}
    for t, (off, n) in enumerate(zip(layout.offsets, layout.numels, strict=True)):
        exp = layout.exps[t]
        col = [int(x) for x in steps[:, t]]
        shape = tensors[t].shape
        if t in matrices:
            want = _expected(before[off : off + n].view(shape), t, seeds, col, exp)
        else:
            acc = np.zeros(n, dtype=np.int64)
            for s, k in zip(seeds, col, strict=True):
                acc += k * signs(s, t, n).astype(np.int64)
            st_ = before[off : off + n].numpy() + acc
            w = np.ldexp(st_.astype(np.float32).astype(np.float64), exp).astype(np.float32)
            want = (torch.from_numpy(st_).view(shape), torch.from_numpy(w).view(shape))
        _same((state[off : off + n].view(shape), tensors[t]), want, f"{backend} tensor {t}")


# -- the engine: K-direction steps and low-rank records ------------------------------------------


@pytest.fixture(scope="module")
def chunks() -> Examples:
    return prepare(data.read("builtin:patterns"), CAUSAL, byte_tokenizer())


def _hyper(estimator: str = "fzoo", k: int = 4, direction: str = "dense") -> Hyper:
    return Hyper(
        lr=HYPER.lr, unit_exp=HYPER.unit_exp, estimator=estimator, directions=k,
        direction=direction,
    )  # fmt: skip


def _engine(hyper: Hyper, kernel: str) -> Engine:
    return Engine.build("t", "tiny", CAUSAL, hyper, kernel=kernel)


def _batch(e: Engine, ex: Examples, seed: int) -> dict[str, torch.Tensor]:
    return e.task_model.make_batch(ex.subset(data.sample_batch(seed, len(ex), 8)))


def _steps(e: Engine, ex: Examples, node: str, n: int, first: int = 0) -> list[Record]:
    k = e.records_per_step
    out = []
    for i in range(n):
        seq = first + i * k
        seeds = [e.seed_of(node, seq + j) for j in range(k)]
        res = e.step(seeds, _batch(e, ex, seeds[0]))
        assert len(res.qs) == len(res.gs) == k
        assert len(res.losses) == e.forwards_per_step
        out += [Record(node, seq + j, q, i) for j, q in enumerate(res.qs)]
    return out


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("direction", ["dense", "lowrank"])
def test_fzoo_step_equals_applying_its_records(
    kernel: str, direction: str, chunks: Examples
) -> None:
    hyper = _hyper("fzoo", 4, direction)
    stepper, replica = _engine(hyper, kernel), _engine(hyper, kernel)
    assert (stepper.records_per_step, stepper.forwards_per_step) == (4, 5)
    if direction == "lowrank":
        assert stepper.layout.matrices
    records = _steps(stepper, chunks, "me", 3)
    assert sum(1 for r in records if r.q) > 6
    assert all(-127 <= r.q <= 127 for r in records)
    random.Random(1).shuffle(records)
    replica.apply(records, batch=5)
    assert_same_state(stepper, replica)


@pytest.mark.parametrize("direction", ["dense", "lowrank"])
def test_fzoo_pending_records_ride_along(direction: str, chunks: Examples) -> None:
    hyper = _hyper("fzoo", 3, direction)
    peers_engine = _engine(hyper, "torch")
    peers = _steps(peers_engine, chunks, "p", 2)
    fused, separate = _engine(hyper, "auto"), _engine(hyper, "auto")
    seeds = [fused.seed_of("me", j) for j in range(3)]
    batch = _batch(fused, chunks, seeds[0])
    res_fused = fused.step(seeds, batch, pending=peers)
    separate.apply(peers)
    assert separate.step(seeds, batch) == res_fused
    assert_same_state(fused, separate)


def test_lowrank_records_replay_across_backends_orders_and_batches(chunks: Examples) -> None:
    """Records of SPSA and FZOO steps (two runs' worth of bytes) mixed in one log."""
    main = "torch" if C_KERNEL_ERROR else "cpu"
    fz = _engine(_hyper("fzoo", 4, "lowrank"), main)
    records = _steps(fz, chunks, "a", 4)
    # SPSA steps on the same run: their records mean the same kind of update
    for seq in range(3):
        seed = fz.seed_of("b", seq)
        g = spsa_gradient(0.3 + 0.01 * seq, 0.3, fz.manifest.epsilon)
        q = quantize_gradient(g, lr=fz.manifest.lr, unit_exp=fz.manifest.unit_exp, seed=seed)
        records.append(Record("b", seq, q, seq))
    ref = Engine.open(fz.manifest, kernel=main)
    ref.apply(records)
    shuffled = list(records)
    random.Random(5).shuffle(shuffled)
    for kernel, order, batch in (
        (main, shuffled, 1),
        (main, shuffled[::-1], 7),
        ("torch", shuffled, 256),
        ("torch", records, 3),
    ):
        e = Engine.open(fz.manifest, kernel=kernel)
        e.apply(order, batch=batch)
        assert_same_state(ref, e, f"{kernel} batch {batch}")
    # and lowrank records are not dense records: the same bytes on a dense run differ
    dense = _engine(_hyper("fzoo", 4, "dense"), main)
    dense.apply(records)
    assert dense.fingerprint() != ref.fingerprint()


@pytest.mark.parametrize("kernel", KERNELS)
def test_spsa_lowrank_step_equals_its_record(kernel: str, chunks: Examples) -> None:
    hyper = _hyper("spsa", 1, "lowrank")
    stepper, replica = _engine(hyper, kernel), _engine(hyper, kernel)
    records = _steps(stepper, chunks, "s", 3)
    assert any(r.q for r in records)
    replica.apply(records[::-1])
    assert_same_state(stepper, replica)


def test_fzoo_step_with_equal_losses_moves_nothing(chunks: Examples) -> None:
    """eps too small to change any loss: sigma = 0, every q = 0, the base bits come back."""
    e = Engine.build(
        "t", "tiny", CAUSAL, Hyper(lr=3e-3, unit_exp=-12, epsilon=1e-30, grid_min_exp=-20,
                                   estimator="fzoo", directions=3),
    )  # fmt: skip
    fp = e.fingerprint()
    seeds = [e.seed_of("n", j) for j in range(3)]
    res = e.step(seeds, _batch(e, chunks, seeds[0]))
    # eps snaps to one grid step per tensor: the losses may still move a little; when all
    # three perturbed losses are equal, q must be 0 and nothing may move
    if len(set(res.losses[1:])) == 1:
        assert res.qs == (0, 0, 0)
        assert e.fingerprint() == fp
    else:
        replica = Engine.open(e.manifest)
        replica.apply([Record("n", j, q, 0) for j, q in enumerate(res.qs)])
        assert_same_state(e, replica)


def test_step_checks_the_number_of_seeds(chunks: Examples) -> None:
    e = _engine(_hyper("fzoo", 4), "torch")
    with pytest.raises(ValueError, match="takes 4 seeds, got 1"):
        e.step([1], _batch(e, chunks, 1))
