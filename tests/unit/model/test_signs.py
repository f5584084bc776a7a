"""The sign stream: every generator of z equals the numpy Philox reference, bit for bit.

``seedswarm.protocol.philox`` is the normative implementation (itself checked against published
Philox answers in tests/unit/protocol). Here the torch generator (signs.py, the portable backend
and the one CUDA uses) and the C kernel's generator must produce exactly its signs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seedswarm.model.kernels import CpuKernelBackend, TorchBackend
from seedswarm.model.signs import philox_words, sign_bits_torch, signs_torch
from seedswarm.protocol.philox import BLOCK, philox4x32, sign_bits, sign_words, signs

from .helpers import requires_c

CPU = torch.device("cpu")
SIZES = [1, 2, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1000, 4095, 4096, 4097, 12345]
SEEDS = [0, 1, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1, 0x0123456789ABCDEF, 0xFEDCBA9876543210]
TENSOR_IDS = [0, 1, 7, 2**31 - 1, 2**31, 2**32 - 1]

seeds64 = st.integers(min_value=0, max_value=2**64 - 1)
tensor_ids = st.integers(min_value=0, max_value=2**32 - 1)
u32 = st.integers(min_value=0, max_value=2**32 - 1)


def _ref(seed: int, tensor_id: int, numel: int) -> torch.Tensor:
    return torch.from_numpy(signs(seed, tensor_id, numel))


@pytest.mark.parametrize("numel", SIZES)
def test_torch_signs_equal_reference_for_every_size(numel: int) -> None:
    for seed in (0, 2**64 - 1, 0x0123456789ABCDEF):
        got = signs_torch(seed, 3, numel, CPU)
        assert got.dtype == torch.int8
        assert got.shape == (numel,)
        assert torch.equal(got, _ref(seed, 3, numel)), (seed, numel)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("tensor_id", TENSOR_IDS)
def test_torch_signs_equal_reference_for_extreme_keys(seed: int, tensor_id: int) -> None:
    assert torch.equal(signs_torch(seed, tensor_id, 389, CPU), _ref(seed, tensor_id, 389))


@requires_c
@pytest.mark.parametrize("numel", SIZES)
def test_c_signs_equal_reference_for_every_size(numel: int) -> None:
    k = CpuKernelBackend(threads=1)
    for seed in (0, 2**64 - 1, 0x0123456789ABCDEF):
        assert torch.equal(k.signs(seed, 5, numel), _ref(seed, 5, numel)), (seed, numel)


@requires_c
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("tensor_id", TENSOR_IDS)
def test_c_signs_equal_reference_for_extreme_keys(seed: int, tensor_id: int) -> None:
    k = CpuKernelBackend(threads=1)
    assert torch.equal(k.signs(seed, tensor_id, 389), _ref(seed, tensor_id, 389))


@settings(max_examples=60, deadline=None)
@given(seed=seeds64, tensor_id=tensor_ids, numel=st.integers(min_value=0, max_value=3000))
def test_torch_signs_equal_reference_hypothesis(seed: int, tensor_id: int, numel: int) -> None:
    assert torch.equal(signs_torch(seed, tensor_id, numel, CPU), _ref(seed, tensor_id, numel))


@requires_c
@settings(max_examples=60, deadline=None)
@given(seed=seeds64, tensor_id=tensor_ids, numel=st.integers(min_value=0, max_value=3000))
def test_c_signs_equal_reference_hypothesis(seed: int, tensor_id: int, numel: int) -> None:
    k = CpuKernelBackend(threads=1)
    assert torch.equal(k.signs(seed, tensor_id, numel), _ref(seed, tensor_id, numel))


@settings(max_examples=40, deadline=None)
@given(
    keys=st.lists(st.tuples(u32, u32), min_size=1, max_size=4),
    counters=st.lists(u32, min_size=1, max_size=6),
    c1=u32,
    c2=u32,
    c3=u32,
)
def test_torch_philox_words_equal_numpy_philox(
    keys: list[tuple[int, int]], counters: list[int], c1: int, c2: int, c3: int
) -> None:
    """The 16-bit-split multiply of signs.py against numpy's uint64 Philox on arbitrary inputs."""
    k0 = torch.tensor([k[0] for k in keys], dtype=torch.int64).view(-1, 1)
    k1 = torch.tensor([k[1] for k in keys], dtype=torch.int64).view(-1, 1)
    c0 = torch.tensor(counters, dtype=torch.int64).view(1, -1)
    words = torch.stack(philox_words(k0, k1, c0, c1, c2, c3), -1)  # (R, n, 4)
    assert words.shape == (len(keys), len(counters), 4)
    assert int(words.min()) >= 0
    assert int(words.max()) < 2**32
    for r, key in enumerate(keys):
        ctr = np.array([[c, c1, c2, c3] for c in counters], dtype=np.uint32)
        want = philox4x32(ctr, np.array(key, dtype=np.uint32)).astype(np.int64)
        assert np.array_equal(words[r].numpy(), want), key


