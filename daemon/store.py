"""The durable log store: SQLite in WAL mode, one file per node (``log.sqlite``).

Theory of operation
-------------------
The store is the durable half of the log; ``protocol.log.OrderedLog`` is the in-memory half
that decides what is new. Everything that reaches the store has already been checked (codec:
run, signature; OrderedLog: duplicates, equivocation), so the store only has to be durable and
fast:

  * ``records(node, seq, q, clock)`` keyed by ``(node, seq)``: the log itself. A duplicate
    insert is ignored; a different byte for a held key raises (it cannot happen after the
    OrderedLog check, and if it does the store refuses rather than overwrite).
  * ``frames(node, first_seq, count, body)``: the frames as received (signatures included), so
    gaps can be filled for peers with the original signed bytes.
  * ``meta``: the run id and manifest the file belongs to; a store never mixes runs.

Invariants:
  * Writes are batched into transactions and committed with ``synchronous=FULL``: when
    ``append`` returns, the records survive kill -9 and power loss. A node publishes its own
    records only after that, so it can never reuse a seq with another byte.
  * One thread owns the connection (``StoreThread``); the event loop never runs SQLite.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from seedswarm.protocol.codec import encode_frame
from seedswarm.protocol.log import OrderedLog
from seedswarm.protocol.manifest import Manifest
from seedswarm.protocol.records import Frame, byte_to_q

from .errors import StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    node TEXT NOT NULL, seq INTEGER NOT NULL, q INTEGER NOT NULL, clock INTEGER NOT NULL,
    PRIMARY KEY (node, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_order ON records (clock, node, seq);
-- a stored byte never changes: append's upsert turns a different byte into an UPDATE,
-- which this refuses (a duplicate with the same byte updates nothing and passes)
CREATE TRIGGER IF NOT EXISTS records_immutable BEFORE UPDATE ON records
BEGIN SELECT RAISE(ABORT, 'equivocation: a different byte for a stored record'); END;
CREATE TABLE IF NOT EXISTS frames (
    node TEXT NOT NULL, first_seq INTEGER NOT NULL, count INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (node, first_seq, count)) WITHOUT ROWID;
"""

T = TypeVar("T")


class LogStore:
    """Synchronous access to one node's log file. Use from one thread only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the log store {path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    # -- run identity --------------------------------------------------------------------------

    def bind(self, manifest: Manifest) -> None:
        """Tie the file to a run; refuse a file that belongs to another run."""
        run_id = manifest.run_id().hex()
        got = self._db.execute("SELECT value FROM meta WHERE key = 'run_id'").fetchone()
        if got is not None and got[0] != run_id:
            raise StoreError(
                f"{self.path} holds the log of run {got[0]}, not {run_id}: use another data dir"
            )
        if got is None:
            with self._tx():
                self._db.execute("INSERT INTO meta VALUES ('run_id', ?)", (run_id,))
                self._db.execute("INSERT INTO meta VALUES ('manifest', ?)", (manifest.to_json(),))

    def manifest(self) -> Manifest | None:
        got = self._db.execute("SELECT value FROM meta WHERE key = 'manifest'").fetchone()
        return None if got is None else Manifest.from_json(got[0])

    def get_meta(self, key: str) -> str | None:
        got = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if got is None else str(got[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._tx():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- writes --------------------------------------------------------------------------------

    def append(self, frames: Sequence[Frame]) -> None:
        """Store checked frames and their records in one durable transaction."""
        if not frames:
            return
        try:
            with self._tx():
                for f in frames:
                    self._db.executemany(
                        "INSERT INTO records VALUES (?, ?, ?, ?) ON CONFLICT (node, seq) "
                        "DO UPDATE SET q = excluded.q WHERE q != excluded.q",
                        (
                            (f.node, f.first_seq + i, byte_to_q(b), f.clock)
                            for i, b in enumerate(f.qs)
                        ),
                    )
                    self._db.execute(
                        "INSERT INTO frames VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        (f.node, f.first_seq, f.count, encode_frame(f)),
                    )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to {self.path}: {exc}") from exc

    # -- reads ---------------------------------------------------------------------------------

    def load_log(self, log: OrderedLog) -> int:
        """Feed every stored record into ``log`` (at start-up); returns how many."""
        from seedswarm.protocol.records import q_to_byte

        n = 0
        rows = self._db.execute("SELECT node, seq, q, clock FROM records ORDER BY node, seq")
        run: list[tuple[str, int, int, int]] = []
        for row in rows:
            if run and (
                row[0] != run[-1][0]
                or row[1] != run[-1][1] + 1
                or row[3] != run[-1][3]
                or len(run) == 4096
            ):
                n += self._offer_run(log, run, q_to_byte)
                run = []
            run.append(row)
        if run:
            n += self._offer_run(log, run, q_to_byte)
        return n

    @staticmethod
    def _offer_run(
        log: OrderedLog, run: list[tuple[str, int, int, int]], to_byte: Callable[[int], int]
    ) -> int:
        node, first, _, clock = run[0]
        frame = Frame(b"\0" * 8, node, first, clock, bytes(to_byte(r[2]) for r in run))
        return len(log.offer(frame).new)

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM records").fetchone()[0])

    def frames_for(
        self, node: str, first: int, count: int, limit_records: int = 4096
    ) -> list[bytes]:
        """Stored frame bodies that together cover ``[first, first + count)`` of ``node``."""
        end = first + min(count, limit_records)
        out: list[bytes] = []
        covered = first
        for f_first, f_count, body in self._db.execute(
            "SELECT first_seq, count, body FROM frames WHERE node = ? AND first_seq < ? "
            "AND first_seq + count > ? ORDER BY first_seq, count DESC",
            (node, end, first),
        ):
            if f_first + f_count <= covered:
                continue  # already covered by an earlier, longer frame
            out.append(bytes(body))
            covered = max(covered, f_first + f_count)
            if covered >= end:
                break
        return out

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")


class StoreThread:
    """Runs a ``LogStore`` on its own thread; the event loop awaits its results."""

    def __init__(self, store: LogStore) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="store")

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.submit(self.store.close).result()
        self._pool.shutdown(wait=True)


def read_manifest_file(path: Path) -> Manifest:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StoreError(f"cannot read manifest {path}: {exc.strerror}") from exc
    return Manifest.from_json(text)


def dump_json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True)
