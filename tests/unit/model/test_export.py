"""Exports load with the Hugging Face libraries alone and compute what the engine computes.

For every kind of export, a fresh Python process that never imports seedswarm runs the model
card's own snippet (transformers, sentence-transformers or peft) on the export directory, and
its scores, answers or losses must equal the engine's evaluation of the same examples within
float tolerance. ``verify_export`` must say yes for each true export (and no for a changed one:
test_verify.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from seedswarm.model.engine import Engine
from seedswarm.model.export import Export, export
from seedswarm.model.hyper import Hyper
from seedswarm.model.tasks import Examples, prepare
from seedswarm.model.verify import verify_export
from seedswarm.protocol.manifest import TaskSpec

from .helpers import (
    CHAT_TEMPLATE,
    colour_data,
    random_records,
    run_outside,
    tiny_with_chat_template,
)

HYPER = Hyper(lr=1e-3, unit_exp=-12)
TEXTS = (
    "a wonderful, moving film",
    "dull",
    "the plot is a mess and the acting is awful",
    "ok",
    "one of the best films of the year",
)
LABELS = (1, 0, 0, 1, 1)
TOLERANCE = 1e-4

pytestmark = pytest.mark.slow  # each test starts a Python that loads torch and transformers


def _trained(engine: Engine, n: int = 40) -> dict[str, int]:
    """Apply ``n`` made-up records, so the weights are not the base's; returns the vv."""
    records = random_records(n, rng_seed=n)
    engine.apply(records)
    vv: dict[str, int] = {}
    for r in records:
        vv[r.node] = r.seq + 1
    return vv


def _export(engine: Engine, out: Path, **kw: Any) -> list[Export]:
    vv = _trained(engine)
    written = export(engine, out, vv=vv, evals={"loss": 1.25, "examples": 5.0}, **kw)
    verdict = verify_export(out, engine, vv=vv)
    assert verdict.ok, verdict.reason
    assert verdict.tensors > 0
    assert verdict.fingerprint == engine.fingerprint() == verdict.claimed_fingerprint
    return written


def _snippet(out: Path) -> str:
    """The card's Python snippet, as a user would copy it."""
    card = (out / "README.md").read_text(encoding="utf-8")
    m = re.search(r"```python\n(.*?)```", card, re.S)
    assert m is not None
    return m.group(1)


def _card_and_provenance(out: Path, engine: Engine, kind: str) -> dict[str, Any]:
    card = (out / "README.md").read_text(encoding="utf-8")
    info: dict[str, Any] = json.loads((out / "seedswarm.json").read_text(encoding="utf-8"))
    m = engine.manifest
    assert info["kind"] == kind
    assert info["run"] == {"name": m.name, "id": m.run_id().hex()}
    assert info["base"] == {"model": m.model, "hash": m.base_hash}
    assert info["fingerprint"] == engine.fingerprint()
    assert info["records"] == 40
    assert info["manifest"] == m.to_dict()
    assert info["evals"] == {"loss": 1.25, "examples": 5.0}
    for needle in (
        m.base_hash,
        m.run_id().hex(),
        info["vv_digest"],
        engine.fingerprint(),
        f"seedswarm export {m.name} --out {out}",
        f"seedswarm verify {out} --log {m.name}",
        "| loss | 1.2500 |",
        "| examples | 5 |",
    ):
        assert needle in card, needle
    return info


# -- causal LMs: text, prompt -> completion, chat ------------------------------------------------


def test_causal_lm_export_gives_the_engines_loss(tmp_path: Path) -> None:
    from seedswarm.model import data

    task = TaskSpec(kind="causal_lm", seq_len=32)
    e = Engine.build("text", "tiny", task, HYPER)
    (written,) = _export(e, tmp_path / "out")
    assert written.kind == "causal_lm"
    assert written.loads_with == "transformers.AutoModelForCausalLM"
    _card_and_provenance(written.path, e, "causal_lm")
    chunks = prepare(data.read("builtin:patterns"), task, e.task_model.tokenizer).subset(range(8))
    assert chunks.chunks is not None
    want = e.evaluate(chunks, batch_size=8)["loss"]
    got = run_outside(
        _snippet(written.path) + f"ids = torch.tensor({chunks.chunks.tolist()})\n"
        "with torch.no_grad():\n"
        "    result['loss'] = float(model(input_ids=ids, labels=ids).loss)\n",
        tmp_path,
    )
    assert got["loss"] == pytest.approx(want, abs=TOLERANCE)