@pytest.mark.parametrize(("first_block", "n_blocks"), [(0, 1), (0, 5), (3, 2), (2**32 - 2, 2)])
def test_sign_bits_of_a_block_range_follow_the_layout(first_block: int, n_blocks: int) -> None:
    """Element 128*b + 32*w + j takes bit j (LSB first) of word w of block b; 1 means -1."""
    seeds = [0, 2**64 - 1, 77]
    got = sign_bits_torch(seeds, 9, first_block, n_blocks, CPU)
    assert got.shape == (3, n_blocks * BLOCK)
    for r, seed in enumerate(seeds):
        words = sign_words(seed, 9, first_block, n_blocks)
        want = [
            (int(words[b, w]) >> j) & 1
            for b in range(n_blocks)
            for w in range(4)
            for j in range(32)
        ]
        assert got[r].tolist() == want
    if first_block == 0:
        n = n_blocks * BLOCK
        assert np.array_equal(got[1].numpy(), sign_bits(2**64 - 1, 9, n))


@pytest.mark.parametrize("shape", [(3, 5, 7), (128, 3), (2, 64, 2), (1, 129), (17, 1, 1, 9)])
def test_multidim_tensor_takes_its_signs_in_row_major_order(shape: tuple[int, ...]) -> None:
    """A (d0, d1, ...) tensor updated through its flat view: element [i, j, ...] gets z[flat index]."""
    numel = int(np.prod(shape))
    ref = signs(42, 4, numel).reshape(shape)
    n = torch.zeros(shape, dtype=torch.int64)
    w = torch.zeros(shape, dtype=torch.float32)
    TorchBackend().accumulate(n.view(-1), w.view(-1), 4, [42], [1], 1.0)
    assert np.array_equal(n.numpy(), ref.astype(np.int64))
    assert np.array_equal(w.numpy(), ref.astype(np.float32))
    idx = tuple(d - 1 for d in shape)
    flat_index = int(np.ravel_multi_index(idx, shape))
    assert float(w[idx]) == float(signs(42, 4, numel)[flat_index])


def test_signs_are_balanced_and_depend_on_every_key_part() -> None:
    """A sanity net under the equality tests: the stream is not constant or degenerate."""
    base = signs_torch(123, 0, 1 << 16, CPU)
    assert set(base.tolist()) == {-1, 1}
    assert abs(int(base.sum())) < 2000  # 65536 fair coin flips: sd 256
    for other in (
        signs_torch(124, 0, 1 << 16, CPU),  # seed low word
        signs_torch(123 + 2**32, 0, 1 << 16, CPU),  # seed high word
        signs_torch(123, 1, 1 << 16, CPU),  # tensor id
    ):
        agree = int((other == base).sum())
        assert 30000 < agree < 35536
    # successive blocks differ (the block counter is used)
    blocks = base.view(-1, BLOCK)
    assert not torch.equal(blocks[0], blocks[1])
