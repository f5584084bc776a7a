"""Prompt -> completion tasks: tokens, batches, the loss on the completion only, greedy answers
and their scores, and runs of two replicas that learn, agree, and replay in any order."""

from __future__ import annotations

import random

import pytest
import torch

from seedswarm.model.completion import (
    IGNORE,
    MAX_ANSWER_TOKENS,
    Completion,
    exact_match,
    f1,
    fit,
    normalize_answer,
)
from seedswarm.model.data import RawData
from seedswarm.model.engine import Engine
from seedswarm.model.errors import DataError, ModelError
from seedswarm.model.hyper import Hyper
from seedswarm.model.loading import Loaded, load
from seedswarm.model.replica import Replica
from seedswarm.model.tasks import Examples, TaskModel, default_task, prepare
from seedswarm.protocol.manifest import TaskSpec
from seedswarm.protocol.records import Record

from .helpers import CHAT_TEMPLATE, colour_data, tiny_with_chat_template

TASK = TaskSpec(kind="completion", seq_len=64)
CHAT = TaskSpec(kind="completion", seq_len=64, chat=True)


@pytest.fixture
def tiny() -> Loaded:
    return tiny_with_chat_template()


# -- tokens ------------------------------------------------------------------------------------


def test_default_task_of_completion_data() -> None:
    raw = colour_data(3)
    assert default_task(raw, scorer="lm", seq_len=48) == TaskSpec(kind="completion", seq_len=48)
    spec = default_task(raw, scorer="lm", seq_len=48, template="Q: {prompt}\nA:")
    assert spec.template == "Q: {prompt}\nA:"
    chats = colour_data(3, chat=True)
    assert default_task(chats, scorer="lm", seq_len=48) == TaskSpec(
        kind="completion", seq_len=48, chat=True
    )


def test_plain_rows_are_the_templated_prompt_then_the_completion_and_eos(tiny: Loaded) -> None:
    tok = tiny.tokenizer
    raw = RawData((), None, prompts=("sky?",), completions=(" blue ",))
    spec = TaskSpec(kind="completion", seq_len=64, template="Q: {prompt}\nA:")
    (ex,) = prepare(raw, spec, tok).completions
    assert ex.prompt == "Q: sky?\nA:"
    assert ex.prompt_ids == tuple(tok("Q: sky?\nA:")["input_ids"])
    assert ex.completion_ids == (*tok(" blue ", add_special_tokens=False)["input_ids"], 257)
    assert tok.eos_token_id == 257
    assert ex.answer == "blue"
    assert ex.chat is None
    assert ex.is_short
    # without a template the prompt is given as it is
    (bare,) = prepare(raw, TASK, tok).completions
    assert bare.prompt == "sky?"


def test_chat_rows_are_rendered_by_the_tokenizer_template(tiny: Loaded) -> None:
    tok = tiny.tokenizer
    chat = (("system", "Be brief."), ("user", "colour of snow?"), ("assistant", "white"))
    (ex,) = prepare(RawData((), None, chats=(chat,)), CHAT, tok).completions
    assert ex.prompt == "<|system|>Be brief.\n<|user|>colour of snow?\n<|assistant|>"
    assert ex.prompt == tok.apply_chat_template(
        [{"role": r, "content": c} for r, c in chat[:2]], tokenize=False, add_generation_prompt=True
    )
    # the answer, the end of the turn (the eos token), and the newline the template writes
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    want = tok("white", add_special_tokens=False)["input_ids"] + [tok.eos_token_id, *newline]
    assert list(ex.completion_ids) == want
    assert ex.answer == "white"
    assert ex.chat == chat[:2]


def test_chat_errors(tiny: Loaded) -> None:
    chat = (("user", "q"), ("assistant", "a"))
    raw = RawData((), None, chats=(chat,))
    bare = load("tiny")  # the byte tokenizer has no chat template of its own
    with pytest.raises(DataError, match="no chat template"):
        prepare(raw, CHAT, bare.tokenizer)
    # the task says what the data is: chats for a chat task, pairs otherwise
    with pytest.raises(DataError, match="this data is chats"):
        prepare(raw, TASK, tiny.tokenizer)
    with pytest.raises(DataError, match="a chat task needs chat data"):
        prepare(colour_data(2), CHAT, tiny.tokenizer)
    # a template that puts something before the generation prompt's text
    tiny.tokenizer.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}>>{% endif %}"
    )
    with pytest.raises(DataError, match=r"prompt .* followed by the answer"):
        prepare(raw, CHAT, tiny.tokenizer)
    tiny.tokenizer.chat_template = CHAT_TEMPLATE