@pytest.mark.parametrize("chat", [False, True], ids=["prompt-completion", "chat"])
def test_completion_export_gives_the_engines_answers_and_loss(tmp_path: Path, chat: bool) -> None:
    template = "" if chat else "Q: {prompt}\nA:"
    task = TaskSpec(kind="completion", seq_len=64, template=template, chat=chat)
    loaded = tiny_with_chat_template()
    e = Engine.build("qa", "tiny", task, HYPER, loaded=loaded)
    (written,) = _export(e, tmp_path / "out")
    info = _card_and_provenance(written.path, e, "causal_lm")
    assert info["task"]["chat"] is chat
    config = json.loads((written.path / "config.json").read_text())
    assert config["seedswarm"] == info["task"]
    raw = colour_data(6, chat=chat, seed=3)
    ex = prepare(raw, task, loaded.tokenizer)
    answers = e.task_model.answers(ex)
    ev = e.evaluate(ex, batch_size=6)
    if chat:
        assert raw.chats is not None
        calls = [
            f"answer(messages={[{'role': r, 'content': c} for r, c in conv[:-1]]!r})"
            for conv in raw.chats
        ]
    else:
        assert raw.prompts is not None
        calls = [f"answer({p!r})" for p in raw.prompts]
    batch = e.task_model.make_batch(ex)
    got = run_outside(
        _snippet(written.path)
        + f"result['answers'] = [{', '.join(calls)}]\n"
        + f"result['chat_template'] = tokenizer.chat_template == {CHAT_TEMPLATE!r}\n"
        + f"ids = torch.tensor({batch['input_ids'].tolist()})\n"
        + f"mask = torch.tensor({batch['attention_mask'].tolist()})\n"
        + f"labels = torch.tensor({batch['labels'].tolist()})\n"
        + "with torch.no_grad():\n"
        + "    out = model(input_ids=ids, attention_mask=mask, labels=labels)\n"
        + "result['loss'] = float(out.loss)\n",
        tmp_path,
    )
    assert got["answers"] == answers
    assert got["loss"] == pytest.approx(ev["loss"], abs=TOLERANCE)
    assert got["chat_template"]  # the tokenizer keeps its chat template in the export


# -- label-word classifiers --------------------------------------------------------------------


def _scores_outside(out: Path, tmp_path: Path, *, batched: bool) -> tuple[torch.Tensor, list[str]]:
    """The card snippet's ``scores`` and ``classify`` on TEXTS, in a process without seedswarm
    (the sentence-transformers snippets take a list of texts, the others one text)."""
    texts = list(TEXTS)
    if batched:
        code = f"result['scores'] = scores({texts!r}).tolist()\n"
        code += f"result['classes'] = classify({texts!r})\n"
    else:
        code = f"result['scores'] = torch.stack([scores(t) for t in {texts!r}]).tolist()\n"
        code += f"result['classes'] = [classify(t) for t in {texts!r}]\n"
    got = run_outside(_snippet(out) + code, tmp_path)
    return torch.tensor(got["scores"]), list(got["classes"])


def _engine_scores(e: Engine) -> tuple[torch.Tensor, list[str]]:
    tm = e.task_model
    logits = tm.logits(tm.make_batch(Examples(texts=TEXTS, labels=LABELS)))
    return logits, [tm.spec.labels[i] for i in logits.argmax(-1).tolist()]


