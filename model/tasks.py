"""Tasks: how a batch becomes a loss, aligned with what the base model already knows.

Zeroth-order training only moves a model that already ranks the right answer somewhat well
(DESIGN.md §1: MeZO on SST-2 is at chance with a fresh head and no prompt, 90.5% with one). So:

  * ``causal_lm``          next-token cross-entropy on fixed-length chunks of text.
  * ``classify`` / ``lm``  the causal LM scores each label word at the end of a prompt
                           (``"{text} It was"`` -> " terrible" / " great"), as MeZO does.
  * ``classify`` / ``mlm`` the masked LM scores the label words at the mask of the prompt.
  * ``classify`` / ``embed`` a sentence encoder (MiniLM): cosine similarity between the mean-pooled,
                           normalised embedding of the text and of each label description
                           ("a positive review"), divided by a temperature.
  * ``classify`` / ``head``  fallback: a new linear head on the mean-pooled encoder output,
                           initialised from the manifest's ``init_seed``.
  * ``completion``         prompt -> completion pairs or chats: cross-entropy on the completion
                           tokens only (completion.py).

Every scorer gives logits of shape (B, num_labels) and the loss is their cross-entropy, so
accuracy and loss mean the same thing whichever scorer is used.

With an adapter (the manifest's ``adapter``; adapters.py) the backbone gets LoRA layers, and
the parameters fall in two named sets: the base's (``base_weights``: frozen, hashed as the
base) and the adapter's (``adapter_weights``: what trains).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from seedswarm.protocol.manifest import AdapterSpec, TaskSpec

from . import completion
from .adapters import Adapter, attach
from .completion import Completion
from .data import RawData
from .errors import DataError, ModelError
from .loading import Loaded

SENTIMENT = ("negative", "positive")
DEFAULT_TEMPLATES = {"lm": "{text} It was", "mlm": "{text} It was {mask}."}


@dataclass(frozen=True, slots=True)
class Examples:
    """Prepared data: token chunks (causal LM), (text, label id) pairs (classification), or
    tokenised prompt -> completion examples."""

    chunks: torch.Tensor | None = None  # (N, seq_len) int64
    texts: tuple[str, ...] = ()
    labels: tuple[int, ...] = ()
    completions: tuple[Completion, ...] = ()

    def __len__(self) -> int:
        if self.chunks is not None:
            return len(self.chunks)
        return len(self.completions) if self.completions else len(self.texts)

    def subset(self, indices: Sequence[int]) -> Examples:
        if self.chunks is not None:
            return Examples(chunks=self.chunks[list(indices)])
        if self.completions:
            return Examples(completions=tuple(self.completions[i] for i in indices))
        return Examples(
            texts=tuple(self.texts[i] for i in indices),
            labels=tuple(self.labels[i] for i in indices),
        )


def default_task(
    raw: RawData,
    *,
    scorer: str,
    seq_len: int,
    labels: Sequence[str] = (),
    label_words: Sequence[str] = (),
    template: str = "",
    temperature: float = 0.05,
) -> TaskSpec:
    """The task a data set implies, with defaults a user can override one by one.

    Prompt -> completion data gives a ``completion`` task (``template``, if given, formats its
    plain prompts; chats make a chat task); text gives ``causal_lm``; labelled text gives
    ``classify``."""
    if raw.is_completion:
        chat = raw.chats is not None
        return TaskSpec(kind="completion", seq_len=seq_len, template=template, chat=chat)
    if raw.labels is None:
        return TaskSpec(kind="causal_lm", seq_len=seq_len)
    names = tuple(labels) or label_names(raw.labels)
    if not label_words and scorer != "head":
        if names == SENTIMENT:
            label_words = {
                "lm": (" terrible", " great"),
                "mlm": ("terrible", "great"),
                "embed": ("a negative review", "a positive review"),
            }[scorer]
        else:
            label_words = names
    if scorer in DEFAULT_TEMPLATES and not template:
        template = DEFAULT_TEMPLATES[scorer]
    return TaskSpec(
        kind="classify",
        seq_len=seq_len,
        scorer=scorer,
        labels=names,
        label_words=tuple(label_words),
        template=template,
        temperature=temperature if scorer == "embed" else 0.0,
    )


def label_names(raw_labels: Sequence[str]) -> tuple[str, ...]:
    """Class names from the labels in a file: 0/1 reads as negative/positive (GLUE's SST-2)."""
    values = sorted(set(raw_labels))
    if all(_is_int(v) for v in values):
        ints = sorted(int(v) for v in values)
        if ints == [0, 1]:
            return SENTIMENT
        return tuple(str(i) for i in range(max(ints) + 1))
    return tuple(values)


def prepare(raw: RawData, spec: TaskSpec, tokenizer: Any) -> Examples:
    """Turn raw data into examples for ``spec``."""
    if spec.kind == "completion":
        return Examples(completions=completion.prepare(raw, spec, tokenizer))
    if raw.is_completion:
        raise DataError(
            f"this data is prompt -> completion; a {spec.kind} task needs "
            + ("text" if spec.kind == "causal_lm" else "text with labels")
        )
    if spec.kind == "causal_lm":
        eos = tokenizer.eos_token_id
        ids: list[int] = []
        for text in raw.texts:
            ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
            if eos is not None:
                ids.append(eos)
        n = len(ids) // spec.seq_len
        if n == 0:
            raise DataError(
                f"the text has {len(ids)} tokens: fewer than one chunk of {spec.seq_len}"
            )
        return Examples(chunks=torch.tensor(ids[: n * spec.seq_len]).view(n, spec.seq_len))
    if raw.labels is None:
        raise DataError("a classification task needs data with a 'label' column")
    index = {name: i for i, name in enumerate(spec.labels)}
    out = []
    for lab in raw.labels:
        if lab in index:
            out.append(index[lab])
        elif _is_int(lab) and int(lab) < len(spec.labels):
            out.append(int(lab))
        else:
            raise DataError(f"label {lab!r} is not one of {', '.join(spec.labels)}")
    return Examples(texts=raw.texts, labels=tuple(out))


class TaskModel(torch.nn.Module):
    """The backbone plus whatever the task adds; ``loss`` and ``logits`` run forward passes."""

    def __init__(
        self,
        loaded: Loaded,
        spec: TaskSpec,
        *,
        init_seed: int,
        adapter: AdapterSpec | None = None,
    ) -> None:
        super().__init__()
        self.backbone = loaded.model
        # the base's parameters by their names, before an adapter renames what it wraps
        self._base: list[tuple[str, torch.nn.Parameter]] = list(self.backbone.named_parameters())
        self.tokenizer = loaded.tokenizer
        self.spec = spec
        self.kind = loaded.kind
        self.amp_dtype: torch.dtype | None = None
        self.head: torch.nn.Linear | None = None
        self._label_ids: list[int] = []
        self._prompt_suffix = ""
        self._desc: dict[str, torch.Tensor] | None = None
        self.adapter: Adapter | None = None
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if spec.kind in ("causal_lm", "completion"):
            if self.kind != "lm":
                what = "causal-LM" if spec.kind == "causal_lm" else "completion"
                raise ModelError(f"a {what} task needs a causal LM (this model has no LM head)")
            self._attach(adapter, init_seed)
            return
        needed = {"lm": "lm", "mlm": "mlm", "embed": "embed", "head": "embed"}[spec.scorer]
        if needed != self.kind:
            raise ModelError(
                f"scorer {spec.scorer!r} does not fit this model (it offers {self.kind!r})"
            )
        if spec.scorer in ("lm", "mlm"):
            self._label_ids = self._label_tokens(spec.label_words)
        if spec.scorer == "head":
            config: Any = self.backbone.config
            hidden = int(config.hidden_size)
            gen = torch.Generator().manual_seed(init_seed)
            # on the meta device: nn.Linear's own init would draw from the global generator
            self.head = torch.nn.Linear(hidden, len(spec.labels), device="meta").to_empty(
                device="cpu"
            )
            with torch.no_grad():
                self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=gen) * 0.02)
                self.head.bias.zero_()
            self.head.requires_grad_(False)
        self._attach(adapter, init_seed)

    def _attach(self, adapter: AdapterSpec | None, init_seed: int) -> None:
        if adapter is not None:
            if self.head is not None:
                raise ModelError("an adapter cannot train a new head (use another scorer)")
            self.adapter = attach(self.backbone, adapter, init_seed=init_seed)

    # -- parameters ------------------------------------------------------------------------

    def base_weights(self) -> list[tuple[str, torch.Tensor]]:
        """The base's parameters (and a new head's), sorted by name: what the base hash is
        over. Names are the backbone's ``named_parameters()`` before any adapter."""
        out: list[tuple[str, torch.Tensor]] = [(n, p) for n, p in self._base]
        if self.head is not None:
            out += [(f"head.{n}", p) for n, p in self.head.named_parameters()]
        return sorted(out, key=lambda np_: np_[0])

    def adapter_weights(self) -> list[tuple[str, torch.Tensor]]:
        """The adapter's tensors (``<module>.lora_A.weight``, ...), sorted; none without one."""
        return [] if self.adapter is None else list(self.adapter.named)

    def named_weights(self) -> list[tuple[str, torch.Tensor]]:
        """Every parameter by the name the manifest and snapshots use, sorted by name."""
        return sorted(self.base_weights() + self.adapter_weights(), key=lambda np_: np_[0])

    def trainable_candidates(self) -> list[tuple[str, torch.Tensor]]:
        """What the manifest's ``trainable`` selects from: the adapter's tensors when there
        is an adapter (the base stays frozen), else every parameter."""
        return self.adapter_weights() if self.adapter is not None else self.named_weights()

    @property
    def label_token_ids(self) -> tuple[int, ...]:
        """The token scored for each label (the first token of its word), lm and mlm scorers."""
        return tuple(self._label_ids)

    @property
    def prompt_suffix(self) -> str:
        """What is appended to the formatted template (a space the label words' tokens lost)."""
        return self._prompt_suffix

    # -- batches ---------------------------------------------------------------------------

    def _label_tokens(self, words: Sequence[str]) -> list[int]:
        tok = self.tokenizer
        ids = []
        for w in words:
            toks = tok(w, add_special_tokens=False)["input_ids"]
            if not toks:
                raise ModelError(f"label word {w!r} has no tokens")
            if tok.decode(toks[:1]).strip() == "" and len(toks) > 1:
                # the tokenizer splits a leading space off: put the space in the prompt
                self._prompt_suffix = " "
                toks = toks[1:]
            ids.append(int(toks[0]))
        if len(set(ids)) != len(ids):
            raise ModelError(f"label words {list(words)} do not start with distinct tokens")
        return ids

    def prompts(self, texts: Sequence[str]) -> list[str]:
        """The texts as the lm and mlm scorers give them to the model: the template filled in
        (with the tokenizer's mask token for ``{mask}``), and the prompt suffix."""
        mask = getattr(self.tokenizer, "mask_token", None) or ""
        tpl = self.spec.template or "{text}"
        return [tpl.format(text=t, mask=mask) + self._prompt_suffix for t in texts]

    def make_batch(self, ex: Examples) -> dict[str, torch.Tensor]:
        device = self.device
        if ex.chunks is not None:
            return {"input_ids": ex.chunks.to(device)}
        if self.spec.kind == "completion":
            if not ex.completions and len(ex):
                raise DataError("a completion task needs prompt -> completion examples")
            return completion.make_batch(
                ex.completions, self.spec.seq_len, self.tokenizer.pad_token_id, device
            )
        tok = self.tokenizer
        side = "left" if self.spec.scorer in ("lm", "mlm") else "right"
        tok.truncation_side = side  # keep the prompt's end, where the label is scored
        enc = tok(
            self.prompts(ex.texts) if self.spec.scorer in ("lm", "mlm") else list(ex.texts),
            padding=True,
            truncation=True,
            max_length=self.spec.seq_len,
            return_tensors="pt",
        )
        batch = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        batch["labels"] = torch.tensor(ex.labels, dtype=torch.int64, device=device)
        return batch

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    # -- forward ---------------------------------------------------------------------------

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @torch.no_grad()
    def loss(self, batch: dict[str, torch.Tensor]) -> float:
        with self._autocast():
            if self.spec.kind == "causal_lm":
                ids = batch["input_ids"]
                out = self.backbone(input_ids=ids, labels=ids)
                return float(out.loss.float().item())
            if self.spec.kind == "completion":
                total, tokens = completion.loss_sum(self.backbone, batch)
                return total / tokens
            logits = self.logits(batch)
            return float(F.cross_entropy(logits.float(), batch["labels"]).item())

    @torch.no_grad()
    def completion_loss_sum(self, batch: dict[str, torch.Tensor]) -> tuple[float, int]:
        """(summed cross-entropy, tokens) over a completion batch's completion tokens."""
        with self._autocast():
            return completion.loss_sum(self.backbone, batch)

    @torch.no_grad()
    def answers(self, ex: Examples) -> list[str]:
        """Greedy answers to the examples' prompts (completion.py), one at a time."""
        with self._autocast():
            return [
                completion.greedy_answer(self.backbone, self.tokenizer, c, self.spec.seq_len)
                for c in ex.completions
            ]

    @torch.no_grad()
    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, num_labels) class scores."""
        return self._scores(batch)

    def classify_loss_with_grad(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The classification loss as a tensor autograd can differentiate (``loss`` and
        ``logits`` run under no_grad): for first-order references and measurements (bench
        learn's AdamW arm, bench noise), never for a zeroth-order step."""
        with torch.enable_grad():
            return F.cross_entropy(self._scores(batch).float(), batch["labels"])

    def _scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        scorer = self.spec.scorer
        if scorer == "lm":
            out = self.backbone(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
            last = mask.sum(1) - 1 if self.tokenizer.padding_side == "right" else None
            if last is None:
                rows = out[:, -1, :]
            else:
                rows = out[torch.arange(ids.shape[0], device=ids.device), last]
            scores: torch.Tensor = rows[:, self._label_ids].float()
            return scores
        if scorer == "mlm":
            out = self.backbone(input_ids=ids, attention_mask=mask).logits
            where = ids == self.tokenizer.mask_token_id
            if not bool((where.sum(1) == 1).all()):
                raise DataError("every prompt must contain exactly one mask token")
            masked: torch.Tensor = out[where][:, self._label_ids].float()
            return masked
        pooled = self._embed(ids, mask)
        if scorer == "head":
            assert self.head is not None
            head_scores: torch.Tensor = self.head(pooled).float()
            return head_scores
        desc = self._descriptions()
        sims: torch.Tensor = (pooled @ desc.T).float() / self.spec.temperature
        return sims

    def _embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden: torch.Tensor = self.backbone(
            input_ids=ids, attention_mask=mask
        ).last_hidden_state  # (B, T, H)
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        if self.spec.scorer == "embed":
            pooled = F.normalize(pooled.float(), dim=-1)
        return pooled

    def _descriptions(self) -> torch.Tensor:
        """(num_labels, H) embeddings of the label descriptions, under the current weights."""
        if self._desc is None:
            enc = self.tokenizer(list(self.spec.label_words), padding=True, return_tensors="pt")
            self._desc = {
                k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")
            }
        return self._embed(self._desc["input_ids"], self._desc["attention_mask"])


def _is_int(text: str) -> bool:
    """A label written as a plain ASCII number ("0", "12"), not any Unicode digit."""
    return text.isascii() and text.isdigit()
