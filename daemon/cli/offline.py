"""``seedswarm status DIR`` and ``seedswarm log DIR``: a data directory read from its files.

A node that has stopped (or a ``train`` run) still has everything worth seeing on disk: the
manifest, the log (SQLite), snapshots with their fingerprints, its evaluations. This reads
them without torch and without the node, so it answers at once, whether the node runs or not.
A swarm's directory (``swarm-default``) holds one data directory per node: ``status`` shows
each of them.

What cannot be known without the model is said as such: the fingerprint of the weights is the
newest snapshot's, and only when that snapshot holds every record of the log; otherwise
``seedswarm replay DIR`` computes it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from seedswarm.daemon.console import emit_json, table
from seedswarm.daemon.errors import ConfigError
from seedswarm.daemon.store.datadir import EVALS, LOG, DataDir
from seedswarm.protocol.log import OrderKey
from seedswarm.protocol.vv import digest

from .settings import ClientSettings, LogSettings

_HOST_PORT = re.compile(r"[\w.-]+:\d+(/.*)?")

# what a row of the log means, printed under the table
LOG_COLUMNS = (
    "clock: the Lamport clock of the record's frame; (clock, node, seq) is the order every node shows",
    "node:  the record's author",
    "seq:   the author's record number (0, 1, 2, ...; an FZOO step writes K consecutive ones)",
    "q:     the signed byte: the record moves every trainable weight by -q update units along its random direction (theta <- theta - u*q*z(seed))",
)


def is_data_dir(target: str) -> bool:
    """True for a directory on this machine; False for a status URL (``http://...`` or
    ``host:port``). Anything else is an error that says which was expected."""
    if "://" in target:
        return False
    if Path(target).expanduser().is_dir():
        return True
    if _HOST_PORT.fullmatch(target):
        return False
    raise ConfigError(
        f"{target!r} is neither a data directory here nor a status URL (http://HOST:PORT)"
    )


def _node_dirs(root: Path) -> list[Path]:
    """The data directories a swarm's directory holds (``n0``, ``n1``, ...), by name."""
    return sorted(p for p in root.iterdir() if (p / LOG).is_file())


