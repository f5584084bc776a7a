"""The seeded initial values of a LoRA adapter's A (protocol/adapter.py): the formula, element
by element, from the Philox reference, and the distribution it is meant to have."""

from __future__ import annotations

import math

import numpy as np
import pytest

from seedswarm.protocol.adapter import lora_a_init
from seedswarm.protocol.philox import STREAM_INIT, philox4x32, seed_key


def test_each_element_is_one_word_of_its_counter() -> None:
    seed, index, rows, cols = 0x0123_4567_89AB_CDEF, 5, 3, 7
    got = lora_a_init(seed, index, rows, cols).reshape(-1)
    bound = 1.0 / math.sqrt(cols)
    for e in range(rows * cols):
        ctr = np.array([[e // 4, index, 0, STREAM_INIT]], dtype=np.uint32)
        word = int(philox4x32(ctr, seed_key(seed))[0, e % 4])
        x = (2 * (word >> 8) + 1 - 2**24) / 2**24  # exact in binary64
        want = np.float32(x * bound)
        assert got[e].tobytes() == want.tobytes(), e


def test_uniform_in_the_kaiming_bound_and_seeded() -> None:
    a = lora_a_init(7, 0, 64, 512)
    bound = 1.0 / math.sqrt(512)
    assert a.dtype == np.float32
    assert a.shape == (64, 512)
    assert float(np.abs(a).max()) < bound
    # a uniform draw: mean 0, variance bound**2 / 3 (32768 samples: loose but certain bounds)
    assert abs(float(a.mean())) < 0.02 * bound
    assert float(a.var()) == pytest.approx(bound**2 / 3, rel=0.05)
    assert np.array_equal(a, lora_a_init(7, 0, 64, 512))
    assert not np.array_equal(a, lora_a_init(8, 0, 64, 512))
    assert not np.array_equal(a, lora_a_init(7, 2, 64, 512))
    # the shape only cuts the same stream: the first elements do not depend on the rows
    assert np.array_equal(lora_a_init(7, 0, 1, 512)[0], a[0])


@pytest.mark.parametrize(("index", "rows", "cols"), [(-1, 1, 1), (2**32, 1, 1), (0, 0, 4)])
def test_bad_arguments(index: int, rows: int, cols: int) -> None:
    with pytest.raises(ValueError, match=r"index|shape"):
        lora_a_init(0, index, rows, cols)
