"""Prompt -> completion data files and a chat model directory for the tests that run the CLI
and nodes on completion tasks (the data is model/'s colour questions: short answers)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from .unit.model.helpers import COLOURS, tiny_with_chat_template


def write_qa(path: Path, n: int, *, chat: bool, seed: int) -> Path:
    """``n`` questions about colours as prompt/completion rows, or as chats."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for _ in range(n):
            thing = rng.choice(sorted(COLOURS))
            q, a = f"what colour is the {thing}?", COLOURS[thing]
            row: dict[str, Any] = (
                {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                if chat
                else {"prompt": q, "completion": f" {a}"}
            )
            fh.write(json.dumps(row) + "\n")
    return path


def save_chat_model(out: Path) -> Path:
    """The tiny model with a chat template, as a transformers directory (the built-in tiny
    model's byte tokenizer has none)."""
    loaded = tiny_with_chat_template()
    loaded.model.save_pretrained(str(out))  # type: ignore[operator]
    loaded.tokenizer.save_pretrained(str(out))
    return out
