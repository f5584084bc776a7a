"""Training and evaluation data from local files (and, optionally, the ``datasets`` library).

Accepted references:
  * ``.txt``            plain text: causal-LM data (the whole file is one document)
  * ``.jsonl``          one JSON object per line: ``text`` (or ``sentence``) and optional
                        ``label``; or ``prompt`` and ``completion``; or ``messages`` (a chat:
                        a list of ``{"role", "content"}`` ending with the assistant's answer)
  * ``.csv`` / ``.tsv`` a header row; a ``sentence`` or ``text`` column and optional ``label``
  * ``hf:<ref>[@split]`` a dataset saved with ``save_to_disk`` (a directory) or a ``datasets``
                        id; needs ``pip install 'seedswarm[datasets]'``
  * ``builtin:patterns`` a small synthetic corpus made in code, for the quickstart

A table with a ``label`` column is classification data; ``prompt`` / ``completion`` columns or
a ``messages`` column are prompt -> completion data (model/completion.py: the loss is on the
completion only); anything else is text for a causal LM. A ``prompt`` and ``completion`` that
are themselves lists of messages (the "conversational prompt-completion" rows of TRL) are a chat
too: the conversation is the prompt's messages followed by the completion's.
Batches are drawn from the record's seed (Philox stream ``STREAM_DATA``), so a node's steps are
reproducible from ``(run, node, seq)`` and its data shard.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seedswarm.protocol.philox import STREAM_DATA, philox4x32, seed_key

from .errors import DataError

TEXT_COLUMNS = ("sentence", "text")


Message = tuple[str, str]  # (role, content) of one chat turn
Chat = tuple[Message, ...]


@dataclass(frozen=True, slots=True)
class RawData:
    """What a data reference holds: texts, and labels as written in the file (or None); or
    prompt -> completion pairs (``prompts``, ``completions``); or chats (``chats``, each
    ending with the assistant's turn). Prompt -> completion data has no ``texts``."""

    texts: tuple[str, ...]
    labels: tuple[str, ...] | None
    prompts: tuple[str, ...] | None = None
    completions: tuple[str, ...] | None = None
    chats: tuple[Chat, ...] | None = None

    @property
    def is_classification(self) -> bool:
        return self.labels is not None

    @property
    def is_completion(self) -> bool:
        """Prompt -> completion data: pairs or chats."""
        return self.prompts is not None or self.chats is not None

    def __len__(self) -> int:
        if self.chats is not None:
            return len(self.chats)
        if self.prompts is not None:
            return len(self.prompts)
        return len(self.texts)


def read(ref: str) -> RawData:
    """Read a data reference; raises DataError with a one-line reason."""
    if ref.startswith("builtin:"):
        return _builtin(ref.removeprefix("builtin:"))
    if ref.startswith("hf:"):
        return _hf(ref.removeprefix("hf:"))
    path = Path(ref).expanduser()
    if not path.is_file():
        raise DataError(f"data file {ref} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            return RawData((path.read_text(encoding="utf-8"),), None)
        if suffix == ".jsonl":
            return _jsonl(path)
        if suffix in (".csv", ".tsv"):
            return _table(path, "\t" if suffix == ".tsv" else ",")
    except UnicodeDecodeError as exc:
        raise DataError(f"{ref} is not UTF-8 text") from exc
    raise DataError(
        f"{ref}: unsupported data format {suffix or '(none)'}: use .txt .jsonl .csv .tsv"
    )


def _rows_to_data(rows: Sequence[dict[str, object]], where: str) -> RawData:
    if not rows:
        raise DataError(f"{where} holds no examples")
    cols = {k for r in rows for k in r}  # JSON lines may differ: look at every row
    common = set.intersection(*(set(r) for r in rows))
    if cols & COMPLETION_COLUMNS:
        return _completion_rows(rows, where, cols, common)
    text_col = next((c for c in TEXT_COLUMNS if c in common), None)
    if text_col is None:
        raise DataError(
            f"{where} needs a 'sentence' or 'text' column, 'prompt' and 'completion' columns, "
            f"or a 'messages' column (has: {', '.join(sorted(cols))})"
        )
    texts = tuple(_cell(r.get(text_col)) for r in rows)
    if "label" not in cols:
        return RawData(texts, None)
    labels = tuple(_cell(r.get("label")).strip() for r in rows)
    if any(not lab for lab in labels):
        raise DataError(f"{where} has rows without a label")
    return RawData(texts, labels)


COMPLETION_COLUMNS = frozenset({"prompt", "completion", "messages"})
ROLES = frozenset({"system", "user", "assistant", "tool"})


def _completion_rows(
    rows: Sequence[dict[str, object]], where: str, cols: set[str], common: set[str]
) -> RawData:
    """Prompt -> completion pairs, or chats: every row of one kind."""
    if "messages" in cols:
        if "messages" not in common or cols & {"prompt", "completion"}:
            raise DataError(
                f"{where}: every row needs 'messages' (a chat), without 'prompt'/'completion'"
            )
        chats = tuple(
            _chat(r["messages"], f"{where}: row {i + 1}", ends_with_answer=True)
            for i, r in enumerate(rows)
        )
        return RawData((), None, chats=chats)
    if not {"prompt", "completion"} <= common:
        raise DataError(f"{where}: every row needs both 'prompt' and 'completion'")
    if "label" in cols:
        raise DataError(f"{where}: prompt -> completion rows take no 'label'")
    if all(isinstance(r["prompt"], list) for r in rows):
        # TRL's conversational prompt-completion rows: messages before and after
        conversations: list[Chat] = []
        for i, r in enumerate(rows):
            at = f"{where}: row {i + 1}"
            answer = _chat(r["completion"], at, ends_with_answer=True)
            if len(answer) != 1:
                raise DataError(f"{at}: the completion must be one assistant message")
            conversations.append(_chat(r["prompt"], at, ends_with_answer=False) + answer)
        return RawData((), None, chats=tuple(conversations))
    prompts, completions = [], []
    for i, r in enumerate(rows):
        p, c = r["prompt"], r["completion"]
        if not isinstance(p, str) or not isinstance(c, str):
            raise DataError(f"{where}: row {i + 1}: 'prompt' and 'completion' must be text")
        if not c:
            raise DataError(f"{where}: row {i + 1}: the completion is empty")
        prompts.append(p)
        completions.append(c)
    return RawData((), None, prompts=tuple(prompts), completions=tuple(completions))


def _chat(value: object, where: str, *, ends_with_answer: bool) -> Chat:
    """A list of ``{"role": str, "content": str}`` as (role, content) pairs."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: messages must be a non-empty list")
    out = []
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise DataError(f"{where}: each message is an object with a 'role'")
        if not isinstance(m.get("content"), str):
            raise DataError(f"{where}: each message has text 'content'")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: unknown role {m['role']!r} (use {', '.join(sorted(ROLES))})")
        out.append((m["role"], m["content"]))
    if ends_with_answer:
        if out[-1][0] != "assistant":
            raise DataError(f"{where}: the last message must be the assistant's answer")
        if not out[-1][1]:
            raise DataError(f"{where}: the assistant's answer is empty")
    return tuple(out)


def _cell(value: object) -> str:
    """A table cell as text; a missing one (short CSV row, JSON null) is empty, not "None"."""
    return "" if value is None else str(value)


def _jsonl(path: Path) -> RawData:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: each line must be a JSON object")
            rows.append(obj)
    return _rows_to_data(rows, str(path))


def _table(path: Path, delimiter: str) -> RawData:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL)
        try:
            rows: list[dict[str, object]] = [dict(r) for r in reader]
        except csv.Error as exc:
            raise DataError(f"{path}: {exc}") from exc
    return _rows_to_data(rows, str(path))


def _hf(spec: str) -> RawData:
    try:
        import datasets
    except ImportError as exc:
        raise DataError(
            "hf: data needs the datasets library: pip install 'seedswarm[datasets]'"
        ) from exc
    ref, _, split = spec.partition("@")
    try:
        if Path(ref).expanduser().is_dir():
            ds = datasets.load_from_disk(str(Path(ref).expanduser()))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split or "train"]
        else:
            ds = datasets.load_dataset(ref, split=split or "train")
    except Exception as exc:  # datasets raises many types; the message is what matters
        raise DataError(f"cannot load dataset {ref!r}: {str(exc).splitlines()[0]}") from exc
    rows = [dict(r) for r in ds]
    return _rows_to_data(rows, f"hf:{spec}")


_SUBJECTS = ("the cat", "a dog", "the bird", "my friend", "the teacher", "a child", "the robot")
_VERBS = ("sees", "likes", "finds", "follows", "helps", "draws", "hears")
_OBJECTS = ("the ball", "a tree", "the river", "some bread", "the moon", "a small house")
_ENDS = (".", " today.", " again.", " at night.", " in the park.")


def _builtin(name: str) -> RawData:
    if name != "patterns":
        raise DataError(f"unknown builtin data {name!r}: the only one is builtin:patterns")
    rng = random.Random(20261122)
    lines = [
        f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(_ENDS)}"
        for _ in range(4000)
    ]
    return RawData(("\n".join(lines) + "\n",), None)


def shard_indices(n: int, shard: tuple[int, int]) -> list[int]:
    """Indices of examples in shard ``i`` of ``k`` (every k-th example, starting at i)."""
    i, k = shard
    if not (k >= 1 and 0 <= i < k):
        raise DataError(f"shard {i}/{k} is not valid: use i/k with 0 <= i < k")
    out = list(range(i, n, k))
    if not out:
        raise DataError(f"shard {i}/{k} of {n} examples is empty")
    return out


def sample_batch(seed: int, population: int, batch_size: int) -> list[int]:
    """``batch_size`` indices in [0, population), uniform with replacement, from the seed."""
    if population < 1:
        raise DataError("there are no examples to draw a batch from")
    ctr = np.zeros((batch_size, 4), dtype=np.uint32)
    ctr[:, 0] = np.arange(batch_size, dtype=np.uint32)
    ctr[:, 3] = STREAM_DATA
    words = philox4x32(ctr, seed_key(seed))[:, :2].astype(np.uint64)
    draws = (words[:, 0] << np.uint64(32)) | words[:, 1]  # 64-bit uniform
    return [int(d % np.uint64(population)) for d in draws]
