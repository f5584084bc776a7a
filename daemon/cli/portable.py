"""``seedswarm log export DIR --out FILE`` and ``seedswarm log import FILE --out DIR``.

A log export (docs/PROTOCOL.md §11) is a run's manifest and the frames of its log, each with
its author, in one file with a digest: with it and the base model anyone replays the run,
without the SQLite store that wrote it. ``export`` writes the frames that make up a data
directory's log (per node, the stored frames from seq 0 up to its first gap) in
``(node, first_seq)`` order; ``import`` checks a file as input from the network is checked
(protocol/logfile.py: every frame, and in a signed run every signature), stages it in a
directory beside the target, and renames that into place only once the file's end and digest
are read and correct. ``seedswarm replay DIR`` then gives the run's fingerprint.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from seedswarm.daemon.console import emit_json, say
from seedswarm.daemon.errors import ConfigError
from seedswarm.daemon.store.datadir import LOG, DataDir, fsync_dir
from seedswarm.daemon.store.log_store import SqliteLogStore, Stored
from seedswarm.protocol.errors import ProtocolError
from seedswarm.protocol.logfile import LogAssembler, LogReader, LogWriter
from seedswarm.protocol.vv import digest

from .settings import LogExportSettings, LogImportSettings

CHUNK = 1 << 16  # bytes read at a time: a file of any size streams through this
BATCH = 1024  # frames per store transaction on import


def export_log(s: LogExportSettings) -> int:
    root = Path(s.run_dir).expanduser()
    manifest, log, beyond = DataDir(root).load()
    vv = log.held()
    out = Path(s.out).expanduser()
    tmp = out.with_name(out.name + ".tmp")
    writer = LogWriter(manifest)
    frames = 0
    store = SqliteLogStore(root / LOG)
    try:
        with tmp.open("wb") as fh:
            fh.write(writer.header())
            for node, first, _count, provisional, body in store.rows():
                if first >= vv.get(node, 0):
                    continue  # beyond a gap in the node's records: not part of the log
                fh.write(writer.entry(node, body, provisional=provisional))
                frames += 1
            fh.write(writer.end())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        store.close()
    summary = {
        "command": "log export",
        "run_id": manifest.run_id().hex(),
        "out": str(out),
        "frames": frames,
        "records": sum(vv.values()),
        "version_vector": dict(sorted(vv.items())),
        "vv_digest": digest(vv),
        "bytes": out.stat().st_size,
        "left_out_beyond_gaps": beyond,
    }
    if s.json:
        emit_json(summary)
    else:
        say(
            f"wrote {summary['records']} records ({frames} frames, {summary['bytes']} bytes) "
            f"of run {manifest.name} ({summary['run_id']}) to {out}"
        )
        say(f"rebuild it anywhere: seedswarm log import {out} --out DIR; seedswarm replay DIR")
    return 0


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            yield chunk


def import_log(s: LogImportSettings) -> int:
    src = Path(s.file).expanduser()
    if not src.is_file():
        raise ConfigError(f"{src} is not a file")
    out = Path(s.out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty: import into a new directory")
    staging = out.with_name(out.name + ".importing")
    shutil.rmtree(staging, ignore_errors=True)
    reader = LogReader()
    assembler = LogAssembler()
    store: SqliteLogStore | None = None
    pending: list[Stored] = []
    try:
        for chunk in _chunks(src):
            for entry in reader.feed(chunk):
                if store is None:
                    assert reader.manifest is not None
                    DataDir(staging).write_manifest(reader.manifest)
                    store = DataDir(staging).open_store(reader.manifest)
                assembler.add(entry)  # the file may not contradict itself
                pending.append(Stored(entry.frame, entry.body, entry.provisional))
                if len(pending) >= BATCH:
                    store.append(pending)
                    pending = []
        manifest = reader.close()  # its end and digest: only now does any of it count
        if store is None:  # a log without frames: the run's manifest alone
            DataDir(staging).write_manifest(manifest)
            store = DataDir(staging).open_store(manifest)
        store.append(pending)
        store.close()
        store = None
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
        fsync_dir(out.parent)
    except ProtocolError as exc:
        raise ConfigError(f"{src} is not a usable log export ({exc.reason}): {exc}") from exc
    finally:
        if store is not None:
            store.close()
        shutil.rmtree(staging, ignore_errors=True)
    vv = assembler.log.held()
    summary = {
        "command": "log import",
        "run_id": manifest.run_id().hex(),
        "out": str(out),
        "frames": reader.entries,
        "records": sum(vv.values()),
        "version_vector": dict(sorted(vv.items())),
        "vv_digest": digest(vv),
        "beyond_gaps": assembler.beyond_gaps,
    }
    if s.json:
        emit_json(summary)
    else:
        say(
            f"imported {summary['records']} records ({reader.entries} frames) of run "
            f"{manifest.name} ({summary['run_id']}) into {out}"
        )
        say(f"rebuild the model: seedswarm replay {out} --out MODEL_DIR")
    return 0
