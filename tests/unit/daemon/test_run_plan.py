"""Run planning (daemon/node/startup.py plan_run): the task the data implies, and the adapter
settings that reach the engine's Hyper. No model is loaded: planning reads the data only."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from seedswarm.daemon.errors import ConfigError
from seedswarm.daemon.node.startup import plan_run
from seedswarm.daemon.settings import RunSettings

from ...helpers import cli


def _rows(path: Path, rows: list[dict[str, object]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def pairs(tmp_path: Path) -> str:
    return _rows(tmp_path / "qa.jsonl", [{"prompt": "2+2=", "completion": " 4"}] * 3)


@pytest.fixture
def chats(tmp_path: Path) -> str:
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    return _rows(tmp_path / "chat.jsonl", [{"messages": chat}] * 3)


def test_auto_picks_the_completion_task_for_pairs_and_chats(pairs: str, chats: str) -> None:
    plan = plan_run(RunSettings(data=pairs, template="Q: {prompt}\nA:"))
    assert plan.task is not None
    assert (plan.task.kind, plan.task.chat, plan.task.template) == (
        "completion",
        False,
        "Q: {prompt}\nA:",
    )
    plan = plan_run(RunSettings(data=chats, task="completion"))
    assert plan.task is not None
    assert (plan.task.kind, plan.task.chat, plan.task.template) == ("completion", True, "")
    # text and labelled text keep their tasks
    assert plan_run(RunSettings()).task.kind == "causal_lm"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("task", "data", "says"),
    [
        ("completion", "builtin:patterns", "--task completion needs rows with 'prompt'"),
        ("causal_lm", "pairs", "this data has prompt -> completion rows: use --task completion"),
        ("classify", "pairs", "--task classify needs data with a 'label' column"),
    ],
)
def test_a_task_the_data_cannot_feed_is_one_line(
    task: str, data: str, says: str, pairs: str
) -> None:
    with pytest.raises(ConfigError, match=says.replace("(", r"\(")):
        plan_run(RunSettings(data=pairs if data == "pairs" else data, task=task))


def test_adapter_settings_reach_the_hyper_parameters(pairs: str) -> None:
    plan = plan_run(
        RunSettings(data=pairs, adapter="lora", lora_rank=4, lora_alpha=8.0, lora_targets="c_attn")
    )
    assert plan.hyper is not None
    h = plan.hyper
    assert (h.adapter, h.lora_rank, h.lora_alpha, h.lora_targets) == ("lora", 4, 8.0, ("c_attn",))
    assert h.lr == 3e-2  # the tiny model's adapter preset
    assert plan_run(RunSettings(data=pairs, adapter="lora", lr=1e-3)).hyper.lr == 1e-3  # type: ignore[union-attr]
    dense = plan_run(RunSettings(data=pairs)).hyper
    assert dense is not None
    assert (dense.adapter, dense.lora_targets, dense.lr) == ("", (), 1e-3)  # completion preset
    text = plan_run(RunSettings()).hyper
    assert text is not None
    assert text.lr == 3e-3  # the tiny model's text preset


def test_an_adapter_on_a_pretrained_model_trains_all_its_tensors(pairs: str) -> None:
    """FZOO's preset trains a subset of the base (biases and norms); with an adapter the
    adapter is what trains, all of it unless --trainable says otherwise."""
    dense = plan_run(RunSettings(data=pairs, model="minilm")).hyper
    lora = plan_run(RunSettings(data=pairs, model="minilm", adapter="lora")).hyper
    assert dense is not None
    assert lora is not None
    assert dense.trainable == r"bias|LayerNorm|layer_norm"
    assert (lora.trainable, lora.estimator) == ("", "fzoo")
    picked = plan_run(RunSettings(data=pairs, adapter="lora", trainable="lora_B")).hyper
    assert picked is not None
    assert picked.trainable == "lora_B"


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--lora-targets", "q_proj"], "--lora-targets is for --adapter lora"),
        (["--adapter", "lora", "--lora-targets", "q proj"], "'q proj' is not a module name"),
        (["--adapter", "lora", "--lora-rank", "0"], r"--lora-rank: 0 must be in \[1, 1024\]"),
        (["--adapter", "dora"], "--adapter: .dora. is not one of: none, lora"),
    ],
)
def test_bad_adapter_settings_are_one_line(flags: list[str], says: str, tmp_path: Path) -> None:
    """As the command line says them, before any model loads."""
    proc = cli("train", "--out", str(tmp_path / "never"), *flags)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert re.search(says, proc.stderr), proc.stderr
    assert not (tmp_path / "never").exists()


def _schedule(run: RunSettings, **plan: int) -> tuple[str, int]:
    hyper = plan_run(run, **plan).hyper
    assert hyper is not None
    return hyper.schedule, hyper.budget


def test_the_decay_budget_is_given_or_planned_from_the_steps_a_command_plans() -> None:
    assert _schedule(RunSettings()) == ("constant", 0)  # auto without a budget
    assert _schedule(RunSettings(budget=5000)) == ("decay", 5000)  # auto with one
    assert _schedule(RunSettings(schedule="constant", budget=5000)) == ("constant", 0)
    assert _schedule(RunSettings(schedule="decay", budget=700), planned_steps=9) == ("decay", 700)
    # train / swarm --steps: nodes x steps x records a step (SPSA 1, FZOO K)
    assert _schedule(RunSettings(schedule="decay"), planned_steps=300) == ("decay", 300)
    assert _schedule(RunSettings(schedule="decay"), planned_steps=300, nodes=4) == ("decay", 1200)
    fzoo = RunSettings(schedule="decay", estimator="fzoo", directions=4)
    assert _schedule(fzoo, planned_steps=100, nodes=3) == ("decay", 1200)
    # auto plans a decay for FZOO (normalised steps), not for SPSA, and only what is planned
    assert _schedule(RunSettings(), planned_steps=300) == ("constant", 0)  # tiny: SPSA
    auto_fzoo = RunSettings(estimator="fzoo", directions=4)
    assert _schedule(auto_fzoo, planned_steps=100, nodes=3) == ("decay", 1200)
    assert _schedule(auto_fzoo) == ("constant", 0)  # a node: nothing plans its records
    assert _schedule(auto_fzoo, planned_steps=-1, nodes=3) == ("constant", 0)  # swarm, no end
    constant = RunSettings(estimator="fzoo", directions=4, schedule="constant")
    assert _schedule(constant, planned_steps=100) == ("constant", 0)


def test_a_decay_with_nothing_to_plan_from_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="--schedule decay needs --budget RECORDS"):
        plan_run(RunSettings(schedule="decay"))
    with pytest.raises(ConfigError, match="--steps N with seedswarm train or swarm"):
        plan_run(RunSettings(schedule="decay"), planned_steps=-1)


def test_train_plans_the_decay_from_its_steps(tmp_path: Path) -> None:
    out = tmp_path / "run"
    got = cli("train", "--schedule", "decay", "--steps", "3", "--out", str(out), check=True)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert (manifest["schedule"], manifest["budget"]) == ("decay", 3), got.stderr


def test_the_batch_size_follows_the_task_and_estimator_unless_given(tmp_path: Path) -> None:
    """--batch-size 0 (the default): 64 examples a step for classification trained by FZOO,
    whose one-label examples make small batches noisy (docs/LEARNING.md), 16 otherwise."""
    data = tmp_path / "labelled.tsv"
    data.write_text("sentence\tlabel\n" + "a fine day\t1\na dull day\t0\n" * 40, encoding="utf-8")
    fzoo = ["--estimator", "fzoo", "--directions", "2"]
    for flags, want in (
        (fzoo, 64),
        ([], 16),  # the tiny model's SPSA
        ([*fzoo, "--batch-size", "5"], 5),
        (["--data", "builtin:patterns", *fzoo], 16),  # text: each chunk carries seq_len losses
    ):
        out = tmp_path / f"run-{len(flags)}-{want}"
        got = cli("train", "--data", str(data), "--steps", "1", "--out", str(out), "--json",
                  *flags, check=True)  # fmt: skip
        assert json.loads(got.stdout.strip().splitlines()[-1])["batch_size"] == want, flags


def test_a_growing_batch_is_the_hosts_choice_and_its_records_replay(tmp_path: Path) -> None:
    """--batch-growth 4 on a decayed FZOO run: the batch grows from 64 towards 256 as the rate
    falls (train says so), and the log replays to the fingerprint train printed."""
    data = tmp_path / "labelled.tsv"
    data.write_text("sentence\tlabel\n" + "a fine day\t1\na dull day\t0\n" * 40, encoding="utf-8")
    out = tmp_path / "run"
    got = cli("train", "--data", str(data), "--estimator", "fzoo", "--directions", "2",
              "--steps", "3", "--batch-growth", "4", "--out", str(out), check=True)  # fmt: skip
    assert "steps/s of 64-256 examples" in got.stderr + got.stdout, got.stderr
    fingerprint = got.stdout.strip().splitlines()[-1].removeprefix("fingerprint ")
    replayed = cli("replay", str(out), "--json", check=True)
    assert json.loads(replayed.stdout.strip().splitlines()[-1])["fingerprint"] == fingerprint
