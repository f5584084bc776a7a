"""Held-out evaluation of a task model: mean loss, accuracy for classification, and for short
completions exact match and F1 of greedy answers. Read-only: it never changes the weights."""

from __future__ import annotations

import torch

from . import completion
from .tasks import Examples, TaskModel


def evaluate(
    tm: TaskModel, examples: Examples, *, batch_size: int = 64, generate: bool | None = None
) -> dict[str, float]:
    """Mean loss (and accuracy for classification) of ``tm`` over ``examples``.

    For a completion task the loss is the mean over all completion tokens, and ``tokens``
    counts them; ``exact_match`` and ``f1`` of greedy answers come with it when ``generate``
    is True, or when it is None and every reference answer is short (completion.py).
    """
    if tm.spec.kind == "completion":
        return _evaluate_completions(tm, examples, batch_size=batch_size, generate=generate)
    total, correct, n = 0.0, 0, 0
    for i in range(0, len(examples), batch_size):
        part = examples.subset(range(i, min(i + batch_size, len(examples))))
        batch = tm.make_batch(part)
        size = len(part)
        if tm.spec.kind == "classify":
            logits = tm.logits(batch)
            total += float(
                torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum")
            )
            correct += int((logits.argmax(-1) == batch["labels"]).sum())
        else:
            total += tm.loss(batch) * size
        n += size
    out = {"loss": total / max(n, 1), "examples": float(n)}
    if tm.spec.kind == "classify":
        out["accuracy"] = correct / max(n, 1)
    return out


def _evaluate_completions(
    tm: TaskModel, examples: Examples, *, batch_size: int, generate: bool | None
) -> dict[str, float]:
    total, tokens = 0.0, 0
    for i in range(0, len(examples), batch_size):
        part = examples.subset(range(i, min(i + batch_size, len(examples))))
        s, k = tm.completion_loss_sum(tm.make_batch(part))
        total, tokens = total + s, tokens + k
    out = {"loss": total / max(tokens, 1), "examples": float(len(examples)), "tokens": tokens}
    if generate is None:
        generate = bool(examples.completions) and all(c.is_short for c in examples.completions)
    if generate and len(examples):
        answers = tm.answers(examples)
        refs = [c.answer for c in examples.completions]
        n = len(refs)
        out["exact_match"] = sum(map(completion.exact_match, answers, refs)) / n
        out["f1"] = sum(map(completion.f1, answers, refs)) / n
    return out
