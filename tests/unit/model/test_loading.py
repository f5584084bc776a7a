"""Loading: the built-in tiny model, model references, and their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from seedswarm.model.errors import ModelError
from seedswarm.model.loading import (
    MINILM,
    TINY,
    byte_tokenizer,
    detect_kind,
    load,
    minilm_path,
    resolve_ref,
    tiny_model,
)

from .helpers import assert_same_bits


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters()}


def test_tiny_is_deterministic_per_init_seed_and_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b, c = _params(tiny_model(3)), _params(tiny_model(3)), _params(tiny_model(4))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert list(a) == list(b) == list(c)
    for name in a:
        assert_same_bits(a[name], b[name], name)
    moved = [n for n in a if not torch.equal(a[n], c[n])]
    # every randomly initialised matrix moves; norms and biases start at 1 and 0 whatever the seed
    assert moved == [n for n in a if n.endswith(".weight") and ".ln_" not in n]
    assert "transformer.wte.weight" in moved


def test_load_tiny() -> None:
    loaded = load(TINY, init_seed=5)
    assert loaded.kind == "lm"
    assert loaded.portable_ref == "tiny"
    model = loaded.model
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 200_000
    ref = _params(tiny_model(5))
    for name, p in _params(model).items():
        assert_same_bits(p, ref[name], name)


def test_byte_tokenizer_round_trips_any_text() -> None:
    tok = byte_tokenizer()
    assert len(tok) == 259
    text = "Grüße, 世界! \n\ttabs & bytes ✓"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.eos_token_id == 257
    assert tok.pad_token_id == 258
    assert {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}.isdisjoint(ids)


def test_resolve_ref(tmp_path: Path) -> None:
    assert resolve_ref(TINY) == ("tiny", "tiny")
    assert resolve_ref(MINILM) == (str(minilm_path()), "minilm")
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    assert resolve_ref(str(model_dir)) == (str(model_dir), "my-model")
    assert resolve_ref("org/name") == ("org/name", "org/name")  # a hub id
    assert resolve_ref("gpt2") == ("gpt2", "gpt2")


def test_resolve_ref_errors_are_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"\0")
    cases = [
        (str(tmp_path / "missing"), "does not exist"),
        ("./not-here", "does not exist"),
        ("~/not-here-either-seedswarm", "does not exist"),
        ("a/b/c", "does not exist"),
        (str(a_file), "is a file"),
        (str(empty), "without config.json"),
    ]
    for ref, match in cases:
        with pytest.raises(ModelError, match=match) as info:
            resolve_ref(ref)
        assert "\n" not in str(info.value), ref
        with pytest.raises(ModelError, match=match):
            load(ref)


def test_unreadable_model_directories(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "bert"}))  # no weights
    with pytest.raises(ModelError, match="cannot load model") as info:
        load(str(broken), kind="embed")
    assert "\n" not in str(info.value)
    with pytest.raises(ModelError, match="cannot load a model for scorer"):
        load(str(broken), kind="head")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "config.json").write_text("not json")
    with pytest.raises(ModelError) as info:
        detect_kind(str(garbage))
    assert "\n" not in str(info.value)


def test_detect_kind(tmp_path: Path, bert_mlm_dir: Path, bert_embed_dir: Path) -> None:
    assert detect_kind(TINY) == "lm"
    assert detect_kind(str(bert_mlm_dir)) == "mlm"
    assert detect_kind(str(bert_embed_dir)) == "embed"
    load(TINY).model.save_pretrained(str(tmp_path / "gpt"))  # type: ignore[operator]
    byte_tokenizer().save_pretrained(str(tmp_path / "gpt"))
    assert detect_kind(str(tmp_path / "gpt")) == "lm"
    loaded = load(str(tmp_path / "gpt"))
    assert loaded.kind == "lm"
    assert loaded.portable_ref == "gpt"
    ref = _params(tiny_model(0))
    for name, p in _params(loaded.model).items():
        assert_same_bits(p, ref[name], name)


def test_minilm_path() -> None:
    path = minilm_path()
    assert (path / "config.json").is_file()
    assert detect_kind(MINILM) == "embed"
