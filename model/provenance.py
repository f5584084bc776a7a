"""Provenance of an export: which base, run and log made these weights, and how to check it.

Every export directory (export.py) carries two files that say the same thing, one for people
and one for programs:

  * ``README.md``       a model card: how to load the model with the Hugging Face libraries
                        alone, the task (prompt template, label words or descriptions), the
                        provenance table, eval figures, and the commands that rebuild and
                        verify the export;
  * ``seedswarm.json``  the same provenance, machine-readable (``PROVENANCE_FORMAT`` 1):

        format        1
        kind          what the directory is (export.py's KINDS)
        run           {"name", "id"}: the run name and run id (16 hex digits)
        base          {"model", "hash"}: the manifest's model reference and base hash
        vv            the version vector {node: next_seq} of the records the weights hold
        vv_digest     its digest (16 hex digits, docs/PROTOCOL.md §8)
        records       how many records that is
        fingerprint   the state's fingerprint (64 hex digits, §8)
        evals         eval figures given at export time ({} if none)
        manifest      the run's manifest (so the run can be opened without anything else)
        task          what a user needs to apply the model (template, labels, ...)
        commands      {"export", "verify"}: the commands that rebuild and check this directory

A checker (verify.py) needs only this file, the base and the log: it opens the manifest,
replays the log up to ``vv``, and compares the weights bit for bit.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seedswarm.protocol import vv as vvs
from seedswarm.protocol.errors import ManifestError
from seedswarm.protocol.manifest import Manifest

from .errors import ModelError

PROVENANCE_FORMAT = 1
PROVENANCE_FILE = "seedswarm.json"
CARD_FILE = "README.md"


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where an export's weights come from: the run, the records, the state they make."""

    manifest: Manifest
    vv: Mapping[str, int]
    fingerprint: str
    evals: Mapping[str, float] = field(default_factory=dict)
    run_ref: str = ""  # how `seedswarm export` names the run ("" -> the run's name)
    log_ref: str = ""  # how `seedswarm verify --log` names the log ("" -> run_ref)

    @property
    def run_id(self) -> str:
        return self.manifest.run_id().hex()

    @property
    def vv_digest(self) -> str:
        return vvs.digest(self.vv)

    @property
    def records(self) -> int:
        return vvs.total(self.vv)

    def commands(self, out: Path) -> dict[str, str]:
        """The commands that rebuild ``out`` and check it against the log."""
        run = self.run_ref or self.manifest.name
        log = self.log_ref or run
        return {
            "export": f"seedswarm export {shlex.quote(run)} --out {shlex.quote(str(out))}",
            "verify": f"seedswarm verify {shlex.quote(str(out))} --log {shlex.quote(log)}",
        }

    def to_json(self, kind: str, out: Path, task: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "format": PROVENANCE_FORMAT,
            "kind": kind,
            "run": {"name": self.manifest.name, "id": self.run_id},
            "base": {"model": self.manifest.model, "hash": self.manifest.base_hash},
            "vv": vvs.normalise(self.vv),
            "vv_digest": self.vv_digest,
            "records": self.records,
            "fingerprint": self.fingerprint,
            "evals": dict(self.evals),
            "manifest": self.manifest.to_dict(),
            "task": dict(task),
            "commands": self.commands(out),
        }


@dataclass(frozen=True, slots=True)
class ExportInfo:
    """What ``seedswarm.json`` of an export directory says (read back)."""

    kind: str
    manifest: Manifest
    vv: dict[str, int]
    vv_digest: str
    fingerprint: str
    records: int
    task: dict[str, Any]
    raw: dict[str, Any]


def write(out: Path, kind: str, prov: Provenance, task: Mapping[str, Any], card: str) -> None:
    """Write ``seedswarm.json`` and the model card into ``out``."""
    data = prov.to_json(kind, out, task)
    (out / PROVENANCE_FILE).write_text(
        json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    (out / CARD_FILE).write_text(card, encoding="utf-8")


def read(path: Path) -> ExportInfo:
    """Read an export directory's ``seedswarm.json``; ModelError with a one-line reason."""
    file = path / PROVENANCE_FILE
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"{path} has no {PROVENANCE_FILE}: not a seedswarm export") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"{file} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != PROVENANCE_FORMAT:
        raise ModelError(f"{file}: not a seedswarm export of format {PROVENANCE_FORMAT}")
    try:
        manifest = Manifest.from_dict(data["manifest"])
        vv = {str(k): int(v) for k, v in dict(data["vv"]).items()}
        info = ExportInfo(
            kind=str(data["kind"]),
            manifest=manifest,
            vv=vv,
            vv_digest=str(data["vv_digest"]),
            fingerprint=str(data["fingerprint"]),
            records=int(data["records"]),
            task=dict(data.get("task") or {}),
            raw=data,
        )
    except (KeyError, TypeError, ValueError, ManifestError) as exc:
        raise ModelError(f"{file}: {exc}") from exc
    if info.manifest.run_id().hex() != str(data.get("run", {}).get("id")):
        raise ModelError(f"{file}: its run id does not match its manifest")
    return info
