"""Tasks: default specs, data preparation, and every scorer's logits and loss.

Models: the built-in tiny GPT-2 (scorer ``lm``), tiny BERTs built from a config with the real
MiniLM tokenizer (``mlm``, ``embed``, ``head``), and once the real pretrained MiniLM.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from seedswarm.model.data import RawData
from seedswarm.model.engine import Engine
from seedswarm.model.errors import DataError, ModelError
from seedswarm.model.hyper import Hyper
from seedswarm.model.loading import Loaded, load
from seedswarm.model.tasks import (
    SENTIMENT,
    Examples,
    TaskModel,
    default_task,
    label_names,
    prepare,
)
from seedswarm.protocol.manifest import TaskSpec

from .helpers import CAUSAL

TEXTS = ("a wonderful, moving film", "dull", "the plot is a mess and the acting is awful", "ok")
LABELS = (1, 0, 0, 1)
EXAMPLES = Examples(texts=TEXTS, labels=LABELS)


def _classify(scorer: str, words: tuple[str, ...], template: str = "", **kw: Any) -> TaskSpec:
    labels = kw.pop("labels", SENTIMENT)
    return TaskSpec(
        kind="classify",
        seq_len=64,
        scorer=scorer,
        labels=labels,
        label_words=words,
        template=template,
        **kw,
    )


# -- default_task and label_names -------------------------------------------------------------


def test_label_names() -> None:
    assert label_names(["1", "0", "1"]) == SENTIMENT == ("negative", "positive")
    assert label_names(["0", "2"]) == ("0", "1", "2")
    assert label_names(["3"]) == ("0", "1", "2", "3")
    assert label_names(["dog", "cat", "dog"]) == ("cat", "dog")
    assert label_names(["positive", "negative"]) == SENTIMENT


def test_default_task_without_labels_is_causal_lm() -> None:
    spec = default_task(RawData(("some text",), None), scorer="lm", seq_len=48)
    assert spec == TaskSpec(kind="causal_lm", seq_len=48)


@pytest.mark.parametrize(
    ("scorer", "words", "template", "temperature"),
    [
        ("lm", (" terrible", " great"), "{text} It was", 0.0),
        ("mlm", ("terrible", "great"), "{text} It was {mask}.", 0.0),
        ("embed", ("a negative review", "a positive review"), "", 0.05),
        ("head", (), "", 0.0),
    ],
)
def test_default_task_for_sentiment(
    scorer: str, words: tuple[str, ...], template: str, temperature: float
) -> None:
    raw = RawData(("good", "bad", "fine"), ("1", "0", "1"))
    spec = default_task(raw, scorer=scorer, seq_len=64)
    assert spec.kind == "classify"
    assert spec.scorer == scorer
    assert spec.labels == SENTIMENT
    assert spec.label_words == words
    assert spec.template == template
    assert spec.temperature == temperature


def test_default_task_uses_label_names_as_words_and_takes_overrides() -> None:
    raw = RawData(("x", "y"), ("cat", "dog"))
    spec = default_task(raw, scorer="embed", seq_len=32)
    assert spec.labels == ("cat", "dog")
    assert spec.label_words == ("cat", "dog")
    spec = default_task(
        raw,
        scorer="lm",
        seq_len=32,
        labels=("feline", "canine"),
        label_words=(" meow", " woof"),
        template="{text} says",
        temperature=0.5,
    )
    assert spec.labels == ("feline", "canine")
    assert spec.label_words == (" meow", " woof")
    assert spec.template == "{text} says"
    assert spec.temperature == 0.0  # only the embed scorer has a temperature


# -- prepare ---------------------------------------------------------------------------------------


def test_prepare_causal_lm_chunks(tiny: Loaded) -> None:
    tok = tiny.tokenizer
    raw = RawData(("hello world", "abc"), None)
    ex = prepare(raw, TaskSpec(kind="causal_lm", seq_len=8), tok)
    ids = [
        *tok("hello world")["input_ids"],
        tok.eos_token_id,
        *tok("abc")["input_ids"],
        tok.eos_token_id,
    ]
    assert len(ids) == 16
    assert ex.chunks is not None
    assert ex.chunks.dtype == torch.int64
    assert ex.chunks.tolist() == [ids[:8], ids[8:16]]
    assert len(ex) == 2
    assert ex.subset([1]).chunks is not None
    assert ex.subset([1, 1]).chunks.tolist() == [ids[8:], ids[8:]]  # type: ignore[union-attr]
    # the remainder that does not fill a chunk is dropped
    ex = prepare(RawData(("x" * 20,), None), TaskSpec(kind="causal_lm", seq_len=8), tok)
    assert len(ex) == 2
    with pytest.raises(DataError, match="fewer than one chunk"):
        prepare(RawData(("tiny",), None), TaskSpec(kind="causal_lm", seq_len=64), tok)


def test_prepare_classification_labels(tiny: Loaded) -> None:
    spec = _classify("lm", (" terrible", " great"))
    raw = RawData(("a", "b", "c", "d"), ("positive", "0", "1", "negative"))
    ex = prepare(raw, spec, tiny.tokenizer)
    assert ex.texts == ("a", "b", "c", "d")
    assert ex.labels == (1, 0, 1, 0)
    assert ex.subset([3, 0]) == Examples(texts=("d", "a"), labels=(0, 1))
    for bad in ("2", "maybe", "-1"):
        with pytest.raises(DataError, match="is not one of negative, positive"):
            prepare(RawData(("a",), (bad,)), spec, tiny.tokenizer)
    with pytest.raises(DataError, match="label"):
        prepare(RawData(("a",), None), spec, tiny.tokenizer)


# -- scorers ---------------------------------------------------------------------------------------


@pytest.fixture
def tiny() -> Loaded:
    return load("tiny")


def test_causal_lm_task_loss(tiny: Loaded) -> None:
    tm = TaskModel(tiny, CAUSAL, init_seed=0)
    ids = torch.arange(64, dtype=torch.int64).view(2, 32)
    batch = tm.make_batch(Examples(chunks=ids))
    loss = tm.loss(batch)
    logits = tiny.model(input_ids=ids).logits
    want = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    assert loss == pytest.approx(float(want), rel=1e-5)
    assert abs(loss - math.log(259)) < 0.5


def test_lm_scorer_scores_label_words_after_the_prompt(tiny: Loaded) -> None:
    spec = _classify("lm", (" terrible", " great"), "{text} It was")
    tm = TaskModel(tiny, spec, init_seed=0)
    batch = tm.make_batch(EXAMPLES)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["labels"].tolist() == list(LABELS)
    logits = tm.logits(batch)
    assert logits.shape == (4, 2)
    assert logits.dtype == torch.float32
    tok = tiny.tokenizer
    # the leading space of the label words moves into the prompt; the word's first byte is scored
    label_ids = [tok("t")["input_ids"][0], tok("g")["input_ids"][0]]
    for i, text in enumerate(TEXTS):
        ids = torch.tensor([tok(f"{text} It was ")["input_ids"]])
        want = tiny.model(input_ids=ids).logits[0, -1, label_ids]
        torch.testing.assert_close(logits[i], want, rtol=1e-4, atol=1e-4)
    assert tm.loss(batch) == pytest.approx(
        float(F.cross_entropy(logits, batch["labels"])), rel=1e-5
    )


def test_label_words_must_start_with_distinct_tokens(tiny: Loaded) -> None:
    with pytest.raises(ModelError, match="distinct tokens"):
        TaskModel(tiny, _classify("lm", (" good", " great")), init_seed=0)
    with pytest.raises(ModelError, match="no tokens"):
        TaskModel(tiny, _classify("lm", ("", " great")), init_seed=0)


def test_scorer_must_fit_the_model(tiny: Loaded, bert_mlm_dir: Path, bert_embed_dir: Path) -> None:
    with pytest.raises(ModelError, match="does not fit"):
        TaskModel(tiny, _classify("mlm", ("terrible", "great"), "{text} {mask}"), init_seed=0)
    with pytest.raises(ModelError, match="does not fit"):
        TaskModel(tiny, _classify("embed", ("bad", "good"), temperature=0.1), init_seed=0)
    mlm = load(str(bert_mlm_dir), kind="mlm")
    with pytest.raises(ModelError, match="causal LM"):
        TaskModel(mlm, CAUSAL, init_seed=0)
    with pytest.raises(ModelError, match="does not fit"):
        TaskModel(mlm, _classify("lm", ("terrible", "great")), init_seed=0)
    embed = load(str(bert_embed_dir), kind="embed")
    with pytest.raises(ModelError, match="does not fit"):
        TaskModel(embed, _classify("lm", (" bad", " good")), init_seed=0)
    with pytest.raises(ModelError, match="does not fit"):
        TaskModel(embed, _classify("mlm", ("bad", "good"), "{text} {mask}"), init_seed=0)
    with pytest.raises(ModelError, match="causal LM"):
        TaskModel(embed, CAUSAL, init_seed=0)


def test_mlm_scorer_scores_label_words_at_the_mask(bert_mlm_dir: Path) -> None:
    loaded = load(str(bert_mlm_dir), kind="mlm")
    assert loaded.kind == "mlm"
    spec = _classify("mlm", ("terrible", "great"), "{text} It was {mask}.")
    tm = TaskModel(loaded, spec, init_seed=0)
    batch = tm.make_batch(EXAMPLES)
    logits = tm.logits(batch)
    assert logits.shape == (4, 2)
    tok = loaded.tokenizer
    label_ids = [tok.convert_tokens_to_ids("terrible"), tok.convert_tokens_to_ids("great")]
    for i, text in enumerate(TEXTS):
        ids = torch.tensor([tok(f"{text} It was {tok.mask_token}.")["input_ids"]])
        pos = int((ids[0] == tok.mask_token_id).nonzero())
        want = loaded.model(input_ids=ids).logits[0, pos, label_ids]
        torch.testing.assert_close(logits[i], want, rtol=1e-4, atol=1e-4)
    assert math.isfinite(tm.loss(batch))
    # words whose first tokens coincide cannot be told apart
    with pytest.raises(ModelError, match="distinct tokens"):
        TaskModel(loaded, _classify("mlm", ("great", "great stuff"), "{text} {mask}"), init_seed=0)
    # a template without the mask cannot be scored
    no_mask = TaskModel(
        loaded, _classify("mlm", ("terrible", "great"), "{text} It was."), init_seed=0
    )
    with pytest.raises(DataError, match="exactly one mask"):
        no_mask.logits(no_mask.make_batch(EXAMPLES))


def _mean_pool(model: Any, tok: Any, texts: list[str]) -> torch.Tensor:
    enc = tok(texts, padding=True, return_tensors="pt")
    hidden = model(
        input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
    ).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    pooled: torch.Tensor = (hidden * m).sum(1) / m.sum(1)
    return pooled


def test_embed_scorer_is_cosine_similarity_over_temperature(bert_embed_dir: Path) -> None:
    loaded = load(str(bert_embed_dir), kind="embed")
    words = ("a negative review", "a positive review")
    spec = _classify("embed", words, temperature=0.05)
    tm = TaskModel(loaded, spec, init_seed=0)
    batch = tm.make_batch(EXAMPLES)
    logits = tm.logits(batch)
    assert logits.shape == (4, 2)
    assert float(logits.abs().max()) <= 1.0 / 0.05 + 1e-3
    texts = F.normalize(_mean_pool(loaded.model, loaded.tokenizer, list(TEXTS)), dim=-1)
    desc = F.normalize(_mean_pool(loaded.model, loaded.tokenizer, list(words)), dim=-1)
    torch.testing.assert_close(logits, texts @ desc.T / 0.05, rtol=1e-4, atol=1e-4)
    assert math.isfinite(tm.loss(batch))


def test_head_scorer_is_a_seeded_linear_head(bert_embed_dir: Path) -> None:
    loaded = load(str(bert_embed_dir), kind="embed")
    spec = _classify("head", (), labels=("a", "b", "c"))
    tm = TaskModel(loaded, spec, init_seed=7)
    assert tm.head is not None
    names = [n for n, _ in tm.named_weights()]
    assert names == sorted(names)
    assert {"head.weight", "head.bias"} <= set(names)
    assert tm.head.weight.shape == (3, 32)
    assert float(tm.head.bias.abs().max()) == 0.0
    same = TaskModel(load(str(bert_embed_dir), kind="embed"), spec, init_seed=7)
    other = TaskModel(load(str(bert_embed_dir), kind="embed"), spec, init_seed=8)
    assert same.head is not None
    assert other.head is not None
    assert torch.equal(tm.head.weight, same.head.weight)
    assert not torch.equal(tm.head.weight, other.head.weight)
    ex = Examples(texts=TEXTS, labels=(0, 1, 2, 1))
    batch = tm.make_batch(ex)
    logits = tm.logits(batch)
    assert logits.shape == (4, 3)
    pooled = _mean_pool(loaded.model, loaded.tokenizer, list(TEXTS))
    torch.testing.assert_close(logits, tm.head(pooled), rtol=1e-4, atol=1e-4)
    assert tm.loss(batch) == pytest.approx(
        float(F.cross_entropy(logits, batch["labels"])), rel=1e-5
    )


@pytest.mark.slow
def test_real_minilm_embed_scorer_and_engine() -> None:
    """The pretrained MiniLM: zero-shot sentiment on plain cases, and a reproducible base."""
    spec = _classify("embed", ("a negative review", "a positive review"), temperature=0.05)
    hyper = Hyper(lr=1e-4, unit_exp=-20)
    e = Engine.build("m", "minilm", spec, hyper)
    assert e.manifest.model == "minilm"
    assert 22_000_000 < e.numel < 23_500_000
    ex = Examples(
        texts=(
            "an awful, boring, painful waste of time",
            "a wonderful, delightful and moving film",
            "terrible acting and a stupid plot",
            "brilliant, funny and beautifully made",
        ),
        labels=(0, 1, 0, 1),
    )
    out = e.evaluate(ex)
    assert out["accuracy"] == 1.0
    opened = Engine.open(e.manifest)
    assert opened.fingerprint() == e.fingerprint()
    assert opened.base_hash() == e.manifest.base_hash


def test_label_names_only_read_ascii_numbers() -> None:
    assert label_names(["0", "1"]) == ("negative", "positive")
    assert label_names(["²", "1"]) == ("1", "²")  # a Unicode digit is a name, not a number


def test_a_new_head_leaves_the_global_generator_alone(bert_embed_dir: Path) -> None:
    loaded = load(str(bert_embed_dir), kind="embed")
    spec = TaskSpec(kind="classify", seq_len=16, scorer="head", labels=("a", "b"))
    state = torch.random.get_rng_state()
    TaskModel(loaded, spec, init_seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
