"""A prompt -> completion run in a two-node swarm: two real ``seedswarm node`` processes
through the embedded broker (amqtt, as a process of its own), then ``replay``, ``export`` and
``verify`` as a user runs them (issue 21).

What it shows: ``--task auto`` makes the run a completion task; both nodes evaluate at the
same record counts, with exact match and F1 in /status and evals.jsonl; the held-out
completion loss falls; the replicas agree (one fingerprint); a shuffled replay of either
node's log gives that fingerprint; the curves are TensorBoard event files TensorBoard's own
reader reads back, outside seedswarm; ``seedswarm export`` of one node's directory is a causal
LM whose card carries the last evaluation, and ``seedswarm verify`` checks it against the
other node's log. The chat-format and LoRA runs are in
tests/unit/daemon/test_completion_nodes.py (two nodes in one process, memory://).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..helpers import (
    Broker,
    NodeProc,
    cli,
    cli_json,
    converged,
    running,
    started_broker,
    wait_until,
)
from ..qa_data import write_qa
from .test_export_cli import read_curves

pytestmark = [pytest.mark.slow, pytest.mark.broker]

STEPS = 150  # per node


@pytest.fixture
def amqtt(tmp_path: Path) -> Iterator[Broker]:
    yield from started_broker("amqtt", tmp_path)


def _evaluated(nodes: list[NodeProc], records: int) -> bool:
    return all((n.status().get("eval") or {}).get("records") == records for n in nodes)


def test_a_prompt_completion_swarm_learns_agrees_replays_exports_and_verifies(
    amqtt: Broker, tmp_path: Path
) -> None:
    data = write_qa(tmp_path / "qa.jsonl", 400, chat=False, seed=0)
    held = write_qa(tmp_path / "held.jsonl", 12, chat=False, seed=9)
    run = ("--name", "qa", "--data", str(data), "--batch-size", "16")  # the tiny model's presets
    evals = ("--eval", str(held), "--eval-every", "100", "--frame-records", "32")
    nodes = [
        NodeProc(f"n{i}", tmp_path, amqtt.url, *run, *evals, "--shard", f"{i}/2", steps=STEPS)
        for i in range(2)
    ]
    with running(*nodes):
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_ready()
        expect = {n.name: STEPS for n in nodes}
        wait_until(lambda: converged(nodes, expect), timeout=600, what="the nodes to converge")
        wait_until(lambda: _evaluated(nodes, 2 * STEPS), timeout=120, what="the last evals")
        statuses = [n.status(fresh=True) for n in nodes]
        for n in nodes:
            assert n.stop() == 0, n.tail()
    fingerprint = statuses[0]["fingerprint"]
    assert statuses[1]["fingerprint"] == fingerprint
    manifest = json.loads((nodes[0].data_dir / "manifest.json").read_text())
    assert (manifest["task"]["kind"], manifest["task"]["chat"]) == ("completion", False)
    for n, st in zip(nodes, statuses, strict=True):
        lines = (n.data_dir / "evals.jsonl").read_text().splitlines()
        points = [json.loads(line) for line in lines]
        assert [p["records"] for p in points] == [0, 100, 200, 300]
        assert points[-1]["loss"] < points[0]["loss"] - 0.3, [p["loss"] for p in points]
        last = points[-1]
        assert st["eval"]["loss"] == last["loss"]
        assert (st["eval"]["exact_match"], st["eval"]["f1"]) == (last["exact_match"], last["f1"])
    curves = read_curves(nodes[0].data_dir / "tensorboard", tmp_path)
    assert [s for s, _ in curves["train/loss"]] == list(range(1, STEPS + 1))
    assert [s for s, _ in curves["eval/loss"]] == [0, 100, 200, 300]
    assert {"eval/exact_match", "eval/f1"} <= set(curves)

    replayed = cli_json("replay", str(nodes[1].data_dir), "--order", "shuffled")
    assert replayed["fingerprint"] == fingerprint
    assert replayed["records"] == 2 * STEPS
    exp = tmp_path / "exp"
    out = cli_json("export", str(nodes[0].data_dir), "--out", str(exp))
    assert [w["kind"] for w in out["written"]] == ["causal_lm"]
    assert out["fingerprint"] == fingerprint
    assert out["evals_from"] == "the run's evals.jsonl"
    assert out["evals"]["loss"] == statuses[0]["eval"]["loss"]
    card = (exp / "README.md").read_text()
    assert f"| loss | {statuses[0]['eval']['loss']:.4f} |" in card
    assert f"seedswarm verify {exp} --log {nodes[0].data_dir}" in card
    v = cli("verify", str(exp), "--log", str(nodes[1].data_dir))
    assert v.returncode == 0, v.stdout + v.stderr
    assert v.stdout.startswith("yes: exactly what the log makes: ")
