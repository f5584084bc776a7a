"""The log store on real SQLite files: durability across reopen, duplicates, a tampered file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from seedswarm.daemon.errors import StoreError
from seedswarm.daemon.store.log_store import SqliteLogStore, Stored
from seedswarm.protocol.codec import encode_frame
from seedswarm.protocol.log import OrderedLog
from seedswarm.protocol.manifest import Manifest, TaskSpec
from seedswarm.protocol.records import Frame, Record

MANIFEST = Manifest(name="t", model="tiny", base_hash="0" * 64, task=TaskSpec(kind="causal_lm"))
RUN = MANIFEST.run_id()


def _frame(node: str, first: int, qs: list[int], clock: int = 1) -> Stored:
    f = Frame(RUN, node, first, clock, bytes(q & 0xFF for q in qs))
    return Stored(f, encode_frame(f))


def _store(path: Path) -> SqliteLogStore:
    store = SqliteLogStore(path)
    store.bind(MANIFEST)
    return store


def test_records_survive_reopen_in_total_order(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    store = _store(path)
    store.append([_frame("b", 0, [1, -2], clock=1), _frame("a", 0, [3], clock=2)])
    store.close()
    store = _store(path)
    try:
        log = OrderedLog()
        assert store.load_log(log) == 3
        assert log.held() == {"a": 1, "b": 2}
        assert list(log.ordered()) == [
            Record("b", 0, 1, 1),
            Record("b", 1, -2, 1),
            Record("a", 0, 3, 2),
        ]
        # each frame is kept once, exactly as it was received, for gap filling
        assert store.frames_for("b", 0, 2) == [_frame("b", 0, [1, -2], clock=1).body]
        assert store.frames_for("b", 2, 1) == []
        rows = sqlite3.connect(path).execute("SELECT name FROM sqlite_master").fetchall()
        assert {r[0] for r in rows} >= {"frames", "meta"}
        assert "records" not in {r[0] for r in rows}  # no second copy of every record
    finally:
        store.close()


def test_overlapping_equal_frames_load_once(tmp_path: Path) -> None:
    store = _store(tmp_path / "log.sqlite")
    try:
        store.append([_frame("a", 0, [5, 6, 7])])
        store.append([_frame("a", 0, [5, 6, 7])])  # the same frame again: stored once
        store.append([_frame("a", 2, [7, 8])])  # overlaps with the same byte, adds one record
        log = OrderedLog()
        assert store.load_log(log) == 4
        assert [r.q for r in log.ordered()] == [5, 6, 7, 8]
        assert store.frames_for("a", 0, 4) == [
            _frame("a", 0, [5, 6, 7]).body,
            _frame("a", 2, [7, 8]).body,
        ]
    finally:
        store.close()


def test_a_file_whose_frames_contradict_each_other_is_refused(tmp_path: Path) -> None:
    """The OrderedLog never lets such frames through; a file changed by hand is not served."""
    path = tmp_path / "log.sqlite"
    store = _store(path)
    store.append([_frame("a", 0, [5, 6])])
    store.close()
    db = sqlite3.connect(path)
    body = _frame("a", 1, [-7]).body  # a different byte for seq 1
    db.execute("INSERT INTO frames VALUES (?, ?, ?, ?, ?)", ("a", 1, 1, 0, body))
    db.commit()
    db.close()
    store = _store(path)
    try:
        with pytest.raises(StoreError, match="unusable"):
            store.load_log(OrderedLog())
    finally:
        store.close()


def test_a_store_of_another_run_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path / "log.sqlite")
    store.close()
    other = SqliteLogStore(tmp_path / "log.sqlite")
    try:
        with pytest.raises(StoreError, match="holds the log of run"):
            other.bind(MANIFEST.replace(name="u"))
    finally:
        other.close()


def test_a_log_of_protocol_1_is_refused_with_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "CREATE TABLE records (node TEXT, seq INTEGER, q INTEGER, clock INTEGER);"
        "CREATE TABLE frames (node TEXT NOT NULL, first_seq INTEGER NOT NULL, "
        "count INTEGER NOT NULL, body BLOB NOT NULL, PRIMARY KEY (node, first_seq, count));"
    )
    db.close()
    with pytest.raises(StoreError, match=r"older seedswarm \(protocol 1\).*new data directory"):
        SqliteLogStore(path)


def test_retract_deletes_the_provisional_frames_from_a_seq_on(tmp_path: Path) -> None:
    store = _store(tmp_path / "log.sqlite")
    try:
        trusted = _frame("a", 0, [1, 2])
        copy = _frame("a", 2, [3, 4, 5])
        store.append([trusted, Stored(copy.frame, copy.body, provisional=True)])
        store.append([_frame("b", 0, [9])])
        store.retract("a", 2)
        log = OrderedLog()
        assert store.load_log(log) == 3
        assert log.held() == {"a": 2, "b": 1}
        assert log.provisional("a") == 0
    finally:
        store.close()


def test_provisional_frames_come_back_provisional(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    store = _store(path)
    copy = _frame("a", 0, [3, 4])
    store.append([Stored(copy.frame, copy.body, provisional=True)])
    store.close()
    store = _store(path)
    try:
        log = OrderedLog()
        store.load_log(log)
        assert log.held() == {"a": 2}
        assert log.provisional("a") == 2
    finally:
        store.close()
