"""The README's main job: ``seedswarm swarm --nodes 3`` with the built-in defaults.

With ``--steps N`` the swarm ends by itself once every node took N steps and applied every
record, and ``--json`` prints each node's final /status. Run as a real subprocess with the
embedded amqtt broker, exactly as a user would.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..helpers import cli, cli_json

pytestmark = [pytest.mark.slow, pytest.mark.broker]


@pytest.mark.parametrize("signed", [False, True], ids=["open", "signed"])
def test_swarm_quickstart_ends_in_agreement(tmp_path: Path, signed: bool) -> None:
    args = ["swarm", "--nodes", "3", "--steps", "30", "--dir", str(tmp_path / "swarm"), "--json"]
    if signed:
        args.append("--signed")
    proc = cli(*args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ok"] is True
    assert report["agree"] is True
    nodes = report["nodes"]
    assert [n["node"] for n in nodes] == ["n0", "n1", "n2"]
    for n in nodes:
        assert n["version_vector"] == {"n0": 30, "n1": 30, "n2": 30}
        assert n["fingerprint"] == report["fingerprint"]
        assert n["mode"] == ("signed" if signed else "open")
        assert n["loss"]["recent"] < n["loss"]["first"]
        assert n["exit_code"] == 0
    replayed = cli_json("replay", nodes[1]["data_dir"])
    assert replayed["fingerprint"] == report["fingerprint"]
