"""Prompt -> completion tasks: the loss on the completion tokens only, and greedy answers.

What people fine-tune for today: an instruction, a question or a conversation, and the answer
the model should give. A row is a ``prompt`` and its ``completion`` (MeZO's SQuAD and DROP,
FedKSeed's Natural Instructions and Dolly), or a chat (``messages``) rendered by the
tokenizer's own chat template, whose last turn -- the assistant's -- is the completion.

Tokens, as a user of the exported model would produce them at inference time:

    plain   prompt_ids     = tokenizer(template.format(prompt=p))          (special tokens on)
            completion_ids = tokenizer(c, add_special_tokens=False) + [eos]
    chat    prompt         = apply_chat_template(messages[:-1], add_generation_prompt=True)
            full           = apply_chat_template(messages)
            completion     = full[len(prompt):]     (the template must render the prompt first)
            both tokenised with add_special_tokens=False (the template writes its own)

A batch is ``prompt_ids + completion_ids`` per row, right-padded, at most ``seq_len`` tokens:
the completion keeps its first ``seq_len - 1`` tokens, the prompt its last ones (at least
one). The loss is the mean cross-entropy over the completion tokens of the batch (labels
-100 elsewhere, as in transformers).

Evaluation adds, when every reference answer is short (at most ``MAX_ANSWER_TOKENS`` tokens,
one line), exact match and F1 of greedy answers, as MeZO does for SQuAD: greedy decoding from
the prompt for at most ``MAX_NEW_TOKENS`` tokens (and never past ``seq_len`` in all), stopping
at an end-of-sequence token or a newline; the answer is the decoded text (special tokens
skipped) up to its first newline, stripped; both sides are normalised as SQuAD does (lower
case, no punctuation, no articles, single spaces) and F1 is over their words.
"""

from __future__ import annotations

import re
import string
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from seedswarm.protocol.manifest import TaskSpec

from .data import Chat, RawData
from .errors import DataError

MAX_ANSWER_TOKENS = 32  # answers this short (and one line) get exact match and F1
MAX_NEW_TOKENS = 50  # greedy answers stop here at the latest (MeZO's max_new_tokens)
IGNORE = -100  # the label of a token that is not scored


@dataclass(frozen=True, slots=True)
class Completion:
    """One prompt -> completion example, tokenised."""

    prompt: str  # what the model is given: the template applied, or the chat rendered
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]  # the scored tokens (an end token included)
    answer: str  # the reference answer as text, for exact match and F1
    chat: Chat | None = None  # the conversation up to the answer, for chat rows

    @property
    def is_short(self) -> bool:
        """A one-line answer of at most MAX_ANSWER_TOKENS tokens: exact match and F1 apply."""
        return "\n" not in self.answer and len(self.completion_ids) <= MAX_ANSWER_TOKENS + 1


def prepare(raw: RawData, spec: TaskSpec, tokenizer: Any) -> tuple[Completion, ...]:
    """Render and tokenise prompt -> completion data for ``spec`` (a ``completion`` task):
    chats for a chat task, prompt/completion pairs otherwise."""
    if spec.chat:
        if raw.chats is None:
            raise DataError(
                "a chat task needs chat data: rows with 'messages' (or conversational "
                "'prompt' and 'completion' lists)"
            )
        return tuple(
            _chat_example(chat, tokenizer, f"row {i + 1}") for i, chat in enumerate(raw.chats)
        )
    if raw.chats is not None:
        raise DataError("this data is chats: the task must say chat (the chat template)")
    if raw.prompts is None or raw.completions is None:
        raise DataError(
            "a completion task needs prompt -> completion data: 'prompt' and 'completion' "
            "columns, or 'messages'"
        )
    eos = tokenizer.eos_token_id
    out = []
    for i, (p, c) in enumerate(zip(raw.prompts, raw.completions, strict=True)):
        prompt = spec.template.format(prompt=p) if spec.template else p
        ids = tuple(tokenizer(prompt)["input_ids"])
        comp = list(tokenizer(c, add_special_tokens=False)["input_ids"])
        if eos is not None:
            comp.append(int(eos))  # so that the model learns to stop
        out.append(_checked(prompt, ids, tuple(comp), c.strip(), None, f"row {i + 1}"))
    return tuple(out)


def chat_prompt(tokenizer: Any, chat: Chat) -> str:
    """The text a chat model is given to answer after ``chat``: the template with its
    generation prompt."""
    return _render(tokenizer, chat, generation_prompt=True)