def test_label_word_classifier_on_a_causal_lm(tmp_path: Path) -> None:
    task = TaskSpec(
        kind="classify",
        seq_len=64,
        scorer="lm",
        labels=("negative", "positive"),
        label_words=(" terrible", " great"),
        template="{text} It was",
    )
    e = Engine.build("sst", "tiny", task, HYPER)
    (written,) = _export(e, tmp_path / "out")
    info = _card_and_provenance(written.path, e, "causal_lm")
    assert info["task"]["prompt_suffix"] == " "  # the byte tokenizer splits the space off
    config = json.loads((written.path / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["seedswarm"]["template"] == "{text} It was"
    assert config["seedswarm"]["label_words"] == [" terrible", " great"]
    card = (written.path / "README.md").read_text()
    assert "{text} It was" in card
    assert "terrible" in card
    want, classes = _engine_scores(e)
    got, got_classes = _scores_outside(written.path, tmp_path, batched=False)
    torch.testing.assert_close(got, want, rtol=TOLERANCE, atol=TOLERANCE)
    assert got_classes == classes


def test_label_word_classifier_on_a_masked_lm(tmp_path: Path, bert_mlm_dir: Path) -> None:
    task = TaskSpec(
        kind="classify",
        seq_len=64,
        scorer="mlm",
        labels=("negative", "positive"),
        label_words=("terrible", "great"),
        template="{text} It was {mask}.",
    )
    e = Engine.build("sst", str(bert_mlm_dir), task, HYPER)
    (written,) = _export(e, tmp_path / "out")
    assert written.loads_with == "transformers.AutoModelForMaskedLM"
    _card_and_provenance(written.path, e, "masked_lm")
    want, classes = _engine_scores(e)
    got, got_classes = _scores_outside(written.path, tmp_path, batched=False)
    torch.testing.assert_close(got, want, rtol=TOLERANCE, atol=TOLERANCE)
    assert got_classes == classes


# -- encoders: sentence-transformers directories ---------------------------------------------


EMBED = TaskSpec(
    kind="classify",
    seq_len=64,
    scorer="embed",
    labels=("negative", "positive"),
    label_words=("a negative review", "a positive review"),
    temperature=0.05,
)


def _st_export(e: Engine, tmp_path: Path) -> Export:
    (written,) = _export(e, tmp_path / "out")
    assert written.kind == "sentence_transformers"
    assert written.loads_with == "sentence_transformers.SentenceTransformer"
    assert any("AutoModelForSequenceClassification" in n for n in written.notes)
    _card_and_provenance(written.path, e, "sentence_transformers")
    return written


def test_embedding_scorer_as_sentence_transformers(tmp_path: Path, bert_embed_dir: Path) -> None:
    e = Engine.build("sst", str(bert_embed_dir), EMBED, HYPER)
    written = _st_export(e, tmp_path)
    modules = json.loads((written.path / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    info = json.loads((written.path / "seedswarm.json").read_text())
    assert info["task"]["label_descriptions"] == ["a negative review", "a positive review"]
    assert info["task"]["temperature"] == 0.05
    want, classes = _engine_scores(e)
    got, got_classes = _scores_outside(written.path, tmp_path, batched=True)
    torch.testing.assert_close(got, want, rtol=TOLERANCE, atol=TOLERANCE * 20)  # logits / 0.05
    assert got_classes == classes


def test_head_scorer_as_sentence_transformers_with_a_dense_head(
    tmp_path: Path, bert_embed_dir: Path
) -> None:
    task = TaskSpec(kind="classify", seq_len=64, scorer="head", labels=("a", "b", "c"))
    e = Engine.build("head", str(bert_embed_dir), task, HYPER)
    written = _st_export(e, tmp_path)
    modules = json.loads((written.path / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Dense"]
    assert not (written.path / "seedswarm_head.safetensors").exists()
    want, classes = _engine_scores(e)
    got, got_classes = _scores_outside(written.path, tmp_path, batched=True)
    torch.testing.assert_close(got, want, rtol=TOLERANCE, atol=TOLERANCE)
    assert got_classes == classes


def test_the_pretrained_minilm_as_sentence_transformers(tmp_path: Path) -> None:
    e = Engine.build("sst", "minilm", EMBED, Hyper(lr=1e-4, unit_exp=-20))
    written = _st_export(e, tmp_path)
    want, classes = _engine_scores(e)
    got, got_classes = _scores_outside(written.path, tmp_path, batched=True)
    torch.testing.assert_close(got, want, rtol=TOLERANCE, atol=TOLERANCE * 20)
    assert got_classes == classes


# -- adapters ----------------------------------------------------------------------------------


def test_lora_adapter_on_its_base_with_peft(tmp_path: Path) -> None:
    task = TaskSpec(kind="completion", seq_len=64, template="Q: {prompt}\nA:")
    hyper = Hyper(lr=1e-3, unit_exp=-12, adapter="lora", lora_rank=4, lora_alpha=8.0)
    e = Engine.build("qa-lora", "tiny", task, hyper)
    written = _export(e, tmp_path / "out", include_base=True)
    assert [(w.kind, w.path.name) for w in written] == [("peft_adapter", "out"), ("base", "base")]
    adapter_dir = written[0].path
    _card_and_provenance(adapter_dir, e, "peft_adapter")
    _card_and_provenance(written[1].path, e, "base")
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == 4
    assert config["lora_alpha"] == 8
    assert config["target_modules"] == ["c_attn"]
    assert config["base_model_name_or_path"] == str(adapter_dir / "base")
    raw = colour_data(4, seed=5)
    ex = prepare(raw, task, e.task_model.tokenizer)
    answers = e.task_model.answers(ex)
    ids = torch.arange(2, 42).view(2, 20)
    with torch.no_grad():
        want = e.task_model.backbone(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(str(adapter_dir / "base"))
        # the records moved the adapted model well away from its base: the comparison tells
        assert float((want - base(input_ids=ids).logits).abs().max()) > 100 * TOLERANCE
    assert raw.prompts is not None
    calls = ", ".join(f"answer({p!r})" for p in raw.prompts)
    got = run_outside(
        _snippet(adapter_dir)
        + f"result['answers'] = [{calls}]\n"
        + f"ids = torch.tensor({ids.tolist()})\n"
        + "with torch.no_grad():\n"
        + "    result['logits'] = model(input_ids=ids).logits.tolist()\n"
        + "result['adapter'] = sorted(n for n, _ in model.named_parameters() if 'lora' in n)\n"
        + "result['type'] = type(model).__name__\n",
        tmp_path,
    )
    assert got["type"] == "PeftModelForCausalLM"
    assert len(got["adapter"]) == 4
    torch.testing.assert_close(torch.tensor(got["logits"]), want, rtol=TOLERANCE, atol=TOLERANCE)
    assert got["answers"] == answers
