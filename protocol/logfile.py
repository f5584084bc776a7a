"""The portable log: a run's log as one byte stream, written and read without SQLite.

Theory of operation
-------------------
docs/PROTOCOL.md §11 fixes the format. A log export is the run's manifest and the frames of
the log, each with its author, exactly as a bundle carries them (so signed frames still
verify), then a digest of everything before it:

    file   = MAGIC || u8(FORMAT) || varint(len(manifest)) || manifest || entry* || 0x00 || digest
    entry  = u8(kind) || u8(len(node)) || node || varint(len(frame)) || frame
    kind   = 0x01: the author's word (it came from its author, or carries its signature)
             0x02: provisional (an open run: a third party's copy, taken while its author
                   was away)
    digest = SHA-256 of every byte before it

``manifest`` is the manifest's canonical msgpack (its hash is the run id). Nothing in the
format needs a seek or a count written in advance, so a log of any size streams through a
fixed buffer both ways: ``LogWriter`` turns frames into bytes, ``LogReader`` bytes (in chunks
of any size) into checked entries. Every entry is checked as a frame from the network is:
its node id, its size, its frame (in a signed run: its author's signature).

The log a file denotes is a *set*: entries may come in any order, and may overlap (the same
record in two frames, byte for byte). ``LogAssembler`` builds the ``OrderedLog`` of that set
whatever the order (frames beyond a node's contiguous prefix wait until it reaches them), and
the state it denotes (docs/PROTOCOL.md §5) does not depend on the order.

Invariants:
  * A reader yields an entry only once it is fully checked, and raises a ``ProtocolError``
    (a ``DecodeError`` naming the byte offset, or a ``ConflictError``) for anything else; a
    file counts only once ``close`` found its end and its digest correct, so an importer
    stages what the reader yields and commits at ``close``.
  * A writer writes nothing a reader would refuse.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from . import canonical, varint
from .codec import MAX_FRAME_BYTES, Keys, decode_frame
from .errors import DecodeError, ManifestError, ProtocolError, WrongRunError
from .ids import NODE_ID_MAX, check_node_id
from .log import OrderedLog
from .manifest import RUN_DOMAIN, Manifest
from .records import Frame
from .retained import MAX_MANIFEST_BYTES, decode_manifest_bytes, manifest_payload

MAGIC = b"\x89swlog\r\n\x1a\n"  # a high byte, CR LF, ^Z, LF: any text-mode mangling shows
FORMAT = 1
END = 0x00
AUTHOR = 0x01
PROVISIONAL = 0x02
DIGEST_BYTES = 32


@dataclass(frozen=True, slots=True)
class LogEntry:
    """A frame of the log, its bytes as its author sent them, and whether it is provisional."""

    frame: Frame
    body: bytes
    provisional: bool = False


# == writing ========================================================================================


class LogWriter:
    """Bytes of a log export, piece by piece: ``header()``, ``entry(...)`` per frame, ``end()``."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.run_id = manifest.run_id()
        self._keys: Keys = manifest.public_keys() or None
        self._hash = hashlib.sha256()
        self._state = "header"
        self.entries = 0

    def _out(self, data: bytes) -> bytes:
        self._hash.update(data)
        return data

    def header(self) -> bytes:
        if self._state != "header":
            raise ValueError("the header is written once, first")
        self._state = "entries"
        payload = manifest_payload(self.manifest)
        return self._out(MAGIC + bytes([FORMAT]) + varint.encode(len(payload)) + payload)

    def entry(self, node: str, body: bytes, *, provisional: bool = False) -> bytes:
        """One frame of ``node``, its bytes as stored (raises ``ProtocolError`` if they are not
        a frame of this run; the signature is not checked again)."""
        if self._state != "entries":
            raise ValueError("entries come after the header and before the end")
        if provisional and self._keys is not None:
            raise ValueError("a signed run has no provisional records")
        check_node_id(node)
        decode_frame(body, run_id=self.run_id, node=node, keys=self._keys, verify=False)
        name = node.encode()
        kind = PROVISIONAL if provisional else AUTHOR
        self.entries += 1
        return self._out(bytes([kind, len(name)]) + name + varint.encode(len(body)) + bytes(body))

    def end(self) -> bytes:
        if self._state != "entries":
            raise ValueError("the end comes once, after the header")
        self._state = "done"
        self._hash.update(bytes([END]))
        return bytes([END]) + self._hash.digest()


