"""Seed derivation: a pure, documented function of (run, node, seq)."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seedswarm.protocol.seeds import SEED_DOMAIN, derive_seed

from .strategies import node_ids, run_ids

seqs = st.integers(min_value=0, max_value=2**63 - 1)


def _formula(run_id: bytes, node: str, seq: int) -> int:
    """The module docstring's formula, written out independently."""
    name = node.encode("utf-8")
    message = b"seedswarm/seed/v1" + run_id + bytes([len(name)]) + name + struct.pack("<Q", seq)
    return int.from_bytes(hashlib.sha256(message).digest()[:8], "little")


def test_golden_value() -> None:
    # Computed once by hand from the formula:
    #   SHA-256(b"seedswarm/seed/v1" + 00 11 22 33 44 55 66 77 + 06 + b"node-7" + 2a 00*7)
    #   = 9c2ff2aafb604ff4 f3bd...; the first 8 bytes read little-endian:
    run = bytes.fromhex("0011223344556677")
    assert derive_seed(run, "node-7", 42) == 0xF44F60FBAAF22F9C
    assert _formula(run, "node-7", 42) == 0xF44F60FBAAF22F9C
    assert SEED_DOMAIN == b"seedswarm/seed/v1"


@settings(max_examples=100, deadline=None)
@given(run=run_ids, node=node_ids, seq=seqs)
def test_matches_formula_and_range(run: bytes, node: str, seq: int) -> None:
    seed = derive_seed(run, node, seq)
    assert seed == _formula(run, node, seq)
    assert 0 <= seed < 2**64
    assert derive_seed(run, node, seq) == seed  # deterministic


@settings(max_examples=100, deadline=None)
@given(
    a=st.tuples(run_ids, node_ids, seqs),
    b=st.tuples(run_ids, node_ids, seqs),
)
def test_distinct_inputs_give_distinct_seeds(
    a: tuple[bytes, str, int], b: tuple[bytes, str, int]
) -> None:
    # A collision of a 64-bit hash has probability ~2**-64 per pair: never, in practice.
    if a != b:
        assert derive_seed(*a) != derive_seed(*b)


def test_every_component_matters() -> None:
    run = b"\x01" * 8
    base = derive_seed(run, "a", 0)
    assert derive_seed(b"\x02" + run[1:], "a", 0) != base
    assert derive_seed(run, "b", 0) != base
    assert derive_seed(run, "a", 1) != base
    # The length prefix keeps (node, seq) pairs from running into each other.
    assert derive_seed(run, "ab", 0) != derive_seed(run, "a", ord("b"))


def test_many_seqs_give_many_seeds() -> None:
    run = b"\x07" * 8
    assert len({derive_seed(run, "n", s) for s in range(5000)}) == 5000


@pytest.mark.parametrize("run", [b"", b"\x00" * 7, b"\x00" * 9])
def test_rejects_bad_run_id(run: bytes) -> None:
    with pytest.raises(ValueError, match="8 bytes"):
        derive_seed(run, "a", 0)


@pytest.mark.parametrize("seq", [-1, 2**63, 2**64])
def test_rejects_bad_seq(seq: int) -> None:
    with pytest.raises(ValueError, match="seq"):
        derive_seed(b"\x00" * 8, "a", seq)


def test_rejects_node_name_too_long_for_its_length_byte() -> None:
    with pytest.raises(ValueError, match="range"):  # bytes([256]): the length byte overflows
        derive_seed(b"\x00" * 8, "x" * 256, 0)
