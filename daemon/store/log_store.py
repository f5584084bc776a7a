"""The durable log store: SQLite in WAL mode, one file per node (``log.sqlite``).

Theory of operation
-------------------
The store is the durable half of the log; ``protocol.log.OrderedLog`` is the in-memory half
that decides what is new. Everything that reaches the store has already been checked (codec:
run, signature; OrderedLog: duplicates, equivocation), so the store only has to be durable and
fast. It keeps each frame once, exactly as received:

  * ``frames(node, first_seq, count, provisional, body)``: the frame's bytes, signature
    included, so what this node serves to a peer verifies against its author's key, and so the
    log can be read back (``load_log``) into an ``OrderedLog`` by decoding them;
    ``provisional`` marks a third party's copy (an open run, its author away).
  * ``meta``: the run id and manifest the file belongs to; a store never mixes runs.

Invariants:
  * Writes are batched into transactions and committed with ``synchronous=FULL``: when
    ``append`` returns, the frames survive kill -9 and power loss. A node publishes its own
    frames only after that, so it can never reuse a seq with another byte.
  * Frames are never rewritten; they are deleted only when the log retracts provisional
    records (``retract``). Reading the log back rejects a file whose frames contradict each
    other (it cannot happen after the OrderedLog check; if it does, the store refuses to serve
    rather than guess).
  * One thread owns the connection (``StoreThread``); the event loop never runs SQLite.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from seedswarm.daemon.errors import StoreError
from seedswarm.protocol.codec import decode_frame
from seedswarm.protocol.errors import ProtocolError
from seedswarm.protocol.log import OrderedLog
from seedswarm.protocol.manifest import Manifest
from seedswarm.protocol.records import MAX_FRAME_RECORDS, SEQ_LIMIT, Frame

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS frames (
    node TEXT NOT NULL, first_seq INTEGER NOT NULL, count INTEGER NOT NULL,
    provisional INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (node, first_seq, count)) WITHOUT ROWID;
"""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Stored:
    """A frame to store: the frame, its bytes as received, and whether it is provisional."""

    frame: Frame
    body: bytes
    provisional: bool = False


class LogStore(Protocol):
    """The whole surface of a node's durable log, as the daemon uses it.

    Every method blocks; the daemon calls them on the store's own thread (``StoreThread``).
    """

    def bind(self, manifest: Manifest) -> None:
        """Tie the store to a run; refuse one that belongs to another run."""
        ...

    def load_log(self, log: OrderedLog) -> int:
        """Feed every stored frame into ``log``; returns how many records were new."""
        ...

    def append(self, frames: Sequence[Stored]) -> None:
        """Store checked frames (with their bytes as received) in one durable transaction."""
        ...

    def retract(self, node: str, first: int) -> None:
        """Delete ``node``'s frames that hold records from ``first`` on (provisional ones)."""
        ...

    def frames_for(self, node: str, first: int, count: int) -> list[bytes]:
        """Stored frame bodies that together cover ``[first, first + count)`` of ``node``."""
        ...

    def close(self) -> None: ...


