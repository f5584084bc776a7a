"""Exports: the fine-tuned model as a directory the Hugging Face libraries load as they are.

What a run exports depends on what it trained (``export`` picks; each builder can be called on
its own):

  task / scorer                 directory (kind)                 loads with
  ----------------------------  -------------------------------  ------------------------------
  causal_lm, completion,        ``causal_lm``                    AutoModelForCausalLM
  classify/lm (label words)
  classify/mlm (label words)    ``masked_lm``                    AutoModelForMaskedLM
  classify/embed (descriptions) ``sentence_transformers``        SentenceTransformer
  classify/head                 ``sentence_transformers``        SentenceTransformer (+ Dense)
  any task with an adapter      ``peft_adapter`` (+ ``base``)    PeftModel.from_pretrained

No directory needs seedswarm code. The task a user needs to apply the model -- the prompt
template, label words and the tokens scored, label descriptions and the temperature -- is in
``seedswarm.json`` (``task``), in the model card, and for transformers directories in
``config.json`` under ``seedswarm`` (classifiers also get ``id2label``).

Exactness: every exported weight of a trained tensor is the replay's weight, fp32(n) * 2^e_t,
bit for bit (verify.py checks it); frozen weights are the base's.

Where a ``AutoModelForSequenceClassification`` cannot be exact: the embedding scorer mean-pools
every token and normalises, and the head scorer mean-pools; transformers' sequence-classification
heads for encoders (BertForSequenceClassification and its kin) classify the first token
([CLS]) through a dense + tanh pooler, so no weights make them compute these scores. The
sentence-transformers directory is the exact export there: its Pooling (mean) and Normalize
modules are the scorer's, and the label descriptions and temperature come with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import cards, provenance
from .adapters import ADAPTER_FILE, TASK_TYPES, save_adapter
from .completion import MAX_NEW_TOKENS
from .engine import Engine
from .errors import ModelError
from .loading import quiet
from .provenance import Provenance

KINDS = ("causal_lm", "masked_lm", "sentence_transformers", "peft_adapter", "base")
BASE_DIR = "base"  # where an adapter export puts the frozen base, when asked to
ST_POOLING = "1_Pooling"
ST_NORMALIZE = "2_Normalize"
ST_DENSE = "2_Dense"
CONFIG_KEY = "seedswarm"  # the task's description in config.json
NO_SEQUENCE_CLASSIFICATION = (
    "No AutoModelForSequenceClassification export: transformers' encoder classification heads "
    "score the [CLS] token through a dense + tanh pooler, while this scorer mean-pools every "
    "token{norm}, so no weights make them compute its scores. This sentence-transformers "
    "directory is the exact export."
)


@dataclass(frozen=True, slots=True)
class Export:
    """One directory an export wrote: what it is, where, what loads it, what to know."""

    kind: str
    path: Path
    loads_with: str
    notes: tuple[str, ...] = ()


def provenance_of(
    engine: Engine,
    vv: Mapping[str, int],
    *,
    evals: Mapping[str, float] | None = None,
    run_ref: str = "",
    log_ref: str = "",
) -> Provenance:
    """The provenance of ``engine``'s weights now, which hold the records of ``vv``."""
    return Provenance(
        engine.manifest, dict(vv), engine.fingerprint(), dict(evals or {}), run_ref, log_ref
    )


def export(
    engine: Engine,
    out: Path,
    *,
    vv: Mapping[str, int],
    evals: Mapping[str, float] | None = None,
    run_ref: str = "",
    log_ref: str = "",
    include_base: bool | None = None,
) -> list[Export]:
    """Write what ``engine`` trained into ``out`` (absent or empty), as the table in the
    module docstring says. ``vv`` is the version vector the weights hold; ``evals`` eval
    figures for the card; ``run_ref`` / ``log_ref`` how the card's commands name the run and
    its log; ``include_base``: with an adapter, also write the frozen base into ``out/base``
    (None: when the base is not on the Hugging Face hub, where a user could not get it).
    """
    prov = provenance_of(engine, vv, evals=evals, run_ref=run_ref, log_ref=log_ref)
    _empty(out)
    m = engine.manifest
    if m.adapter is not None:
        if include_base is None:
            include_base = cards.hub_id(m.model) is None
        base = out / BASE_DIR if include_base else None
        written = [export_adapter(engine, out, prov, base_dir=base)]
        if base is not None:
            written.append(export_base(engine, base, prov))
        return written
    if m.task.kind in ("causal_lm", "completion") or m.task.scorer == "lm":
        return [export_transformers(engine, out, prov)]
    if m.task.scorer == "mlm":
        return [export_transformers(engine, out, prov)]
    return [export_sentence_transformers(engine, out, prov)]


