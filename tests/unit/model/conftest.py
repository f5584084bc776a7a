"""Fixtures for the model tests: no network, small models built from configs in code."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from .helpers import save_tiny_bert


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Model and data loading must never reach the network."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Forward passes on one intra-op thread, the C kernel on two.

    On a small shared machine, OpenMP threads that spin-wait for busy cores make tiny-model
    forward passes several times slower. The kernel's own threads are set apart
    (helpers.KERNEL_THREADS) so that engines still run its multi-threaded path.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def bert_mlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer, 32-wide BertForMaskedLM with the MiniLM tokenizer, written by save_pretrained."""
    return save_tiny_bert(tmp_path_factory.mktemp("bert-mlm"), masked_lm=True)


@pytest.fixture(scope="session")
def bert_embed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer, 32-wide BertModel (a bare encoder) with the MiniLM tokenizer."""
    return save_tiny_bert(tmp_path_factory.mktemp("bert-embed"), masked_lm=False)
