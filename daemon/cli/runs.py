"""What ``export`` and ``verify`` share: a run's log from a data directory or a log file, the
run's base, and a replay of the log up to a version vector.

A log comes from either of the two places a user has one:

  * a data directory (a node's, or ``train --out``): the manifest and the SQLite log
    (daemon/store/datadir.py), the records of each node from seq 0 up to its first gap;
  * a log file, the portable export (docs/PROTOCOL.md §11, ``seedswarm log export``):
    read in chunks, every entry checked as a frame from the network is (protocol/logfile.py).

Records are one byte each and apply in any order with the same result (the exact grid), so a
replay "up to a version vector" is simply the records below it, node by node.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from seedswarm.daemon.errors import ConfigError
from seedswarm.daemon.store.datadir import DataDir
from seedswarm.model.engine import Engine
from seedswarm.model.errors import ModelError
from seedswarm.model.replica import pending_records
from seedswarm.protocol.errors import ProtocolError
from seedswarm.protocol.log import OrderedLog
from seedswarm.protocol.logfile import read_log
from seedswarm.protocol.manifest import Manifest

CHUNK = 1 << 20  # bytes of a log file read at a time


@dataclass(frozen=True, slots=True)
class RunLog:
    """A run's manifest and log, and where they were read from."""

    manifest: Manifest
    log: OrderedLog
    path: Path
    is_file: bool  # a log file (else a data directory)
    beyond_gaps: int  # stored frames past a gap in their node's records: not in the log

    @property
    def what(self) -> str:
        return f"log file {self.path}" if self.is_file else f"data directory {self.path}"


def open_log(ref: str, flag: str) -> RunLog:
    """The manifest and log of ``ref``: a data directory or a log file. ``flag`` names the
    setting in messages. Raises ConfigError (one line) for anything that is neither."""
    path = Path(ref).expanduser()
    if not ref:
        raise ConfigError(f"{flag}: give a run's data directory or a log file")
    if path.is_dir():
        manifest, log, beyond = DataDir(path).load()
        return RunLog(manifest, log, path, False, beyond)
    if not path.is_file():
        raise ConfigError(
            f"{flag} {ref}: no such directory or file (give a run's data directory, or a log "
            "file written by `seedswarm log export`)"
        )
    try:
        with path.open("rb") as fh:
            imported = read_log(_chunks(fh))
    except ProtocolError as exc:
        raise ConfigError(f"{flag} {ref}: not a readable log file: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{flag} {ref}: cannot read it: {exc.strerror}") from exc
    return RunLog(imported.manifest, imported.log, path, True, imported.beyond_gaps)


def _chunks(fh: BinaryIO) -> Iterator[bytes]:
    while chunk := fh.read(CHUNK):
        yield chunk


def open_base(
    manifest: Manifest, model: str, *, device: str, kernel: str, flag: str = "--model"
) -> Engine:
    """The run's engine on its base: ``model`` if given, else the manifest's reference. The
    base is checked against the manifest's base hash (a ManifestError says it differs)."""
    ref = model or manifest.model
    try:
        return Engine.open(manifest, model_ref=model or None, device=device, kernel=kernel)
    except ModelError as exc:
        hint = "" if model else f"; give the base model's directory with {flag}"
        raise ConfigError(f"cannot load the run's base model {ref!r}: {exc}{hint}") from exc


def held_upto(log: OrderedLog, vv: Mapping[str, int] | None) -> dict[str, int]:
    """The version vector of what ``log`` holds, capped at ``vv`` (None: all of it)."""
    held = log.held()
    if vv is None:
        return {n: e for n, e in held.items() if e}
    out = {n: min(held.get(n, 0), e) for n, e in vv.items()}
    return {n: e for n, e in out.items() if e}


def replay(engine: Engine, log: OrderedLog, upto: Mapping[str, int], *, batch: int) -> int:
    """Apply the records of ``log`` below ``upto`` to ``engine`` (any order gives the same
    bits); returns how many."""
    records = pending_records(log, {}, upto=upto)
    engine.apply(records, batch=batch)
    return len(records)