def test_data_and_task_must_fit(tiny: Loaded) -> None:
    with pytest.raises(DataError, match="needs prompt -> completion data"):
        prepare(RawData(("text",), None), TASK, tiny.tokenizer)
    with pytest.raises(DataError, match="this data is prompt -> completion"):
        prepare(colour_data(2), TaskSpec(kind="causal_lm", seq_len=8), tiny.tokenizer)
    with pytest.raises(DataError, match="the prompt has no tokens"):
        prepare(RawData((), None, prompts=("",), completions=("x",)), TASK, tiny.tokenizer)


# -- batches and the loss ----------------------------------------------------------------------


def _example(prompt: int, completion: int) -> Completion:
    return Completion("p", tuple(range(1, prompt + 1)), tuple(range(101, 101 + completion)), "a")


def test_fit_keeps_the_completion_start_and_the_prompt_end() -> None:
    assert fit(_example(3, 2), 8) == ([1, 2, 3, 101, 102], 3)
    assert fit(_example(10, 3), 8) == ([6, 7, 8, 9, 10, 101, 102, 103], 5)
    # a completion longer than the window keeps its first seq_len - 1 tokens and one of prompt
    assert fit(_example(4, 20), 8) == ([4, *range(101, 108)], 1)


def test_batch_labels_only_the_completion(tiny: Loaded) -> None:
    tm = TaskModel(tiny, TaskSpec(kind="completion", seq_len=8), init_seed=0)
    batch = tm.make_batch(Examples(completions=(_example(3, 2), _example(10, 3))))
    pad = tiny.tokenizer.pad_token_id
    assert batch["input_ids"].tolist() == [
        [1, 2, 3, 101, 102, pad, pad, pad],
        [6, 7, 8, 9, 10, 101, 102, 103],
    ]
    assert batch["attention_mask"].tolist() == [[1] * 5 + [0] * 3, [1] * 8]
    x = IGNORE
    assert batch["labels"].tolist() == [
        [x, x, x, 101, 102, x, x, x],
        [x, x, x, x, x, 101, 102, 103],
    ]


def test_loss_is_transformers_loss_over_the_completion_tokens(tiny: Loaded) -> None:
    tm = TaskModel(tiny, TASK, init_seed=0)
    ex = prepare(colour_data(6), TASK, tiny.tokenizer)
    batch = tm.make_batch(ex)
    want = tiny.model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=batch["labels"],
    ).loss
    assert tm.loss(batch) == pytest.approx(float(want), rel=1e-5)
    total, tokens = tm.completion_loss_sum(batch)
    assert tokens == sum(len(c.completion_ids) for c in ex.completions)
    assert total / tokens == pytest.approx(tm.loss(batch), rel=1e-6)


def test_a_completion_task_needs_a_causal_lm(bert_mlm_dir: object) -> None:
    mlm = load(str(bert_mlm_dir), kind="mlm")
    with pytest.raises(ModelError, match="completion task needs a causal LM"):
        TaskModel(mlm, TASK, init_seed=0)


# -- greedy answers and their scores -----------------------------------------------------------


def _greedy_by_hand(model: torch.nn.Module, tok: object, ex: Completion, seq_len: int) -> str:
    """The reference: argmax over the whole sequence each step, no cache, no generate()."""
    ids = list(ex.prompt_ids)
    new: list[int] = []
    while len(ids) < seq_len and len(new) < 50:
        nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        if nxt == 257:  # eos
            break
        new.append(nxt)
        ids.append(nxt)
    text: str = tok.decode(new, skip_special_tokens=True)  # type: ignore[attr-defined]
    return text.split("\n", 1)[0].strip()


def test_greedy_answers_are_argmax_decoding(tiny: Loaded) -> None:
    tm = TaskModel(tiny, TASK, init_seed=0)
    ex = prepare(colour_data(3), TASK, tiny.tokenizer)
    with torch.no_grad():
        want = [_greedy_by_hand(tiny.model, tiny.tokenizer, c, 64) for c in ex.completions]
    assert tm.answers(ex) == want
    assert all(isinstance(a, str) for a in want)


