"""The eval history of a node (daemon/evaluation.py) as a file: where the next point is due,
and what a restart reads back, a torn last line included."""

from __future__ import annotations

import json
from pathlib import Path

from seedswarm.daemon.evaluation import EvalHistory, EvalPoint


def _point(records: int, loss: float = 0.5) -> EvalPoint:
    return EvalPoint(records, "00" * 8, loss, 0.75, 40, 0.1, 1_800_000_000.0 + records)


def test_points_are_due_at_the_multiples_and_never_twice(tmp_path: Path) -> None:
    h = EvalHistory(tmp_path / "evals.jsonl", 10)
    assert h.next_due(0) == 0  # the base model first
    h.add(_point(0))
    assert h.next_due(0) == 10
    assert h.next_due(23) == 30  # a node that stands past a multiple starts at the next
    h.add(_point(30))
    assert h.next_due(30) == 40  # the point at 30 is taken
    again = EvalHistory(tmp_path / "evals.jsonl", 10)
    assert again.points == [_point(0), _point(30)]
    assert again.next_due(30) == 40  # after a restart too


def test_a_torn_last_line_is_cut_so_the_next_point_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "evals.jsonl"
    h = EvalHistory(path, 10)
    h.add(_point(0))
    h.add(_point(10))
    whole = path.read_bytes()
    path.write_bytes(whole + json.dumps({"records": 20, "loss": 0.4}).encode()[:17])  # kill -9
    after = EvalHistory(path, 10)
    assert after.points == [_point(0), _point(10)]
    assert path.read_bytes() == whole
    after.add(_point(20))
    assert EvalHistory(path, 10).points == [_point(0), _point(10), _point(20)]
