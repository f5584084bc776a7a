"""The run's settings: what defines a run's manifest, so nodes given the same values build the
same run id without exchanging a file (node/startup.py plans the run from them)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .fields import setting
from .options import non_negative, positive


def _exp(v: Any) -> str | None:
    return None if -60 <= v <= 0 else "must be in [-60, 0]"


def _regex(v: Any) -> str | None:
    from seedswarm.protocol.pattern import PatternError, check_pattern

    try:
        check_pattern(v)  # the portable subset a manifest may hold (docs/PROTOCOL.md §2)
        re.compile(v)
    except (PatternError, re.error) as exc:
        return f"is not a portable regular expression ({exc})"
    return None


def _lora_targets(v: Any) -> str | None:
    for item in filter(None, (x.strip() for x in v.split(","))):
        if not re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", item):
            return f"{item[:40]!r} is not a module name (e.g. q_proj, or attn.c_attn)"
    return None


def _lora_rank(v: Any) -> str | None:
    return None if 1 <= v <= 1024 else "must be in [1, 1024]"


def _node_list(text: str) -> str | None:
    """None when ``text`` is node ids separated by commas (or empty), else what is wrong."""
    for item in filter(None, (x.strip() for x in text.split(","))):
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", item):
            return f"{item[:40]!r} is not a node id (1-32 of A-Z a-z 0-9 _ -)"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSettings:
    """What defines a run's manifest: nodes given the same values build the same run id."""

    name: str = setting("default", "run name: the topic namespace nodes meet in")
    model: str = setting("tiny", "base model: tiny, minilm, a directory, or a hub id")
    data: str = setting(
        "builtin:patterns",
        "training data: .txt .jsonl .csv .tsv, hf:REF, builtin:patterns",
    )
    task: str = setting(
        "auto",
        "auto (from the data: prompt/completion or chat rows make a completion task, a label "
        "column classify, text causal_lm), causal_lm, classify or completion",
        choices=("auto", "causal_lm", "classify", "completion"),
        advanced=True,
    )
    scorer: str = setting(
        "auto",
        "how classify scores labels",
        choices=("auto", "lm", "mlm", "embed", "head"),
        advanced=True,
    )
    labels: str = setting("", "class names in label-id order, separated by | or ,", advanced=True)
    label_words: str = setting(
        "", "label words (lm/mlm) or descriptions (embed), separated by |", advanced=True
    )
    template: str = setting(
        "",
        "prompt template: with {text} (and {mask} for mlm) for classify, with {prompt} for a "
        "completion task's prompts (chats take the tokenizer's chat template instead)",
        advanced=True,
    )
    temperature: float = setting(0.05, "embed scorer temperature", check=positive, advanced=True)
    seq_len: int = setting(
        0, "tokens per example (0: 64 for tiny, else 128)", check=non_negative, advanced=True
    )
    lr: float = setting(0.0, "learning rate (0: the model's default)", check=non_negative)
    epsilon: float = setting(1e-3, "perturbation size", check=positive, advanced=True)
    unit_exp: int = setting(
        0, "update unit u = 2**unit_exp (0: the model's default)", check=_exp, advanced=True
    )
    headroom_exp: int = setting(
        3,
        "grid resolution: a tensor's largest base weight is 2**(24-headroom_exp) grid steps",
        advanced=True,
    )
    trainable: str = setting(
        "",
        "regular expression over parameter names to train (default all)",
        check=_regex,
        advanced=True,
    )
    init_seed: int = setting(
        0,
        "seed of randomly initialised parts (tiny model, new heads)",
        check=non_negative,
        advanced=True,
    )
    estimator: str = setting(
        "auto",
        "how a step estimates the gradient: spsa (two passes, one record), fzoo (one plain and "
        "K perturbed passes, K records), or auto (fzoo for pretrained models, spsa for tiny)",
        choices=("auto", "spsa", "fzoo"),
    )
    directions: int = setting(
        0,
        "fzoo: directions (records) per step, 2..64 (0: 8)",
        check=non_negative,
        advanced=True,
    )
    direction: str = setting(
        "dense",
        "random directions: dense signs, or lowrank (rank-1 signs for matrices: several times "
        "cheaper to replay)",
        choices=("dense", "lowrank"),
        advanced=True,
    )
    adapter: str = setting(
        "none",
        "train an adapter instead of the model's own weights: none, or lora (LoRA through peft; "
        "the base stays frozen and hashed, the adapter's initial values come from --init-seed)",
        choices=("none", "lora"),
    )
    lora_rank: int = setting(
        8, "LoRA rank r (with --adapter lora)", check=_lora_rank, advanced=True
    )
    lora_alpha: float = setting(
        16.0, "LoRA alpha: the update is scaled by alpha / r", check=positive, advanced=True
    )
    lora_targets: str = setting(
        "",
        "modules LoRA adapts, separated by commas, e.g. q_proj,v_proj (default: peft's for the "
        "architecture)",
        check=_lora_targets,
        advanced=True,
    )
    keys: str = setting(
        "",
        "signed run: node=PUBLIC_KEY_HEX pairs separated by commas, or @FILE with one per line",
        advanced=True,
    )
    schedule: str = setting(
        "auto",
        "how the learning rate falls: decay (a smooth step to 0 over --budget records; "
        "train and swarm plan it from --steps), constant, or auto (decay when --budget is "
        "given, else constant)",
        choices=("auto", "decay", "constant"),
    )
    budget: int = setting(
        0,
        "records the whole run plans, for the decay (0: none; with --schedule decay, train "
        "and swarm plan nodes x --steps x records a step)",
        check=non_negative,
    )
    relays: str = setting(
        "",
        "ids of the relays this run's nodes may follow, separated by commas (in a signed run "
        "each needs a key); a relay the run does not name is never followed",
        check=_node_list,
        advanced=True,
    )
    manifest: str = setting(
        "", "a manifest.json to join instead of building one from these options"
    )

    def __post_init__(self) -> None:
        if self.lora_targets and self.adapter != "lora":
            raise ConfigError("--lora-targets is for --adapter lora")
