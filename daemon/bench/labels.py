"""``seedswarm bench labels``: which label words (or descriptions) the base model already ranks
best, before a single record.

Theory of operation. A zeroth-order run only moves a model that already ranks the right answer
somewhat well (model/tasks.py), and it moves it a little per record: the first run of an
embedding scorer on SST-2 starts at 69.6% with "a negative review" / "a positive review" and
at 72.9% with "a bad film" / "a good film" (after 10,000 records that run's dev loss is still
lower on two seeds, its accuracy one point higher on one and lower on the other: docs/
LEARNING.md, "Label descriptions"). So the words a classification task scores are worth
choosing, and choosing them costs forward passes only: this benchmark scores each
candidate set of label words on the *base* model, over a seeded sample of the training data
(the choice is made there, so that the held-out set it reports stays an honest test), and,
with ``--eval``, on the held-out data too. Each candidate is the task ``train`` would build
with ``--label-words`` set to it (the same scorer, template, temperature and sequence length),
so the best row's flag can be pasted into a run's command line.

It never trains and never writes: the base model is loaded once, each candidate wraps it in
its own task model. ``--model`` left at the bench default (opt-125m-config, a random
initialisation that ranks nothing) means MiniLM here.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from typing import Any

from seedswarm.daemon.console import table
from seedswarm.daemon.errors import ConfigError

from .settings import BenchSettings

# what the benchmark tries when --labels-candidates is not given, for two-class sentiment data
# (labels 0/1 read as negative/positive, model/tasks.py), by scorer; the default set (tasks.py)
# is scored too, first, whether or not it is listed here
SENTIMENT_CANDIDATES: dict[str, tuple[tuple[str, str], ...]] = {
    "embed": (
        ("a negative review", "a positive review"),
        ("a bad film", "a good film"),
        ("a terrible film", "a great film"),
        ("the film is terrible", "the film is great"),
        ("a bad movie", "a good movie"),
        ("it was terrible", "it was great"),
        ("I hated this movie", "I loved this movie"),
        ("negative", "positive"),
    ),
    "lm": (
        (" terrible", " great"),
        (" bad", " good"),
        (" awful", " wonderful"),
        (" negative", " positive"),
    ),
    "mlm": (
        ("terrible", "great"),
        ("bad", "good"),
        ("awful", "wonderful"),
        ("negative", "positive"),
    ),
}


@dataclass(frozen=True, slots=True)
class LabelScore:
    """One candidate's zero-shot figures."""

    words: tuple[str, ...]
    accuracy: float  # on the training sample
    loss: float
    eval_accuracy: float | None  # on --eval, where given
    eval_loss: float | None
    is_default: bool  # what train uses without --label-words

    @property
    def flag(self) -> str:
        return "--label-words '" + "|".join(self.words) + "'"

    def to_json(self) -> dict[str, Any]:
        return {
            "words": list(self.words),
            "accuracy": self.accuracy,
            "loss": self.loss,
            "eval_accuracy": self.eval_accuracy,
            "eval_loss": self.eval_loss,
            "default": self.is_default,
        }


@dataclass(frozen=True, slots=True)
class LabelsResult:
    model: str
    data: str
    scorer: str
    labels: tuple[str, ...]
    sample: int  # training examples each candidate was scored on
    eval: str
    eval_examples: int
    scores: tuple[LabelScore, ...]  # best first: accuracy on the sample, then loss
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "data": self.data,
            "scorer": self.scorer,
            "labels": list(self.labels),
            "sample": self.sample,
            "eval": self.eval,
            "eval_examples": self.eval_examples,
            "scores": [c.to_json() for c in self.scores],
            "best": list(self.scores[0].words),
            "seconds": self.seconds,
        }


def parse_candidates(text: str, labels: int) -> list[tuple[str, ...]]:
    """``--labels-candidates``: sets separated by ``;``, each set's words by ``|`` in label
    order (``a bad film|a good film;negative|positive``)."""
    out: list[tuple[str, ...]] = []
    for part in text.split(";"):
        if not part.strip():
            continue
        words = tuple(part.split("|"))
        if len(words) != labels or any(not w.strip() for w in words):
            raise ConfigError(
                f"--labels-candidates: {part!r} has {len(words)} word{'s' * (len(words) != 1)}; each set needs one "
                f"non-empty word for each of the {labels} labels, separated by |, and sets are "
                "separated by ; (e.g. 'a bad film|a good film;negative|positive')"
            )
        out.append(words)
    if not out:
        raise ConfigError("--labels-candidates: give at least one set of label words")
    return out