def _empty(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelError(f"{out} exists and is not an empty directory")
    out.mkdir(parents=True, exist_ok=True)


# -- the builders ------------------------------------------------------------------------------


def export_transformers(engine: Engine, out: Path, prov: Provenance) -> Export:
    """The backbone as its ``AutoModelFor...`` class (causal LM or masked LM), with its
    tokenizer, the task in ``config.json`` and a card."""
    tm = engine.task_model
    if tm.adapter is not None or tm.head is not None:
        raise ModelError("this run's model is not a plain transformers model: use export()")
    out.mkdir(parents=True, exist_ok=True)
    with quiet():
        engine.save_pretrained(out)
    task = task_info(engine)
    _patch_config(out, task)
    kind = "causal_lm" if tm.kind == "lm" else "masked_lm"
    auto = "AutoModelForCausalLM" if kind == "causal_lm" else "AutoModelForMaskedLM"
    usage = cards.transformers_loader(auto, out) + cards.usage(engine.manifest, st=False)
    # the pipeline its class serves (a label-word classifier is applied as the card shows)
    pipeline_tag = "fill-mask" if kind == "masked_lm" else "text-generation"
    card = cards.card(
        kind=kind,
        prov=prov,
        out=out,
        library="transformers",
        pipeline_tag=pipeline_tag,
        summary=cards.summary(engine.manifest, f"a transformers model (`{auto}`)"),
        usage=usage,
        task_lines=cards.task_lines(task),
    )
    provenance.write(out, kind, prov, task, card)
    return Export(kind, out, f"transformers.{auto}")


def export_sentence_transformers(engine: Engine, out: Path, prov: Provenance) -> Export:
    """An encoder run (embed or head scorer) as a sentence-transformers directory: the
    Transformer, mean Pooling, then Normalize (embed) or the head as a Dense layer (head)."""
    tm = engine.task_model
    scorer = engine.manifest.task.scorer
    if tm.kind != "embed" or tm.adapter is not None or scorer not in ("embed", "head"):
        raise ModelError("a sentence-transformers export is of an embed or head scorer's run")
    out.mkdir(parents=True, exist_ok=True)
    with quiet():
        engine.save_pretrained(out)
    (out / "seedswarm_head.safetensors").unlink(missing_ok=True)  # it goes in 2_Dense instead
    config: Any = tm.backbone.config
    hidden = int(config.hidden_size)
    modules: list[dict[str, Any]] = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": ST_POOLING, "type": "sentence_transformers.models.Pooling"},
    ]
    if scorer == "embed":
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": ST_NORMALIZE,
                "type": "sentence_transformers.models.Normalize",
            }
        )
        (out / ST_NORMALIZE).mkdir()
    else:
        assert tm.head is not None
        modules.append(
            {"idx": 2, "name": "2", "path": ST_DENSE, "type": "sentence_transformers.models.Dense"}
        )
        _write_dense(out / ST_DENSE, tm.head)
    _write_json(out / "modules.json", modules)
    _write_json(
        out / "sentence_bert_config.json",
        {"max_seq_length": engine.manifest.task.seq_len, "do_lower_case": False},
    )
    _write_json(
        out / "config_sentence_transformers.json",
        {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"},
    )
    (out / ST_POOLING).mkdir()
    _write_json(
        out / ST_POOLING / "config.json",
        {
            "word_embedding_dimension": hidden,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )
    task = task_info(engine)
    _patch_config(out, task)
    note = NO_SEQUENCE_CLASSIFICATION.format(norm=" and normalises" if scorer == "embed" else "")
    card = cards.card(
        kind="sentence_transformers",
        prov=prov,
        out=out,
        library="sentence-transformers",
        pipeline_tag="sentence-similarity" if scorer == "embed" else "text-classification",
        summary=cards.summary(engine.manifest, "a sentence-transformers model"),
        usage=cards.st_loader(out) + cards.usage(engine.manifest, st=True),
        task_lines=cards.task_lines(task),
        notes=[note],
    )
    provenance.write(out, "sentence_transformers", prov, task, card)
    return Export(
        "sentence_transformers", out, "sentence_transformers.SentenceTransformer", (note,)
    )


def export_adapter(
    engine: Engine, out: Path, prov: Provenance, *, base_dir: Path | None = None
) -> Export:
    """The adapter as a PEFT adapter directory (``PeftModel.from_pretrained(base, out)``),
    with the tokenizer; ``base_dir``: where the card says the base is (else the manifest's
    model reference)."""
    tm = engine.task_model
    if tm.adapter is None:
        raise ModelError("this run trains no adapter")
    out.mkdir(parents=True, exist_ok=True)
    base_ref = str(base_dir) if base_dir is not None else engine.manifest.model
    save_adapter(tm.adapter, out, base=base_ref, task_type=TASK_TYPES[tm.kind])
    with quiet():
        tm.tokenizer.save_pretrained(str(out))
    task = task_info(engine)
    auto = {"lm": "AutoModelForCausalLM", "mlm": "AutoModelForMaskedLM", "embed": "AutoModel"}
    usage = cards.peft_loader(auto[tm.kind], base_ref, out) + cards.usage(engine.manifest, st=False)
    notes = []
    if base_dir is None:
        notes.append(
            f"The base is `{engine.manifest.model}` with base hash `{engine.manifest.base_hash}`;"
            " an export with the base included writes it into `base/`."
        )
    card = cards.card(
        kind="peft_adapter",
        prov=prov,
        out=out,
        library="peft",
        pipeline_tag="text-generation" if tm.kind == "lm" else "feature-extraction",
        summary=cards.summary(engine.manifest, "a PEFT LoRA adapter"),
        usage=usage,
        task_lines=cards.task_lines(task),
        notes=notes,
    )
    provenance.write(out, "peft_adapter", prov, task, card)
    return Export("peft_adapter", out, "peft.PeftModel", tuple(notes))


def export_base(engine: Engine, out: Path, prov: Provenance) -> Export:
    """The frozen base of an adapter run, as its ``AutoModelFor...`` class (the weights as
    loaded: what the base hash is over)."""
    tm = engine.task_model
    if tm.adapter is None:
        raise ModelError("only an adapter run has a frozen base apart from its weights")
    out.mkdir(parents=True, exist_ok=True)
    model: Any = tm.backbone
    with quiet():
        model.save_pretrained(str(out), state_dict=base_state(engine))
        tm.tokenizer.save_pretrained(str(out))
    auto = {"lm": "AutoModelForCausalLM", "mlm": "AutoModelForMaskedLM", "embed": "AutoModel"}
    task = {"kind": "base", "of": prov.run_id}
    card = cards.card(
        kind="base",
        prov=prov,
        out=out,
        library="transformers",
        pipeline_tag="text-generation" if tm.kind == "lm" else "feature-extraction",
        summary=(
            f"The frozen base `{engine.manifest.model}` of the adapter run `{engine.manifest.name}`"
            " (base hash below); the adapter is in the directory above."
        ),
        usage=cards.transformers_loader(auto[tm.kind], out),
        task_lines=["The base model: no task of its own."],
    )
    provenance.write(out, "base", prov, task, card)
    return Export("base", out, f"transformers.{auto[tm.kind]}")


# -- what the exports hold ---------------------------------------------------------------------


def base_state(engine: Engine) -> dict[str, torch.Tensor]:
    """The backbone's state dict as the base names it: an adapter's wrapping undone
    (``<module>.base_layer.x`` is ``<module>.x``) and its tensors left out."""
    tm = engine.task_model
    state = tm.backbone.state_dict()
    if tm.adapter is None:
        return dict(state)
    modules = tm.adapter.modules
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        owner = next((m for m in modules if key.startswith(m + ".")), None)
        if owner is None:
            out[key] = value
            continue
        rest = key[len(owner) + 1 :]
        if rest.startswith("base_layer."):
            out[f"{owner}.{rest.removeprefix('base_layer.')}"] = value
        elif not rest.startswith(("lora_", "base_layer")):
            raise ModelError(f"unexpected tensor {key} in an adapted module")
    return out


def task_info(engine: Engine) -> dict[str, Any]:
    """What a user needs to apply the model to its task (seedswarm.json's ``task``)."""
    tm = engine.task_model
    spec = engine.manifest.task
    out: dict[str, Any] = {"kind": spec.kind, "seq_len": spec.seq_len}
    if spec.kind == "completion":
        out.update(template=spec.template, chat=spec.chat, max_new_tokens=MAX_NEW_TOKENS)
    elif spec.kind == "classify":
        out.update(scorer=spec.scorer, labels=list(spec.labels))
        if spec.scorer in ("lm", "mlm"):
            out.update(
                template=spec.template or "{text}",
                prompt_suffix=tm.prompt_suffix,
                label_words=list(spec.label_words),
                label_token_ids=list(tm.label_token_ids),
                truncation_side="left",
            )
        elif spec.scorer == "embed":
            out.update(
                label_descriptions=list(spec.label_words),
                temperature=spec.temperature,
                pooling="mean",
                normalize=True,
            )
        else:
            out.update(pooling="mean", head=ST_DENSE)
    return out


def _patch_config(out: Path, task: Mapping[str, Any]) -> None:
    """The task in config.json (``seedswarm``), and a classifier's label names."""
    path = out / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config[CONFIG_KEY] = dict(task)
    if task["kind"] == "classify":
        labels = list(task["labels"])
        config["id2label"] = {str(i): name for i, name in enumerate(labels)}
        config["label2id"] = {name: i for i, name in enumerate(labels)}
    _write_json(path, config)


def _write_dense(path: Path, head: torch.nn.Linear) -> None:
    from safetensors.torch import save_file

    path.mkdir()
    _write_json(
        path / "config.json",
        {
            "in_features": head.in_features,
            "out_features": head.out_features,
            "bias": True,
            "activation_function": "torch.nn.modules.linear.Identity",
        },
    )
    tensors = {
        "linear.weight": head.weight.detach().to("cpu", copy=True).contiguous(),
        "linear.bias": head.bias.detach().to("cpu", copy=True).contiguous(),
    }
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


__all__ = [
    "ADAPTER_FILE",
    "KINDS",
    "Export",
    "base_state",
    "export",
    "export_adapter",
    "export_base",
    "export_sentence_transformers",
    "export_transformers",
    "provenance_of",
    "task_info",
]
