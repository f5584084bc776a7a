"""Evaluation inside a node, on real node processes through a real Mosquitto.

What this proves (issue 14, must-show 2): two nodes that evaluate while they train
(``--eval FILE --eval-every N``) take their points at the same record counts, each point is
taken when the model holds exactly that many records (its version vector digest says so),
nodes that hold the same records measure the same loss and accuracy, ``/status``,
``/metrics``, ``/history`` and ``evals.jsonl`` tell the same points, and the history survives
a graceful restart and a ``kill -9``: the restarted node keeps its points and carries on at
the next multiple, in step with the other node.
"""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path
from typing import Any

import pytest

from seedswarm.protocol.vv import digest

from ..helpers import Broker, NodeProc, converged, get_text, running, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.broker]

EVERY = 10
STEPS = 30


def sentiment_tsv(path: Path, n: int, seed: int) -> Path:
    """A small labelled table (a classification run for the tiny model)."""
    rng = random.Random(seed)
    good = ["a great film", "wonderful and warm", "a joy to watch", "brilliant acting"]
    bad = ["a dull mess", "boring and flat", "a waste of time", "terrible acting"]
    rows = ["sentence\tlabel"]
    for _ in range(n):
        label = rng.randrange(2)
        rows.append(f"{rng.choice(good if label else bad)}\t{label}")
    path.write_text("\n".join(rows) + "\n")
    return path


def evals(node: NodeProc) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = json.loads(get_text(node.url + "/history?since=0")[1])["evals"]
    return points


def records_at(points: list[dict[str, Any]]) -> list[int]:
    return [p["records"] for p in points]


def holds_exactly(point: dict[str, Any], names: tuple[str, str]) -> bool:
    """The point's version vector covers exactly ``point["records"]`` records: some split of
    them between the two nodes has its digest (an evaluation a pass too late has none)."""
    r = point["records"]
    return any(point["vv_digest"] == digest({names[0]: a, names[1]: r - a}) for a in range(r + 1))


def check_agreeing(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> int:
    """Points of the same records on two nodes measured the same; returns how many."""
    same = 0
    for p, q in zip(a, b, strict=True):
        assert p["records"] == q["records"]
        if p["vv_digest"] == q["vv_digest"]:
            same += 1
            assert (p["loss"], p["accuracy"], p["examples"]) == (
                q["loss"],
                q["accuracy"],
                q["examples"],
            ), (p, q)
    return same


def metric(text: str, name: str) -> float:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(name + "{")]
    return float(line.rsplit(" ", 1)[1])


def test_two_nodes_evaluate_at_the_same_records_and_keep_it_across_restarts(
    mosquitto: Broker, tmp_path: Path
) -> None:
    train = sentiment_tsv(tmp_path / "train.tsv", 200, seed=1)
    dev = sentiment_tsv(tmp_path / "dev.tsv", 40, seed=2)
    run = ["--data", str(train), "--eval", str(dev), "--eval-every", str(EVERY)]
    run += ["--eval-limit", "24"]
    n0 = NodeProc("n0", tmp_path, mosquitto.url, *run, steps=STEPS)
    n1 = NodeProc("n1", tmp_path, mosquitto.url, *run, steps=STEPS)
    nodes = [n0, n1]
    with running(n0, n1):
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_ready()
        expect = {"n0": STEPS, "n1": STEPS}
        wait_until(lambda: converged(nodes, expect), timeout=300, what="the nodes to converge")
        total = 2 * STEPS
        wait_until(
            lambda: all(records_at(evals(n))[-1:] == [total] for n in nodes),
            timeout=120,
            what=f"both nodes to evaluate at {total} records",
        )
        first = [evals(n) for n in nodes]
        for points in first:
            assert records_at(points) == list(range(0, total + 1, EVERY))
            assert all(holds_exactly(p, ("n0", "n1")) for p in points), points
            assert all(p["examples"] == 24 and p["accuracy"] is not None for p in points)
        # the first point (the base model) and the last (every record) are on the same
        # records everywhere, and the same weights give the same figures
        assert check_agreeing(*first) >= 2

        for n, points in zip(nodes, first, strict=True):
            latest = points[-1]
            st = n.status()["eval"]
            assert st == {
                "records": latest["records"],
                "loss": latest["loss"],
                "accuracy": latest["accuracy"],
                "examples": latest["examples"],
                "points": len(points),
                # a classification run: no answers to match (completion runs fill these)
                "exact_match": None,
                "f1": None,
            }
            code, metrics = get_text(n.url + "/metrics")
            assert code == 200
            assert metric(metrics, "seedswarm_eval_records") == latest["records"]
            assert metric(metrics, "seedswarm_eval_loss") == pytest.approx(latest["loss"])
            assert metric(metrics, "seedswarm_eval_accuracy") == pytest.approx(latest["accuracy"])
            lines = (n.data_dir / "evals.jsonl").read_text().splitlines()
            assert [json.loads(line) for line in lines] == points

        # a graceful restart with more steps: n1 keeps its points and goes on at the next
        # multiple; n0, done stepping, evaluates there too as n1's records arrive
        assert n1.stop() == 0, n1.tail()
        nodes[1] = n1 = NodeProc("n1", tmp_path, mosquitto.url, *run, steps=STEPS + 15)
        n1.start()
        n1.wait_ready()
        assert evals(n1)[: len(first[1])] == first[1]
        expect = {"n0": STEPS, "n1": STEPS + 15}
        wait_until(lambda: converged(nodes, expect), timeout=300, what="the restarted node")
        last = (2 * STEPS + 15) // EVERY * EVERY
        wait_until(
            lambda: all(records_at(evals(n))[-1:] == [last] for n in nodes),
            timeout=120,
            what=f"both nodes to evaluate at {last} records",
        )
        second = [evals(n) for n in nodes]
        for before, points in zip(first, second, strict=True):
            assert points[: len(before)] == before
            assert records_at(points) == list(range(0, last + 1, EVERY))  # none twice, none lost
            assert all(holds_exactly(p, ("n0", "n1")) for p in points), points
        assert check_agreeing(*second) >= 2

        # kill -9: nothing but the file survives; it is read back as it was
        assert n0.stop(signal.SIGKILL) == -signal.SIGKILL
        nodes[0] = n0 = NodeProc("n0", tmp_path, mosquitto.url, *run, steps=STEPS)
        n0.start()
        n0.wait_ready()
        assert evals(n0) == second[0]
        assert n0.status()["eval"]["points"] == len(second[0])
        for n in nodes:
            assert n.stop() == 0, n.tail()