def encode_log(manifest: Manifest, entries: Iterable[tuple[str, bytes, bool]]) -> bytes:
    """A whole export in memory: ``entries`` are ``(node, frame bytes, provisional)``."""
    w = LogWriter(manifest)
    parts = [w.header()]
    parts += [w.entry(node, body, provisional=prov) for node, body, prov in entries]
    parts.append(w.end())
    return b"".join(parts)


# == reading ========================================================================================


class _NeedMore(Exception):
    """The buffer ends before the item being read does."""


class LogReader:
    """Checked entries out of the bytes of a log export, fed in chunks of any size.

    ``run_id``: the run the file must belong to (None: whichever its manifest names).
    """

    def __init__(self, *, run_id: bytes | None = None) -> None:
        self._expect = run_id
        self.manifest: Manifest | None = None
        self.entries = 0
        self._keys: Keys = None
        self._buf = bytearray()
        self._offset = 0  # of _buf[0] in the file
        self._hash = hashlib.sha256()
        self._state = "header"
        self._failed: ProtocolError | None = None

    @property
    def done(self) -> bool:
        """The end and its digest were read and are correct."""
        return self._state == "done"

    def feed(self, data: bytes) -> list[LogEntry]:
        """The entries ``data`` completes; raises ``ProtocolError`` for a bad file."""
        if self._failed is not None:
            raise self._failed
        if self._state == "done" and data:
            raise self._fail(DecodeError("bytes after the end of the log", reason="malformed"))
        self._buf += data
        out: list[LogEntry] = []
        pos = 0
        try:
            while self._state != "done":
                got, pos = self._step(pos)
                if got is not None:
                    out.append(got)
        except _NeedMore:
            pass
        except ProtocolError as exc:
            raise self._fail(exc, self._offset + pos) from exc
        self._consume(pos)
        if self._state == "done" and self._buf:
            raise self._fail(DecodeError("bytes after the end of the log", reason="malformed"))
        return out

    def close(self) -> Manifest:
        """The file's manifest, once it ended where it should; raises ``DecodeError``
        (``truncated``) if it did not."""
        if self._failed is not None:
            raise self._failed
        if self._state != "done":
            raise self._fail(
                DecodeError(
                    f"the log ends at byte {self._offset + len(self._buf)} before its end "
                    "marker and digest",
                    reason="truncated",
                )
            )
        assert self.manifest is not None
        return self.manifest

    def _fail(self, exc: ProtocolError, at: int | None = None) -> ProtocolError:
        """Remember the first fault (the reader is done for) and say where it is."""
        if at is not None:
            exc = copy.copy(exc)  # same class and reason, the offset in the message
            exc.args = (f"log byte {at}: {exc}",)
        self._failed = exc
        return exc

    def _consume(self, pos: int) -> None:
        self._hash.update(self._buf[:pos])
        del self._buf[:pos]
        self._offset += pos

    def _need(self, pos: int, n: int) -> None:
        if len(self._buf) - pos < n:
            raise _NeedMore

    def _varint(self, pos: int) -> tuple[int, int]:
        end = min(len(self._buf), pos + varint.MAX_VARINT_BYTES)
        if all(b & 0x80 for b in self._buf[pos:end]) and end - pos < varint.MAX_VARINT_BYTES:
            raise _NeedMore  # the varint goes on past what came so far
        value, used = varint.decode(bytes(self._buf[pos:end]), 0)
        return value, pos + used

    def _step(self, pos: int) -> tuple[LogEntry | None, int]:
        """Read one item at ``pos``: the header, an entry, or the end."""
        buf = self._buf
        if self._state == "header":
            head = bytes(buf[pos : pos + len(MAGIC)])
            if head != MAGIC[: len(head)]:
                raise DecodeError("not a seedswarm log export (its magic)", reason="bad_version")
            self._need(pos, len(MAGIC) + 1)
            version = buf[pos + len(MAGIC)]
            if version != FORMAT:
                raise DecodeError(
                    f"log export format {version} is not supported (this is {FORMAT})",
                    reason="bad_version",
                )
            size, at = self._varint(pos + len(MAGIC) + 1)
            if size > MAX_MANIFEST_BYTES:
                raise DecodeError(f"a manifest of {size} bytes exceeds 1 MiB", reason="oversized")
            self._need(at, size)
            payload = bytes(buf[at : at + size])
            run_id = canonical.sha256(RUN_DOMAIN, payload)[:8]
            if self._expect is not None and run_id != self._expect:
                raise WrongRunError(
                    f"the log is of run {run_id.hex()}, not {self._expect.hex()}", run_id=run_id
                )
            try:
                manifest = decode_manifest_bytes(payload)
            except ManifestError as exc:  # a bad byte, or a run of a newer protocol
                raise DecodeError(f"the log's manifest: {exc}", reason="malformed") from exc
            self.manifest = manifest
            self._keys = manifest.public_keys() or None
            self._state = "entries"
            return None, at + size
        assert self.manifest is not None
        self._need(pos, 1)
        kind = buf[pos]
        if kind == END:
            self._need(pos, 1 + DIGEST_BYTES)
            h = self._hash.copy()
            h.update(buf[: pos + 1])  # every byte before the digest
            if bytes(buf[pos + 1 : pos + 1 + DIGEST_BYTES]) != h.digest():
                raise DecodeError("the log's digest does not match its bytes", reason="malformed")
            self._state = "done"
            return None, pos + 1 + DIGEST_BYTES
        if kind not in (AUTHOR, PROVISIONAL):
            raise DecodeError(f"an entry of kind {kind:#04x}", reason="malformed")
        if kind == PROVISIONAL and self._keys is not None:
            raise DecodeError("a provisional entry in a signed run", reason="malformed")
        self._need(pos, 2)
        size = buf[pos + 1]
        if not 1 <= size <= NODE_ID_MAX:
            raise DecodeError(f"a node id of {size} bytes", reason="bad_range")
        self._need(pos, 2 + size)
        try:
            node = check_node_id(bytes(buf[pos + 2 : pos + 2 + size]).decode())
        except UnicodeDecodeError as exc:
            raise DecodeError("a node id is not UTF-8", reason="bad_range") from exc
        length, at = self._varint(pos + 2 + size)
        if length > MAX_FRAME_BYTES:
            raise DecodeError(
                f"an entry of {length} bytes exceeds {MAX_FRAME_BYTES}", reason="oversized"
            )
        self._need(at, length)
        body = bytes(buf[at : at + length])
        run_id = self.manifest.run_id()
        frame = decode_frame(body, run_id=run_id, node=node, keys=self._keys)
        self.entries += 1
        return LogEntry(frame, body, kind == PROVISIONAL), at + length


