"""What the swarm launcher (swarm.py) reads from its nodes' statuses: whether they hold the
same records and agree, whether every node is done, another run under the name, and the
table it draws (rows, the weights column, broker errors in words) and its last report."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seedswarm.daemon.console import emit_json, say, table
from seedswarm.daemon.settings import BrokerAddress
from seedswarm.daemon.status.schema import NodeStatus
from seedswarm.daemon.transport.trouble import explain


@dataclass(slots=True)
class Member:
    name: str
    data_dir: Path
    http: str
    proc: asyncio.subprocess.Process | None = None
    status: NodeStatus | None = None
    log_path: Path = Path()


def statuses(members: Sequence[Member]) -> list[NodeStatus] | None:
    sts = [m.status for m in members]
    return None if any(st is None for st in sts) else [st for st in sts if st is not None]


def same_records(members: Sequence[Member]) -> bool:
    """Every node is done stepping, has nothing pending or unpublished, and all hold the
    same records."""
    sts = statuses(members)
    return (
        sts is not None
        and all(st.finished and not st.records.unflushed for st in sts)
        and len({st.vv_digest for st in sts}) == 1
    )


def agreed(members: Sequence[Member]) -> bool:
    """The same records everywhere, and one weight fingerprint, current for those records."""
    sts = statuses(members)
    return (
        sts is not None
        and same_records(members)
        and all(st.fingerprint_vv_digest == st.vv_digest for st in sts)
        and len({st.fingerprint for st in sts}) == 1
    )


def all_done(members: Sequence[Member]) -> bool:
    """Every node took its last step (its log holds its --steps own steps, or more from an
    earlier run: a node says so in ``steps.done``, counting steps, not records, since an
    FZOO step writes K), and every node holds every node's records: its own are in
    everyone's version vector."""
    sts = statuses(members)
    if sts is None or not same_records(members):
        return False
    vv = sts[0].version_vector
    return all(
        st.steps.done and vv.get(m.name, 0) == st.version_vector.get(m.name, 0)
        for m, st in zip(members, sts, strict=True)
    )


def foreign_line(members: Sequence[Member], run_name: str) -> str | None:
    """What to stop with when a node met another manifest under the run's name: the
    settings that differ, as the node named them (or, once a node has waited for the
    other manifest for a while, its run id alone)."""
    for m in members:
        st = m.status
        for f in st.foreign_runs if st is not None else ():
            if not (f.differences or f.error):
                continue
            what = f.error or ", ".join(
                f"{d.field} ours {d.ours} / theirs {d.theirs}" for d in f.differences
            )
            return (
                f"{m.name}: node {', '.join(f.nodes)} under run name {run_name!r} runs "
                f"another manifest (run id {f.run_id}): {what}; it is not in this run. "
                "Stopping: give every node the same run settings, or another --name"
            )
    return None


def rows(members: Sequence[Member]) -> list[list[Any]]:
    table_rows: list[list[Any]] = []
    for m in members:
        st = m.status
        if st is None:
            table_rows.append([m.name, "starting", "-", "-", "-", "-", "-", "-"])
            continue
        first = "-" if st.loss.first is None else f"{st.loss.first:.3f}"
        recent = "-" if st.loss.recent is None else f"{st.loss.recent:.3f}"
        table_rows.append(
            [
                m.name,
                st.phase if st.ready else "joining",
                st.steps.taken,
                f"{first} -> {recent}",
                st.records.applied,
                len([p for p in st.peers if p.alive]),
                st.broker.state,
                weights(members, st),
            ]
        )
    return table_rows


def weights(members: Sequence[Member], st: NodeStatus) -> str:
    """The weights column: a fingerprint differs while nodes hold different records, so
    say what it means: same records -> same weights."""
    sts = [m.status for m in members if m.status is not None]
    same = [o for o in sts if o.fingerprint_vv_digest == st.fingerprint_vv_digest]
    if st.fingerprint_stale:
        return "hashing..."
    if len(same) == len(members) and len({o.fingerprint for o in same}) == 1:
        return f"= all ({st.fingerprint[:8]})"
    return f"{st.fingerprint[:8]}"


def broker_lines(members: Sequence[Member], broker_url: str) -> list[str]:
    """A line per broker error the nodes report while not connected."""
    errors: dict[str, list[str]] = {}
    for m in members:
        st = m.status
        if st is not None and st.broker.state != "connected" and st.broker.last_error:
            errors.setdefault(st.broker.last_error, []).append(m.name)
    out = []
    for error, names in errors.items():
        line = explain(BrokerAddress.parse(broker_url), error)
        out.append(f"broker ({', '.join(names)}): {line}")
    return out


def report(
    members: Sequence[Member], code: int, *, as_json: bool, base: Path, run_id: str, broker_url: str
) -> None:
    """The swarm's last word: each node's data and exit code, and whether they agree."""
    prints = {m.status.fingerprint for m in members if m.status is not None}
    agree = len(prints) == 1 and all(m.status is not None for m in members)
    if as_json:
        emit_json(
            {
                "ok": code == 0,
                "dir": str(base),
                "run_id": run_id,
                "agree": agree,
                "fingerprint": next(iter(prints)) if agree else None,
                "nodes": [
                    dict(
                        m.status.to_json() if m.status is not None else {},
                        data_dir=str(m.data_dir),
                        log=str(m.log_path),
                        exit_code=m.proc.returncode if m.proc else None,
                    )
                    for m in members
                ],
            }
        )
        return
    say("")
    say(
        table(
            ["node", "data", "status endpoint (while running)", "exit"],
            [
                [
                    m.name,
                    str(m.data_dir),
                    f"http://{m.http}",
                    m.proc.returncode if m.proc else "-",
                ]
                for m in members
            ],
        )
    )
    sts = [m.status for m in members if m.status is not None]
    records = max((st.records.applied for st in sts), default=0)
    never = [st.node for st in sts if not st.broker.connects]
    if never:
        say(
            f"{', '.join(never)} never reached the broker {broker_url}"
            + (f" ({sts[0].broker.last_error})" if sts and sts[0].broker.last_error else "")
        )
    if agree and records == 0:
        say("the nodes hold no records: nothing was trained, the weights are the base's")
    elif agree:
        say(
            f"all nodes agree: the same {records} records, so the same weights "
            f"(fingerprint {next(iter(prints))})"
        )
    elif len({st.vv_digest for st in sts}) > 1:
        say(
            "the nodes stopped holding different records (the settling was cut short); "
            "each one's data directory is consistent, and a restart catches up"
        )
    say(f"replay any node with: seedswarm replay {members[0].data_dir} --out model")