@pytest.mark.parametrize(
    ("pred", "ref", "em", "f1_"),
    [
        ("Paris", "paris", 1.0, 1.0),
        ("the Eiffel Tower.", "Eiffel tower", 1.0, 1.0),
        ("in Paris, France", "Paris", 0.0, 0.5),
        ("blue sky", "sky blue", 0.0, 1.0),
        ("", "", 1.0, 1.0),
        ("", "x", 0.0, 0.0),
        ("red", "blue", 0.0, 0.0),
    ],
)
def test_exact_match_and_f1_are_squads(pred: str, ref: str, em: float, f1_: float) -> None:
    assert exact_match(pred, ref) == em
    assert f1(pred, ref) == pytest.approx(f1_)


def test_normalize_answer() -> None:
    assert normalize_answer("  The  Quick, brown fox!  ") == "quick brown fox"
    assert normalize_answer("An apple a day") == "apple day"


def test_evaluate_reports_exact_match_and_f1_for_short_answers(tiny: Loaded) -> None:
    e = Engine.build("t", "tiny", TASK, Hyper(lr=1e-3, unit_exp=-12), loaded=tiny)
    ex = prepare(colour_data(5), TASK, tiny.tokenizer)
    out = e.evaluate(ex, batch_size=2)
    assert set(out) == {"loss", "examples", "tokens", "exact_match", "f1"}
    answers = e.task_model.answers(ex)
    refs = [c.answer for c in ex.completions]
    assert out["exact_match"] == sum(map(exact_match, answers, refs)) / 5
    assert out["f1"] == sum(map(f1, answers, refs)) / 5
    # the loss is per token, whatever the batching
    assert e.evaluate(ex, batch_size=5, generate=False)["loss"] == pytest.approx(out["loss"])
    assert out["tokens"] == sum(len(c.completion_ids) for c in ex.completions)
    # a long answer: no generation, unless asked for
    long_answer = " ".join(["word"] * MAX_ANSWER_TOKENS)
    raw = RawData((), None, prompts=("q",), completions=(long_answer,))
    long_ex = prepare(raw, TASK, tiny.tokenizer)
    assert not long_ex.completions[0].is_short
    assert "exact_match" not in e.evaluate(long_ex)
    assert "exact_match" in e.evaluate(long_ex, generate=True)


# -- runs: two replicas learn, agree, and any order of their records replays the same ---------

HYPER = Hyper(lr=1e-3, unit_exp=-12)
STEPS = 150  # per node
BATCH = 16


def _two_node_run(chat: bool) -> None:
    raw = colour_data(400, chat=chat)
    task = CHAT if chat else TASK
    loaded = tiny_with_chat_template()
    first = Engine.build("qa", "tiny", task, HYPER, loaded=loaded)
    second = Engine.open(first.manifest)
    second.task_model.tokenizer.chat_template = CHAT_TEMPLATE
    examples = prepare(raw, task, loaded.tokenizer)
    held, train = examples.subset(range(336, 400)), examples.subset(range(336))
    shards = [train.subset(range(0, 336, 2)), train.subset(range(1, 336, 2))]
    replicas = [
        Replica(e, node, shard, batch_size=BATCH)
        for e, node, shard in zip((first, second), ("n0", "n1"), shards, strict=True)
    ]
    before = first.evaluate(held, generate=False)["loss"]
    log: list[Record] = []
    pending: list[list[Record]] = [[], []]
    for clock in range(STEPS):
        for i, r in enumerate(replicas):
            out = r.step(pending[i])
            pending[i] = []
            own = [Record(r.node, out.first_seq + k, q, clock) for k, q in enumerate(out.qs)]
            log += own
            pending[1 - i] += own
    for r, rest in zip(replicas, pending, strict=True):
        r.apply(rest)
    assert replicas[0].vv == replicas[1].vv == {"n0": STEPS, "n1": STEPS}
    assert replicas[0].fingerprint() == replicas[1].fingerprint()
    after = first.evaluate(held, generate=False)["loss"]
    assert before - after > 0.5, f"held-out completion loss {before:.3f} -> {after:.3f}"
    assert sum(1 for rec in log if rec.q) > len(log) // 2  # the bytes carry information
    # a third replica applies the whole log in a shuffled order, in odd batches
    third = Engine.open(first.manifest)
    shuffled = log[:]
    random.Random(7).shuffle(shuffled)
    third.apply(shuffled, batch=37)
    assert third.fingerprint() == first.fingerprint()
    assert third.evaluate(held, generate=False)["loss"] == after


@pytest.mark.slow
def test_prompt_completion_run_learns_agrees_and_replays_in_any_order() -> None:
    _two_node_run(chat=False)


@pytest.mark.slow
def test_chat_run_learns_agrees_and_replays_in_any_order() -> None:
    _two_node_run(chat=True)
