"""Three real node processes through a real broker (Mosquitto and the embedded amqtt).

What this proves (issue: the node daemon): after the nodes stop publishing they all report
the same version vector and the same weight fingerprint; every record any node wrote is in
every node's log; ``seedswarm replay`` of any node's log rebuilds the same fingerprint; a node
restarted gracefully resumes from its snapshot and rejoins with the same fingerprint.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ..helpers import Broker, NodeProc, cli, cli_json, converged, running, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.broker]

STEPS = 25


def _log_digest(rows: list[tuple[int, str, int, int]]) -> str:
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def test_three_nodes_agree_and_replay(broker: Broker, tmp_path: Path) -> None:
    nodes = [
        NodeProc(f"n{i}", tmp_path, broker.url, "--shard", f"{i}/3", steps=STEPS) for i in range(3)
    ]
    with running(*nodes):
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_ready()
        expect = {n.name: STEPS for n in nodes}
        wait_until(lambda: converged(nodes, expect), timeout=300, what="the nodes to converge")
        statuses = [n.status(fresh=True) for n in nodes]
        prints = {st["fingerprint"] for st in statuses}
        assert len(prints) == 1, prints
        assert {st["vv_digest"] for st in statuses} == {statuses[0]["vv_digest"]}
        assert all(not st["fingerprint_stale"] for st in statuses)
        assert all(st["dropped_total"] == 0 for st in statuses), [st["dropped"] for st in statuses]
        # every record any node wrote is in every node's log, in the same total order
        logs = [n.full_log() for n in nodes]
        assert all(len(log) == 3 * STEPS for log in logs)
        assert len({_log_digest(log) for log in logs}) == 1
        assert {(node, seq) for _, node, seq, _ in logs[0]} == {
            (n.name, s) for n in nodes for s in range(STEPS)
        }
        for n in nodes:
            assert n.stop() == 0, n.tail()
    fingerprint = prints.pop()
    for n in nodes:
        out = cli_json("replay", str(n.data_dir), "--order", "shuffled")
        assert out["fingerprint"] == fingerprint
        assert out["records"] == 3 * STEPS


def test_graceful_restart_resumes_from_snapshot(mosquitto: Broker, tmp_path: Path) -> None:
    nodes = [NodeProc(f"n{i}", tmp_path, mosquitto.url, steps=STEPS) for i in range(3)]
    with running(*nodes):
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_ready()
        expect = {n.name: STEPS for n in nodes}
        wait_until(lambda: converged(nodes, expect), timeout=300, what="first convergence")
        before = nodes[1].status(fresh=True)["fingerprint"]
        assert nodes[1].stop() == 0, nodes[1].tail()
        snaps = list((nodes[1].data_dir / "snapshots").glob("snap-*.safetensors"))
        assert snaps, "a graceful stop leaves a snapshot"
        # the others keep going while n1 is away
        restarted = NodeProc("n1", tmp_path, mosquitto.url, steps=STEPS + 10)
        nodes[1] = restarted
        restarted.start()
        restarted.wait_ready()
        st = restarted.status()
        assert st["restored_records"] == 3 * STEPS  # from the snapshot, nothing replayed
        assert st["replayed_records"] == 0
        expect = {"n0": STEPS, "n1": STEPS + 10, "n2": STEPS}
        wait_until(
            lambda: converged(nodes, expect), timeout=300, what="the restarted node to rejoin"
        )
        prints = {n.status(fresh=True)["fingerprint"] for n in nodes}
        assert len(prints) == 1
        assert before not in prints  # n1's ten new steps changed the model, everywhere alike
        for n in nodes:
            assert n.stop() == 0, n.tail()


def test_a_late_joiner_catches_up_through_gap_filling(mosquitto: Broker, tmp_path: Path) -> None:
    """A node that arrives after everything was published gets it all from its peers.

    Its broker session is new, so the broker has nothing queued for it: every record comes
    through wants answered with the peers' stored, originally signed frames.
    """
    steps = 150
    early = [NodeProc(f"n{i}", tmp_path, mosquitto.url, steps=steps) for i in range(2)]
    late = NodeProc("late", tmp_path, mosquitto.url, steps=0)
    with running(*early, late):
        for n in early:
            n.start()
        for n in early:
            n.wait_ready()
        expect = {"n0": steps, "n1": steps}
        wait_until(lambda: converged(early, expect), timeout=300, what="the early nodes")
        late.start()
        late.wait_ready()
        wait_until(lambda: converged([late], expect), timeout=300, what="the late joiner")
        st = late.status(fresh=True)
        assert st["fingerprint"] == early[0].status(fresh=True)["fingerprint"]
        assert st["sync"]["wants_sent"] >= 1
        assert st["steps"]["taken"] == 0
        # the same status and log, as a person and a script read them
        shown = cli("status", late.url)
        assert shown.returncode == 0, shown.stderr
        assert f"fingerprint {st['fingerprint'][:16]}" in shown.stdout
        assert "n0" in shown.stdout
        assert "n1" in shown.stdout
        page = cli_json("log", late.url, "--limit", "7")
        assert len(page["records"]) == 7
        assert page["total"] == 2 * steps
        rest = cli_json("log", late.url, "--limit", "1000", "--after", page["next"])
        assert len(rest["records"]) == 2 * steps - 7
        keys = [(r["clock"], r["node"], r["seq"]) for r in page["records"] + rest["records"]]
        assert keys == sorted(keys)
        for n in (*early, late):
            assert n.stop() == 0, n.tail()
