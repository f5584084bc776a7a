"""Shared builders for the model tests (no fakes: real torch, real transformers models)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from seedswarm.model.engine import Engine, Hyper
from seedswarm.model.errors import ModelError
from seedswarm.model.kernels import CpuKernelBackend
from seedswarm.protocol.manifest import TaskSpec
from seedswarm.protocol.philox import signs
from seedswarm.protocol.records import Record


def _c_kernel_error() -> str:
    try:
        CpuKernelBackend(threads=1)
    except ModelError as exc:
        return str(exc)
    return ""


C_KERNEL_ERROR = _c_kernel_error()
requires_c = pytest.mark.skipif(
    bool(C_KERNEL_ERROR),
    reason=f"the C extension seedswarm.model._zokernel is not importable: {C_KERNEL_ERROR}",
)

CAUSAL = TaskSpec(kind="causal_lm", seq_len=32)
HYPER = Hyper(lr=3e-3, unit_exp=-12)


KERNEL_THREADS = 2  # the C kernel's multi-threaded path, while forward passes use one thread


def tiny_engine(kernel: str = "auto", hyper: Hyper = HYPER, task: TaskSpec = CAUSAL) -> Engine:
    """A fresh replica of the built-in tiny GPT-2 on its grid."""
    return Engine.build("t", "tiny", task, hyper, kernel=kernel, kernel_threads=KERNEL_THREADS)


def random_records(
    n: int, *, rng_seed: int, nodes: tuple[str, ...] = ("a", "b", "c")
) -> list[Record]:
    """``n`` records spread over ``nodes`` (contiguous seqs per node), q in [-127, 127] incl. 0."""
    rng = random.Random(rng_seed)
    next_seq = dict.fromkeys(nodes, 0)
    out = []
    for clock in range(n):
        node = rng.choice(nodes)
        q = 0 if rng.random() < 0.1 else rng.randint(-127, 127)
        out.append(Record(node, next_seq[node], q, clock))
        next_seq[node] += 1
    return out


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw fp32 bits (so -0.0 and +0.0, or two NaNs, are told apart)."""
    assert t.dtype == torch.float32
    return t.detach().contiguous().view(torch.int32)


def assert_same_bits(a: torch.Tensor, b: torch.Tensor, what: str = "") -> None:
    assert a.shape == b.shape, what
    diff = int((bits(a) != bits(b)).sum())
    assert diff == 0, f"{what}: {diff} of {a.numel()} elements differ in their bits"


def assert_same_state(a: Engine, b: Engine, what: str = "") -> None:
    """Same fingerprint and the same bits in every trainable tensor."""
    sa, sb = a.trainable_state(), b.trainable_state()
    assert list(sa) == list(sb), what
    for name in sa:
        assert_same_bits(sa[name], sb[name], f"{what} {name}")
    assert a.fingerprint() == b.fingerprint(), what


def reference_accumulate(
    w: npt.NDArray[np.float64], tensor_id: int, seeds: list[int], steps: list[int], scale: float
) -> npt.NDArray[np.float64]:
    """``w + scale * sum_r steps[r] * z(seeds[r])`` in float64 from the numpy Philox reference."""
    acc = np.zeros(w.size, dtype=np.int64)
    for s, k in zip(seeds, steps, strict=True):
        acc += k * signs(s, tensor_id, w.size).astype(np.int64)
    return w + scale * acc.astype(np.float64)


def save_tiny_bert(out: Path, *, masked_lm: bool) -> Path:
    """A tiny BERT (MLM head or bare encoder) with the real MiniLM tokenizer, saved to ``out``."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertModel

    from seedswarm.model.loading import minilm_path

    tok: Any = AutoTokenizer.from_pretrained(str(minilm_path()))
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model: Any = BertForMaskedLM(config) if masked_lm else BertModel(config)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out
