"""The log store on real SQLite files: durability across reopen, duplicates, equivocation."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from seedswarm.daemon.errors import StoreError
from seedswarm.daemon.store import LogStore
from seedswarm.protocol.codec import encode_frame
from seedswarm.protocol.log import OrderedLog
from seedswarm.protocol.records import Frame, Record

RUN = b"\x01" * 8


def _frame(node: str, first: int, qs: list[int], clock: int = 1) -> Frame:
    return Frame(RUN, node, first, clock, bytes(q & 0xFF for q in qs))


def test_records_survive_reopen_in_total_order(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    store = LogStore(path)
    store.append([_frame("b", 0, [1, -2], clock=1), _frame("a", 0, [3], clock=2)])
    store.close()
    store = LogStore(path)
    try:
        log = OrderedLog()
        assert store.load_log(log) == 3
        assert log.held() == {"a": 1, "b": 2}
        assert list(log.ordered()) == [
            Record("b", 0, 1, 1),
            Record("b", 1, -2, 1),
            Record("a", 0, 3, 2),
        ]
        # the frames themselves are kept, as encoded, for gap filling
        assert store.frames_for("b", 0, 2) == [encode_frame(_frame("b", 0, [1, -2], clock=1))]
        assert store.frames_for("b", 2, 1) == []
    finally:
        store.close()


def test_a_duplicate_is_ignored_and_a_different_byte_refused(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "log.sqlite")
    try:
        store.append([_frame("a", 0, [5, 6, 7])])
        store.append([_frame("a", 1, [6, 7], clock=3)])  # the same bytes again: nothing changes
        assert store.count() == 3
        with pytest.raises(StoreError, match="equivocation"):
            # a new record and a conflicting one in one batch: the whole batch is refused
            store.append([_frame("b", 0, [1]), _frame("a", 2, [-7])])
        log = OrderedLog()
        store.load_log(log)
        assert [r.q for r in log.ordered() if r.node == "a"] == [5, 6, 7]
        assert store.count() == 3
    finally:
        store.close()


def test_the_file_itself_refuses_to_rewrite_a_record(tmp_path: Path) -> None:
    """The guard lives in the database file, so another writer cannot change a byte either."""
    path = tmp_path / "log.sqlite"
    store = LogStore(path)
    store.append([_frame("a", 0, [5])])
    store.close()
    db = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="equivocation"):
            db.execute("UPDATE records SET q = 9 WHERE node = 'a' AND seq = 0")
    finally:
        db.close()