def bench_labels(s: BenchSettings) -> LabelsResult:
    """Score each candidate set of label words on the base model (see the module's docstring)."""
    from seedswarm.daemon.node.startup import plan_run, resolve_device
    from seedswarm.daemon.settings import RunSettings
    from seedswarm.model.data import read
    from seedswarm.model.errors import ModelError
    from seedswarm.model.evaluation import evaluate
    from seedswarm.model.loading import load
    from seedswarm.model.tasks import TaskModel, prepare

    model = "minilm" if s.model == "opt-125m-config" else s.model
    t0 = time.perf_counter()
    plan = plan_run(RunSettings(model=model, data=s.data, task="classify"))
    task = plan.task
    if task is None or task.kind != "classify" or task.scorer == "head":
        raise ConfigError(
            "bench labels scores the label words of a classification task: give --data with a "
            "label column and a model whose scorer reads words (lm, mlm or embed)"
        )
    if s.labels_candidates:
        candidates = parse_candidates(s.labels_candidates, len(task.labels))
    elif task.labels == ("negative", "positive"):
        candidates = [task.label_words]
        candidates += [c for c in SENTIMENT_CANDIDATES[task.scorer] if c != task.label_words]
    else:
        raise ConfigError(
            f"--labels-candidates: no built-in candidates for labels {', '.join(task.labels)}; "
            "give sets of label words, e.g. --labels-candidates '" + "|".join(task.labels) + ";...'"
        )
    device = resolve_device(s.device)
    loaded = load(plan.model_ref)
    loaded.model.to(device)
    examples = prepare(plan.raw, task, loaded.tokenizer)
    n = min(s.labels_sample, len(examples))
    sample = examples.subset(sorted(random.Random(0).sample(range(len(examples)), n)))
    held = prepare(read(s.eval), task, loaded.tokenizer) if s.eval else None
    scores = []
    for words in candidates:
        spec = replace(task, label_words=words)
        try:
            tm = TaskModel(loaded, spec, init_seed=0)
        except ModelError as e:
            raise ConfigError(f"--labels-candidates {'|'.join(words)!r}: {e}") from e
        on_sample = evaluate(tm, sample, batch_size=s.labels_batch)
        on_held = evaluate(tm, held, batch_size=s.labels_batch) if held is not None else None
        scores.append(
            LabelScore(
                words=words,
                accuracy=on_sample["accuracy"],
                loss=on_sample["loss"],
                eval_accuracy=None if on_held is None else on_held["accuracy"],
                eval_loss=None if on_held is None else on_held["loss"],
                is_default=words == task.label_words,
            )
        )
    scores.sort(key=lambda c: (-c.accuracy, c.loss))
    return LabelsResult(
        model=model,
        data=s.data,
        scorer=task.scorer,
        labels=task.labels,
        sample=n,
        eval=s.eval,
        eval_examples=0 if held is None else len(held),
        scores=tuple(scores),
        seconds=time.perf_counter() - t0,
    )


def print_labels(r: LabelsResult) -> str:
    held = bool(r.eval)
    headers = ["label words", f"sample ({r.sample}): accuracy", "loss"]
    if held:
        headers += [f"eval ({r.eval_examples}): accuracy", "loss"]
    rows = []
    for c in r.scores:
        row = [
            " | ".join(c.words) + (" (default)" if c.is_default else ""),
            f"{c.accuracy:.1%}",
            f"{c.loss:.3f}",
        ]
        if held:
            assert c.eval_accuracy is not None
            assert c.eval_loss is not None
            row += [f"{c.eval_accuracy:.1%}", f"{c.eval_loss:.3f}"]
        rows.append(row)
    best = r.scores[0]
    lines = [
        f"bench labels: {r.model}, {r.scorer} scorer, labels {', '.join(r.labels)}; the base "
        f"model, no training; {r.sample} training examples (seeded sample) of {r.data}"
        + (f", and {r.eval}" if held else ""),
        "",
        table(headers, rows),
        "",
        f"best on the training sample: {best.flag}" + (" (the default)" if best.is_default else ""),
        "choose on the training sample, and report the held-out figures of that choice only",
    ]
    return "\n".join(lines)