def describe(root: Path) -> dict[str, Any]:
    """Everything ``status DIR`` shows of one data directory, as plain values."""
    d = DataDir(root)
    manifest, log, beyond = d.load()
    vv = log.held()
    k = manifest.directions
    inputs = d.inputs()
    snap = d.latest_snapshot(manifest.run_id())
    fingerprint = None
    if snap is not None and snap.version_vector == vv:
        fingerprint = snap.fingerprint
    evals = _evals(root / EVALS)
    return {
        "dir": str(root),
        "node": inputs.node if inputs is not None else None,
        "run": manifest.name,
        "run_id": manifest.run_id().hex(),
        "mode": "open" if manifest.open_mode else "signed",
        "model": manifest.model,
        "estimator": manifest.estimator,
        "records_per_step": k,
        "version_vector": dict(sorted(vv.items())),
        "vv_digest": digest(vv),
        "records": sum(vv.values()),
        "steps": {n: c // k for n, c in sorted(vv.items())},
        "beyond_gaps": beyond,
        "fingerprint": fingerprint,
        "snapshot": None
        if snap is None
        else {
            "records": snap.records,
            "fingerprint": snap.fingerprint,
            "vv_digest": digest(snap.version_vector),
            "path": str(snap.path),
        },
        "data": inputs.data if inputs is not None else None,
        "eval_data": (inputs.eval or None) if inputs is not None else None,
        "eval": evals[-1] if evals else None,
        "eval_points": len(evals),
    }


def _evals(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a torn last line: the node cuts it when it starts again
    return out


def show_status(s: ClientSettings) -> int:
    root = Path(s.target).expanduser()
    if (root / LOG).is_file():
        info = describe(root)
        if s.json:
            emit_json(info)
        else:
            _print_one(info)
        return 0
    nodes = _node_dirs(root)
    if not nodes:
        raise ConfigError(
            f"{root} holds no log ({LOG}): not a data directory, nor a swarm's directory"
        )
    infos = [describe(p) for p in nodes]
    if s.json:
        emit_json({"dir": str(root), "nodes": infos})
        return 0
    _print_swarm(root, infos)
    return 0


def _steps_line(info: dict[str, Any]) -> str:
    per = ", ".join(f"{n} {c}" for n, c in info["steps"].items()) or "none"
    k = info["records_per_step"]
    return f"{per}  ({info['estimator']}: {k} record{'s' * (k > 1)} a step)"


def _weights_line(info: dict[str, Any]) -> str:
    if info["fingerprint"] is not None:
        return f"fingerprint {info['fingerprint'][:16]}  (its snapshot holds every record)"
    snap = info["snapshot"]
    have = "no snapshot" if snap is None else f"the newest snapshot holds {snap['records']}"
    return (
        f"{have} of the {info['records']} records; `seedswarm replay {info['dir']}` gives the "
        "fingerprint of all"
    )


def _print_one(info: dict[str, Any]) -> None:
    who = f"node {info['node']}" if info["node"] else "a node"
    print(
        f"{info['dir']}: {who} of run {info['run']} ({info['run_id']}, {info['mode']}), "
        f"model {info['model']}"
    )
    print("read from the data directory (a running node answers at its status URL)")
    vv = ", ".join(f"{n} {c}" for n, c in info["version_vector"].items()) or "none"
    print(f"records  {info['records']}: {vv}  (version vector {info['vv_digest']})")
    print(f"steps    {_steps_line(info)}")
    print(f"weights  {_weights_line(info)}")
    ev = info["eval"]
    if ev is not None:
        acc = "" if ev.get("accuracy") is None else f"  accuracy {ev['accuracy']:.4f}"
        print(
            f"eval     loss {ev['loss']:.4f}{acc} at {ev['records']} records "
            f"({info['eval_points']} points in {EVALS})"
        )
    if info["beyond_gaps"]:
        print(
            f"note     {info['beyond_gaps']} stored frames lie beyond a gap in their node's "
            "records: not part of the log"
        )


def _print_swarm(root: Path, infos: list[dict[str, Any]]) -> None:
    first = infos[0]
    print(f"{root}: {len(infos)} nodes of run {first['run']} ({first['run_id']})")
    rows = []
    for info in infos:
        ev = info["eval"]
        rows.append(
            [
                Path(info["dir"]).name,
                info["records"],
                info["steps"].get(info["node"] or Path(info["dir"]).name, 0),
                info["vv_digest"],
                (info["fingerprint"] or "-")[:12],
                "-" if ev is None else f"{ev['loss']:.4f}",
            ]
        )
    print(table(["node", "records", "own steps", "version vector", "fingerprint", "eval"], rows))
    digests = {i["vv_digest"] for i in infos}
    prints = {i["fingerprint"] for i in infos}
    if len(digests) == 1 and len(prints) == 1 and None not in prints:
        print("every node holds the same records and the same weights")
    elif len(digests) == 1:
        print("every node holds the same records (so the same weights: the grid is exact)")
    else:
        print("the nodes hold different records (they stopped before they had each other's)")


def show_log(s: LogSettings) -> int:
    root = Path(s.target).expanduser()
    _, log, _ = DataDir(root).load()
    after: OrderKey | None = None
    if s.after:
        after = parse_cursor(s.after)
    records = []
    for r in log.ordered(after):
        records.append({"clock": r.clock, "node": r.node, "seq": r.seq, "q": r.q})
        if len(records) >= s.limit:
            break
    last = records[-1] if len(records) == s.limit else None
    cursor = f"{last['clock']}:{last['node']}:{last['seq']}" if last else None
    page = {"records": records, "next": cursor, "total": log.held_count()}
    if s.json:
        emit_json(page)
        return 0
    print_log(page)
    return 0


def parse_cursor(text: str) -> OrderKey:
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        return int(parts[0]), parts[1], int(parts[2])
    except ValueError:
        raise ConfigError(f"--after {text!r}: write it as clock:node:seq") from None


def print_log(page: dict[str, Any]) -> None:
    """A page of the log as a table, and what its columns mean."""
    rows = [[r["clock"], r["node"], r["seq"], r["q"]] for r in page["records"]]
    print(table(["clock", "node", "seq", "q"], rows))
    more = f"; next: --after {page['next']}" if page["next"] else ""
    print(f"{len(rows)} of {page['total']} records{more}")
    print()
    for line in LOG_COLUMNS:
        print(line)
