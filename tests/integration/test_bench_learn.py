"""``seedswarm bench learn`` on the tiny model with a budget of seconds, as a user runs it.

The figures themselves (MiniLM on SST-2, ten minutes an arm) are in the README and in
docs/PROTOCOL.md; this checks that every kind of arm runs, that the table and the
JSON hang together and that a PNG is written. It never asserts on speed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ..helpers import cli, cli_json

pytestmark = [pytest.mark.slow]

TINY = ("--model", "tiny", "--budget-s", "3", "--eval-every-s", "1.5", "--eval-limit", "32",
        "--learn-batch", "8", "--target", "5.45")  # fmt: skip


def test_bench_learn_in_process_arms_and_first_order_reference(tmp_path: Path) -> None:
    plot = tmp_path / "learn.png"
    out = cli_json(
        "bench", "learn", *TINY, "--arms", "spsa,fzoo4,fzoo4-lowrank,spsa-2t,adamw",
        "--plot", str(plot), "--apply-model", "tiny", "--apply-records", "16",
        "--repeats", "1",
    )  # fmt: skip
    assert out["bench"] == "learn"
    assert out["metric"] == "loss"
    names = [a["arm"] for a in out["arms"]]
    assert names == ["spsa", "fzoo4", "fzoo4-lowrank", "spsa-2t", "adamw"]
    by = {a["arm"]: a for a in out["arms"]}
    for a in out["arms"]:
        start, last = a["start"], a["final"]
        assert start["seconds"] == 0.0
        assert last["seconds"] >= 3.0 or a["arm"] == "adamw" or last["forwards"] > 0
        assert last["loss"] < start["loss"], a["arm"]  # every arm learns something
        assert [p["seconds"] for p in a["curve"]] == sorted(p["seconds"] for p in a["curve"])
    # forward passes per record: 2 for SPSA, (K + 1) / K for FZOO, 1 per step for AdamW
    assert by["spsa"]["final"]["forwards"] == 2 * by["spsa"]["final"]["records"]
    fz = by["fzoo4"]["final"]
    assert fz["forwards"] * 4 == fz["records"] * 5
    assert by["adamw"]["final"]["records"] == 0
    assert by["spsa-2t"]["settings"]["threads"] == 2
    assert by["fzoo4-lowrank"]["settings"]["direction"] == "lowrank"
    assert by["spsa"]["forwards_vs_spsa"] in (None, 1.0)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    apply = out["apply"]
    assert set(apply["records_per_s"]) == {"dense", "lowrank"}
    assert apply["params_in_matrices"] > 0


@pytest.mark.broker
def test_bench_learn_two_node_arm_runs_real_nodes(tmp_path: Path) -> None:
    out = cli_json(
        "bench", "learn", *TINY, "--arms", "spsa,spsa-2n", "--plot", "", timeout=600
    )  # fmt: skip
    swarm = out["arms"][1]
    assert swarm["arm"] == "spsa-2n"
    assert swarm["startup_s"] > 0
    last = swarm["final"]
    assert last["records"] > 0
    assert last["loss"] < swarm["start"]["loss"]
    assert swarm["polls"] > 0


def test_bench_learn_rejects_unknown_arms() -> None:
    bad = cli("bench", "learn", "--model", "tiny", "--arms", "fzoo8-fast")
    assert bad.returncode == 2
    assert "unknown modifier 'fast'" in bad.stderr
    bad = cli("bench", "learn", "--model", "tiny", "--arms", "sgd")
    assert bad.returncode == 2
    assert "an arm starts with spsa, fzooK or adamw" in bad.stderr