class SqliteLogStore:
    """``LogStore`` on one SQLite file. Use from one thread only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._run_id = b""
        self._keys: dict[str, bytes] | None = None
        self.beyond_gaps = 0  # frames that lie beyond a gap (an older node stored them)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._check_format()
            self._db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the log store {path}: {exc}") from exc

    def _check_format(self) -> None:
        """A log of protocol 1 (msgpack frames) cannot be read by protocol 2: say so."""
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(frames)")}
        if "records" in tables or (columns and "provisional" not in columns):
            self._db.close()
            raise StoreError(
                f"{self.path} is the log of an older seedswarm (protocol 1); this one speaks "
                "protocol 2: give the node a new data directory"
            )

    def close(self) -> None:
        self._db.close()

    # -- run identity --------------------------------------------------------------------------

    def bind(self, manifest: Manifest) -> None:
        run_id = manifest.run_id().hex()
        got = self._db.execute("SELECT value FROM meta WHERE key = 'run_id'").fetchone()
        if got is not None and got[0] != run_id:
            raise StoreError(
                f"{self.path} holds the log of run {got[0]}, not {run_id}: use another data dir"
            )
        if got is None:
            try:
                with self._tx():
                    self._db.execute("INSERT INTO meta VALUES ('run_id', ?)", (run_id,))
                    self._db.execute(
                        "INSERT INTO meta VALUES ('manifest', ?)", (manifest.to_json(),)
                    )
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write to {self.path}: {exc}") from exc
        self._run_id = manifest.run_id()
        self._keys = manifest.public_keys() or None

    def manifest(self) -> Manifest | None:
        got = self._db.execute("SELECT value FROM meta WHERE key = 'manifest'").fetchone()
        return None if got is None else Manifest.from_json(got[0])

    # -- writes --------------------------------------------------------------------------------

    def append(self, frames: Sequence[Stored]) -> None:
        if not frames:
            return
        rows = [
            (s.frame.node, s.frame.first_seq, s.frame.count, s.provisional, s.body) for s in frames
        ]
        try:
            with self._tx():
                self._db.executemany(
                    "INSERT INTO frames VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", rows
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to {self.path}: {exc}") from exc

    def retract(self, node: str, first: int) -> None:
        try:
            with self._tx():
                self._db.execute(
                    "DELETE FROM frames WHERE node = ? AND first_seq + count > ? "
                    "AND (provisional OR first_seq >= ?)",
                    (node, first, first),
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to {self.path}: {exc}") from exc

    # -- reads ---------------------------------------------------------------------------------

    def load_log(self, log: OrderedLog) -> int:
        if not self._run_id:
            raise StoreError("bind the store to its run before reading the log")
        n = 0
        self.beyond_gaps = 0
        rows = self._db.execute(
            "SELECT node, first_seq, provisional, body FROM frames "
            "ORDER BY node, first_seq, count DESC"
        )
        for node, first, provisional, body in rows:
            try:
                # checked before it was stored: the signature need not be verified again
                frame = decode_frame(
                    bytes(body), run_id=self._run_id, node=node, keys=self._keys, verify=False
                )
                if frame.first_seq != first:
                    raise StoreError(f"{self.path}: a frame stored as {node} {first} is not")
                offered = log.offer(frame, provisional=bool(provisional))
            except ProtocolError as exc:
                raise StoreError(
                    f"{self.path}: the stored frame {node} {first} is unusable ({exc}); "
                    "the file was changed by something else than seedswarm"
                ) from exc
            n += len(offered.new)
            self.beyond_gaps += offered.beyond_gap
        return n

    def rows(self) -> Iterator[tuple[str, int, int, bool, bytes]]:
        """Every stored frame as ``(node, first_seq, count, provisional, body)``, in
        ``(node, first_seq)`` order: what a log export writes (cli/portable.py)."""
        for node, first, count, provisional, body in self._db.execute(
            "SELECT node, first_seq, count, provisional, body FROM frames "
            "ORDER BY node, first_seq, count DESC"
        ):
            yield node, first, count, bool(provisional), bytes(body)

    def frames_for(
        self, node: str, first: int, count: int, limit_records: int = MAX_FRAME_RECORDS
    ) -> list[bytes]:
        end = min(first + min(count, limit_records), SEQ_LIMIT)
        out: list[bytes] = []
        covered = first
        # `end - 1`: seqs stop below 2**63, and SQLite's integers too
        for f_first, f_count, body in self._db.execute(
            "SELECT first_seq, count, body FROM frames WHERE node = ? AND first_seq <= ? "
            "AND first_seq + count > ? ORDER BY first_seq, count DESC",
            (node, end - 1, first),
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


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    path: str
    writes: int  # transactions that appended frames
    frames_written: int
    bytes_written: int  # frame bodies
    retractions: int
    reads: int  # lookups that answered a want
    frames_read: int


class StoreThread:
    """Runs a ``LogStore`` on its own thread; the event loop awaits its results. It is a peer's
    ``Holder`` (daemon/peer/driver.py): what the session accepted is appended here, in order,
    and wants are answered from here."""

    def __init__(self, store: LogStore, path: Path | str = "") -> None:
        self.store = store
        self.path = str(path)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="store")
        self._writes = self._frames = self._bytes = self._retractions = 0
        self._reads = self._frames_read = 0

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    async def append(self, frames: Sequence[Stored]) -> None:
        if not frames:
            return
        await self.call(self.store.append, frames)
        self._writes += 1
        self._frames += len(frames)
        self._bytes += sum(len(s.body) for s in frames)

    async def retract(self, node: str, first: int) -> None:
        await self.call(self.store.retract, node, first)
        self._retractions += 1

    async def frames_for(self, node: str, first: int, count: int) -> list[bytes]:
        bodies = await self.call(self.store.frames_for, node, first, count)
        self._reads += 1
        self._frames_read += len(bodies)
        return bodies

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            path=self.path,
            writes=self._writes,
            frames_written=self._frames,
            bytes_written=self._bytes,
            retractions=self._retractions,
            reads=self._reads,
            frames_read=self._frames_read,
        )

    def close(self) -> None:
        self._pool.submit(self.store.close).result()
        self._pool.shutdown(wait=True)