# == the log a file denotes =========================================================================


@dataclass(slots=True)
class LogAssembler:
    """The ``OrderedLog`` of a set of entries given in any order.

    A frame that starts beyond its node's contiguous prefix waits (in memory) until the prefix
    reaches it; an export written in (node, first seq) order never makes one wait. Conflicting
    entries (equivocation, clock regression) raise ``ConflictError`` in whatever order they
    come. Which records are provisional follows ``OrderedLog``'s rule in the order given.
    """

    log: OrderedLog = field(default_factory=OrderedLog)
    _waiting: dict[str, list[LogEntry]] = field(default_factory=dict)

    def add(self, entry: LogEntry) -> None:
        node = entry.frame.node
        if entry.frame.first_seq > self.log.next_seq(node):
            self._waiting.setdefault(node, []).append(entry)
            return
        self.log.offer(entry.frame, provisional=entry.provisional, jump_check=False)
        waiting = self._waiting.get(node)
        while waiting:
            held = self.log.next_seq(node)
            ready = [e for e in waiting if e.frame.first_seq <= held]
            if not ready:
                break
            waiting[:] = [e for e in waiting if e.frame.first_seq > held]
            for e in sorted(ready, key=lambda e: e.frame.first_seq):
                self.log.offer(e.frame, provisional=e.provisional, jump_check=False)
        if waiting == []:
            del self._waiting[node]

    @property
    def beyond_gaps(self) -> int:
        """Entries that start beyond their node's prefix (not part of the log, so far)."""
        return sum(len(w) for w in self._waiting.values())


@dataclass(frozen=True, slots=True)
class ImportedLog:
    manifest: Manifest
    log: OrderedLog
    entries: int
    beyond_gaps: int  # entries past a gap in their node's records: not part of the log


def read_log(chunks: Iterable[bytes], *, run_id: bytes | None = None) -> ImportedLog:
    """The manifest and the log of a whole export, read from ``chunks`` (a file's blocks)."""
    reader = LogReader(run_id=run_id)
    assembler = LogAssembler()
    for chunk in chunks:
        for entry in reader.feed(chunk):
            assembler.add(entry)  # ConflictError: the file contradicts itself
    manifest = reader.close()
    return ImportedLog(manifest, assembler.log, reader.entries, assembler.beyond_gaps)