def _render(tokenizer: Any, chat: Chat, *, generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("chat rows need a chat template, and this tokenizer has no chat template")
    try:
        text = tokenizer.apply_chat_template(
            [{"role": r, "content": c} for r, c in chat],
            tokenize=False,
            add_generation_prompt=generation_prompt,
        )
    except Exception as exc:  # jinja2 raises its own errors (TemplateError and others)
        raise DataError(f"the chat template failed: {str(exc).splitlines()[0]}") from exc
    if not isinstance(text, str):
        raise DataError("the chat template did not render text")
    return text


def _chat_example(chat: Chat, tokenizer: Any, where: str) -> Completion:
    prompt = chat_prompt(tokenizer, chat[:-1])
    full = _render(tokenizer, chat, generation_prompt=False)
    if not full.startswith(prompt) or len(full) == len(prompt):
        raise DataError(
            f"{where}: the chat template does not render the conversation as the prompt "
            "(with its generation prompt) followed by the answer"
        )
    ids = tuple(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    comp = tuple(tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"])
    return _checked(prompt, ids, comp, chat[-1][1].strip(), chat[:-1], where)


def _checked(
    prompt: str,
    ids: tuple[int, ...],
    comp: tuple[int, ...],
    answer: str,
    chat: Chat | None,
    where: str,
) -> Completion:
    if not ids:
        raise DataError(f"{where}: the prompt has no tokens, so nothing predicts the completion")
    if not comp:
        raise DataError(f"{where}: the completion has no tokens")
    return Completion(prompt, ids, comp, answer, chat)


# -- batches and the loss ----------------------------------------------------------------------


def fit(example: Completion, seq_len: int) -> tuple[list[int], int]:
    """The row's tokens, at most ``seq_len``, and how many of them are the prompt."""
    comp = list(example.completion_ids[: seq_len - 1])
    prompt = list(example.prompt_ids[-(seq_len - len(comp)) :])
    return prompt + comp, len(prompt)


def make_batch(
    examples: Sequence[Completion], seq_len: int, pad_id: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 off the completion)."""
    rows = [fit(ex, seq_len) for ex in examples]
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.int64)
    for i, (row, n_prompt) in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, n_prompt : len(row)] = torch.tensor(row[n_prompt:])
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "labels": labels.to(device),
    }


def loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> tuple[float, int]:
    """(sum of the completion tokens' cross-entropy, how many tokens) of a batch."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    target = batch["labels"][:, 1:]  # token t+1 is predicted at position t
    scored = target != IGNORE
    picked = logits[:, :-1][scored].float()  # (tokens, V): only the scored positions
    total = F.cross_entropy(picked, target[scored], reduction="sum")
    return float(total.item()), int(scored.sum())


# -- greedy answers and their scores -----------------------------------------------------------


def stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """The tokens that end a greedy answer: the generation config's end tokens (what
    ``generate`` stops at), else the tokenizer's end-of-sequence token."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in eos} if isinstance(eos, list | tuple) else {int(eos)}


@torch.no_grad()
def greedy_answer(model: Any, tokenizer: Any, example: Completion, seq_len: int) -> str:
    """The model's greedy answer to ``example``'s prompt (see the module docstring), by
    transformers' own ``generate``: what a user of the exported model runs."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    ids = list(example.prompt_ids[-(seq_len - 1) :])
    budget = min(MAX_NEW_TOKENS, seq_len - len(ids))
    stops = sorted(stop_ids(model, tokenizer))
    device = next(model.parameters()).device

    class _Newline(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            text = tokenizer.decode(input_ids[0, len(ids) :], skip_special_tokens=True)
            return torch.full((input_ids.shape[0],), "\n" in text, device=input_ids.device)

    with warnings.catch_warnings():
        # generate() warns about generation settings of the model's own config that greedy
        # decoding ignores (a temperature, top_p); they change nothing here
        warnings.simplefilter("ignore")
        out = model.generate(
            input_ids=torch.tensor([ids], device=device),
            attention_mask=torch.ones((1, len(ids)), dtype=torch.int64, device=device),
            max_new_tokens=budget,
            do_sample=False,
            num_beams=1,
            eos_token_id=stops or None,
            pad_token_id=tokenizer.pad_token_id,
            stopping_criteria=StoppingCriteriaList([_Newline()]),
        )
    new = [int(t) for t in out[0, len(ids) :] if int(t) not in stops]
    return answer_text(tokenizer.decode(new, skip_special_tokens=True))


def answer_text(decoded: str) -> str:
    """A generated answer: the text up to its first newline, stripped."""
    return decoded.split("\n", 1)[0].strip()


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


_PUNCTUATION = frozenset(string.punctuation)


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def f1(prediction: str, reference: str) -> float:
    """SQuAD's word-overlap F1 of the normalised answers."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)
