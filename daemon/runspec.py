"""From settings to a run: the options that define a run's manifest, and building it.

Nodes that are given the same run options build the same manifest, hence the same run id,
without exchanging a file. A manifest file (``--manifest``) overrides all of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seedswarm.model.data import RawData, read
from seedswarm.model.engine import Engine, Hyper
from seedswarm.model.loading import TINY, detect_kind
from seedswarm.model.tasks import default_task
from seedswarm.protocol.manifest import Manifest, TaskSpec

from .errors import ConfigError
from .options import Option, non_negative, positive

DEFAULT_DATA = "builtin:patterns"


def _exp(v: Any) -> str | None:
    return None if -60 <= v <= 0 else "must be in [-60, 0]"


def _regex(v: Any) -> str | None:
    try:
        re.compile(v)
    except re.error as exc:
        return f"is not a valid regular expression ({exc})"
    return None


RUN_OPTIONS = (
    Option("name", str, "default", "run name: the topic namespace nodes meet in"),
    Option("model", str, TINY, "base model: tiny, minilm, a directory, or a hub id"),
    Option(
        "data", str, DEFAULT_DATA, "training data: .txt .jsonl .csv .tsv, hf:REF, builtin:patterns"
    ),
    Option(
        "task",
        str,
        "auto",
        "auto (from the data), causal_lm or classify",
        choices=("auto", "causal_lm", "classify"),
    ),
    Option(
        "scorer",
        str,
        "auto",
        "how classify scores labels",
        choices=("auto", "lm", "mlm", "embed", "head"),
    ),
    Option("labels", str, "", "class names in label-id order, separated by | or ,"),
    Option("label_words", str, "", "label words (lm/mlm) or descriptions (embed), separated by |"),
    Option("template", str, "", "prompt template with {text} (and {mask} for mlm)"),
    Option("temperature", float, 0.05, "embed scorer temperature", check=positive),
    Option("seq_len", int, 0, "tokens per example (0: 64 for tiny, else 128)", check=non_negative),
    Option("lr", float, 0.0, "learning rate (0: the model's default)", check=non_negative),
    Option("epsilon", float, 1e-3, "perturbation size", check=positive),
    Option("unit_exp", int, 0, "update unit u = 2**unit_exp (0: the model's default)", check=_exp),
    Option("headroom_exp", int, 3, "grid headroom: weights may grow 2**headroom_exp times"),
    Option(
        "trainable",
        str,
        "",
        "regular expression over parameter names to train (default all)",
        check=_regex,
    ),
    Option(
        "init_seed",
        int,
        0,
        "seed of randomly initialised parts (tiny model, new heads)",
        check=non_negative,
    ),
    Option(
        "keys",
        str,
        "",
        "signed run: node=PUBLIC_KEY_HEX pairs separated by commas, or @FILE with one per line",
    ),
    Option(
        "manifest", str, "", "a manifest.json to join instead of building one from these options"
    ),
)

# Hyper-parameters measured to learn on each kind of model (see README, "Choosing lr and u").
PRESETS = {
    "tiny": {"lr": 3e-3, "unit_exp": -12, "seq_len": 64},
    # MiniLM on SST-2, batch 16: dev accuracy 69.6% -> 75.2% in 1500 steps, still rising;
    # lr 1e-4 peaked at 75.3% after 250 steps and then diverged (55.5% at 1000).
    "default": {"lr": 3e-5, "unit_exp": -18, "seq_len": 128},
}


@dataclass(frozen=True, slots=True)
class RunPlan:
    manifest: Manifest | None  # None: build it from the spec (needs the model)
    model_ref: str
    task: TaskSpec | None
    hyper: Hyper | None
    raw: RawData


def _split(text: str) -> tuple[str, ...]:
    if not text:
        return ()
    sep = "|" if "|" in text else ","
    return tuple(s.strip() if sep == "," else s for s in text.split(sep))


def plan_run(values: dict[str, Any]) -> RunPlan:
    """Read the data and work out the task and hyper-parameters the options describe."""
    raw = read(values["data"])
    if values["manifest"]:
        from .store import read_manifest_file

        manifest = read_manifest_file(Path(values["manifest"]))
        return RunPlan(
            manifest,
            values["model"] if values["model"] != TINY else manifest.model,
            None,
            None,
            raw,
        )
    model = values["model"]
    preset = PRESETS["tiny" if model == TINY else "default"]
    task_kind = values["task"]
    if task_kind == "auto":
        task_kind = "classify" if raw.is_classification else "causal_lm"
    if task_kind == "classify" and not raw.is_classification:
        raise ConfigError("--task classify needs data with a 'label' column")
    seq_len = int(values["seq_len"] or preset["seq_len"])
    if task_kind == "causal_lm":
        task = TaskSpec(kind="causal_lm", seq_len=seq_len)
        raw = RawData(raw.texts, None)
    else:
        scorer = values["scorer"]
        if scorer == "auto":
            scorer = detect_kind(model)
        task = default_task(
            raw,
            scorer=scorer,
            seq_len=seq_len,
            labels=_split(values["labels"]),
            label_words=_split(values["label_words"]),
            template=values["template"],
            temperature=values["temperature"],
        )
    hyper = Hyper(
        epsilon=values["epsilon"],
        lr=values["lr"] or float(preset["lr"]),
        unit_exp=values["unit_exp"] or int(preset["unit_exp"]),
        headroom_exp=values["headroom_exp"],
        trainable=values["trainable"],
        init_seed=values["init_seed"],
    )
    return RunPlan(None, model, task, hyper, raw)


def parse_keys(text: str) -> tuple[tuple[str, str], ...]:
    """``n0=HEX,n1=HEX`` or ``@file`` (one ``node=HEX`` per line) -> sorted (node, key) pairs."""
    if not text:
        return ()
    if text.startswith("@"):
        try:
            text = Path(text[1:]).expanduser().read_text(encoding="utf-8").replace("\n", ",")
        except OSError as exc:
            raise ConfigError(f"--keys {text}: {exc.strerror}") from exc
    pairs: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        node, sep, key = item.partition("=")
        if not sep or not re.fullmatch(r"[0-9a-f]{64}", key.strip()):
            raise ConfigError(f"--keys: {item[:40]!r} is not node=PUBLIC_KEY (64 hex digits)")
        pairs[node.strip()] = key.strip()
    return tuple(sorted(pairs.items()))


def open_engine(
    plan: RunPlan,
    values: dict[str, Any],
    *,
    device: str,
    kernel: str,
    keys: tuple[tuple[str, str], ...] = (),
) -> Engine:
    keys = keys or parse_keys(values.get("keys", ""))
    if plan.manifest is not None:
        return Engine.open(plan.manifest, model_ref=plan.model_ref, device=device, kernel=kernel)
    assert plan.task is not None
    assert plan.hyper is not None
    return Engine.build(
        values["name"],
        plan.model_ref,
        plan.task,
        plan.hyper,
        keys=keys,
        device=device,
        kernel=kernel,
    )
