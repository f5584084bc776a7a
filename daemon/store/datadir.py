"""The data directory of a node or a run: one layout, shared by node, train, replay, eval, swarm.

    <dir>/manifest.json            the run's manifest, for people (the log holds it too)
    <dir>/log.sqlite               the durable log (log_store.py)
    <dir>/snapshots/snap-*.safetensors   weights at a version vector (snapshots.py)
    <dir>/node.json                who wrote here, from which data (``NodeInputs``): what
                                   ``status``, ``eval`` and ``swarm`` read back
    <dir>/evals.jsonl              the node's evaluations (node/evaluation.py)
    <dir>/tensorboard/             training and eval curves, TensorBoard event files (node/curves.py)

Small state files are written atomically and durably: a temporary file, fsync, rename, then
fsync of the directory, so a crash or a full disk leaves the old file or the new one, never a
half-written or empty one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from seedswarm.daemon.errors import ConfigError, StoreError
from seedswarm.protocol.errors import ManifestError
from seedswarm.protocol.log import OrderedLog
from seedswarm.protocol.manifest import Manifest

from .log_store import SqliteLogStore
from .snapshot_info import SnapshotInfo, latest

MANIFEST = "manifest.json"
LOG = "log.sqlite"
SNAPSHOTS = "snapshots"
INPUTS = "node.json"
EVALS = "evals.jsonl"


@dataclass(frozen=True, slots=True)
class NodeInputs:
    """What a node or ``train`` was given, kept beside its log: which node wrote its own
    records here, and the data it trained and evaluated on (so ``seedswarm eval DIR`` needs no
    ``--data``). Paths are absolute where they name files."""

    node: str
    data: str
    eval: str = ""
    eval_limit: int = 0

    @staticmethod
    def path_of(ref: str) -> str:
        """A data reference as another working directory reads it: a file made absolute;
        ``builtin:``/``hf:`` references as they are."""
        if not ref or ":" in ref.split("/", 1)[0]:
            return ref
        return str(Path(ref).expanduser().resolve())

    @classmethod
    def from_json(cls, d: Any) -> NodeInputs:
        if not isinstance(d, dict):
            raise ValueError("not an object")
        return cls(
            str(d["node"]), str(d["data"]), str(d.get("eval", "")), int(d.get("eval_limit", 0))
        )


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new content.

    Raises ``OSError`` (the caller knows whether the path was the user's or the node's own).
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def read_manifest_file(path: Path) -> Manifest:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StoreError(f"cannot read manifest {path}: {exc.strerror}") from exc
    try:
        return Manifest.from_json(text)
    except ManifestError as exc:
        raise StoreError(f"{path}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class DataDir:
    root: Path

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def log_path(self) -> Path:
        return self.root / LOG

    @property
    def snapshots(self) -> Path:
        return self.root / SNAPSHOTS

    # -- the manifest --------------------------------------------------------------------------

    def write_manifest(self, manifest: Manifest) -> None:
        """Write the manifest, or check that the one already here is the same run."""
        if self.manifest_path.exists():
            existing = read_manifest_file(self.manifest_path)
            if existing.run_id() != manifest.run_id():
                fields = ", ".join(existing.differences(manifest))
                raise ConfigError(
                    f"{self.root} belongs to another run (differs in: {fields}); "
                    "use another directory"
                )
            return
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.manifest_path, manifest.to_json().encode())

    # -- what wrote here -----------------------------------------------------------------------

    def write_inputs(self, inputs: NodeInputs) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.root / INPUTS, (json.dumps(asdict(inputs), indent=2) + "\n").encode())

    def inputs(self) -> NodeInputs | None:
        """What ``write_inputs`` kept, or None (a directory of an older seedswarm, an import)."""
        try:
            return NodeInputs.from_json(json.loads((self.root / INPUTS).read_text("utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # -- the log -------------------------------------------------------------------------------

    def open_store(self, manifest: Manifest) -> SqliteLogStore:
        store = SqliteLogStore(self.log_path)
        try:
            store.bind(manifest)
        except BaseException:
            store.close()
            raise
        return store

    def load(self) -> tuple[Manifest, OrderedLog, int]:
        """The run's manifest, its whole log, read once (replay, eval), and how many stored
        frames lie beyond a gap (left out of the log)."""
        if not self.root.is_dir():
            raise ConfigError(f"{self.root} is not a run directory (it does not exist)")
        if not self.log_path.is_file():
            raise ConfigError(f"{self.root} has no {LOG}: not a run directory")
        store = SqliteLogStore(self.log_path)
        try:
            manifest = store.manifest()
            if manifest is None:
                raise StoreError(f"{self.log_path} holds no manifest")
            if (
                self.manifest_path.exists()
                and read_manifest_file(self.manifest_path).run_id() != manifest.run_id()
            ):
                raise StoreError(f"{self.manifest_path} does not match the run in {LOG}")
            store.bind(manifest)
            log = OrderedLog()
            store.load_log(log)
        finally:
            store.close()
        return manifest, log, store.beyond_gaps

    # -- snapshots -----------------------------------------------------------------------------

    def latest_snapshot(self, run_id: bytes) -> SnapshotInfo | None:
        return latest(self.snapshots, run_id.hex())
