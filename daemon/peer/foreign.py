"""Another manifest under this run's name: which settings differ, field by field.

Nodes given the same run settings build the same manifest and meet under the run's name; a
node started with another ``--lr`` (say) builds another manifest, so another run id, under the
same name. The session notices it from that node's presence (``ForeignRun``); the run id alone
does not say what differs. Every node publishes its manifest retained on
``manifest/<run id>`` (docs/PROTOCOL.md §7), so the driver fetches the other one by its id
(``protocol.retained``), checks it by its hash, and names each setting that differs, ours and
theirs. The node's log says it, and ``/status`` carries it (``foreign_runs``), so the swarm
launcher can stop with that line.

``ForeignRuns`` is the bookkeeping: the run ids seen (at most ``MAX_RUNS``), who spoke for
them, and what their manifests say once fetched. It does no I/O: the driver subscribes and
feeds it the retained messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from seedswarm.daemon.status.schema import ForeignRunStatus, SettingDifference
from seedswarm.protocol.errors import DecodeError, ManifestError
from seedswarm.protocol.manifest import Manifest
from seedswarm.protocol.retained import read_retained_manifest

MAX_RUNS = 64  # other run ids remembered under one run name (each reported once)
MAX_NODES = 16  # nodes named per other run
ABSENT = "(absent)"


def differences(ours: Manifest, theirs: Manifest) -> list[SettingDifference]:
    """Every setting in which two manifests differ, as ``task.seq_len`` for nested ones."""
    out: list[SettingDifference] = []
    _diff("", ours.to_dict(), theirs.to_dict(), out)
    return out


def _diff(prefix: str, a: dict[str, Any], b: dict[str, Any], out: list[SettingDifference]) -> None:
    for key in sorted(a.keys() | b.keys()):
        x, y = a.get(key, ABSENT), b.get(key, ABSENT)
        if x == y:
            continue
        name = f"{prefix}{key}"
        if isinstance(x, dict) and isinstance(y, dict):
            _diff(name + ".", x, y, out)
        else:
            out.append(SettingDifference(name, _show(x), _show(y)))


def _show(value: Any) -> str:
    if value == ABSENT:
        return ABSENT
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 64 else text[:61] + "..."


def describe(diffs: list[SettingDifference]) -> str:
    """``lr ours 0.003 / theirs 0.001, task.seq_len ours 64 / theirs 128``"""
    return ", ".join(f"{d.field} ours {d.ours} / theirs {d.theirs}" for d in diffs)


@dataclass(slots=True)
class _Run:
    nodes: list[str] = field(default_factory=list)
    manifest: Manifest | None = None
    differences: list[SettingDifference] = field(default_factory=list)
    error: str = ""  # a retained manifest this node cannot take part in


class ForeignRuns:
    """The other run ids met under this run's name (see the module docstring)."""

    def __init__(self, manifest: Manifest, prefix: str) -> None:
        self.manifest = manifest
        self.prefix = prefix
        self._runs: dict[bytes, _Run] = {}

    def seen(self, run_id: bytes, node: str) -> bool:
        """``node`` speaks for ``run_id``; True when that run id is new (fetch its manifest)."""
        run = self._runs.get(run_id)
        if run is None:
            if len(self._runs) >= MAX_RUNS:
                return False
            run = self._runs[run_id] = _Run()
            run.nodes.append(node)
            return True
        if node not in run.nodes and len(run.nodes) < MAX_NODES:
            run.nodes.append(node)
        return False

    def pending(self) -> list[bytes]:
        """Run ids whose manifest has not come yet (the driver subscribes to them)."""
        return [rid for rid, run in self._runs.items() if run.manifest is None and not run.error]

    def offer(self, topic: str, payload: bytes) -> tuple[bytes, str] | None:
        """A retained message on ``<prefix>/+/manifest/<run id>``: None when it is no news,
        else the run id and what to log. Raises ``ProtocolError`` (with the reason to count
        under ``invalid``) for bytes that are no manifest of that run id (§9's manifest rows)."""
        rid_hex = topic.rsplit("/", 1)[-1]
        try:
            run_id = bytes.fromhex(rid_hex)
        except ValueError:
            raise DecodeError(f"topic {topic[:120]!r}", reason="bad_topic") from None
        run = self._runs.get(run_id)
        if run is None or run.manifest is not None or run.error:
            return None
        try:
            theirs = read_retained_manifest(topic, payload, prefix=self.prefix, run_id=run_id)
        except ManifestError as exc:  # the run's manifest, but not one this node can read
            run.error = f"a manifest this node cannot take part in: {exc}"
            return run_id, run.error
        if theirs is None:
            return None  # a cleared retained message
        run.manifest = theirs
        run.differences = differences(self.manifest, theirs)
        return run_id, describe(run.differences)

    def statistics(self) -> list[ForeignRunStatus]:
        return [
            ForeignRunStatus(
                run_id=rid.hex(),
                nodes=list(run.nodes),
                manifest_known=run.manifest is not None,
                differences=list(run.differences),
                error=run.error,
            )
            for rid, run in self._runs.items()
        ]
