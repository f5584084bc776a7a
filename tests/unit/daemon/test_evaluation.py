"""The eval history of a node (daemon/node/evaluation.py) as a file: where the next point is due,
and what a restart reads back, a torn last line included."""

from __future__ import annotations

import json
from pathlib import Path

from seedswarm.daemon.node.evaluation import EvalHistory, EvalPoint


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


def test_completion_points_carry_exact_match_and_f1_and_old_lines_still_read(
    tmp_path: Path,
) -> None:
    path = tmp_path / "evals.jsonl"
    old = {
        "records": 0, "vv_digest": "00" * 8, "loss": 0.9, "accuracy": 0.5, "examples": 4,
        "seconds": 0.1, "unix_time": 1.0,
    }  # fmt: skip
    path.write_text(json.dumps(old) + "\n")  # a line written before these fields existed
    h = EvalHistory(path, 10)
    h.add(EvalPoint(10, "11" * 8, 2.5, None, 6, 0.2, 2.0, exact_match=0.5, f1=0.75))
    again = EvalHistory(path, 10)
    assert again.points[0].exact_match is None
    assert again.points[0].figures() == {"loss": 0.9, "accuracy": 0.5}
    p = again.points[1]
    assert p.figures() == {"loss": 2.5, "exact_match": 0.5, "f1": 0.75}
    assert p.line() == "loss 2.5000, exact_match 0.5000, f1 0.7500"
    st = again.statistics()
    assert st is not None
    assert (st.records, st.exact_match, st.f1, st.accuracy, st.points) == (10, 0.5, 0.75, None, 2)
