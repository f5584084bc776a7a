"""``seedswarm status URL`` and ``seedswarm log URL``: a node's endpoint, for a person."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from seedswarm.daemon.console import emit_json, table
from seedswarm.daemon.errors import ConfigError
from seedswarm.daemon.status.schema import NodeStatus

from .offline import print_log
from .settings import ClientSettings, LogSettings


def fetch_json(url: str, timeout: float) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read().decode())
    except urllib.error.HTTPError as exc:
        raise ConfigError(f"{url}: HTTP {exc.code}") from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(f"cannot reach {url}: {reason}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{url} did not answer with JSON") from exc


def _base(url: str) -> str:
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def show_status(s: ClientSettings) -> int:
    raw = fetch_json(_base(s.target) + "/status", s.timeout)
    if s.json:
        emit_json(raw)
        return 0
    try:
        st = NodeStatus.from_json(raw)
    except ValueError as exc:
        raise ConfigError(f"{s.target} did not answer with a seedswarm status ({exc})") from exc
    loss = st.loss.recent
    print(
        f"node {st.node}  run {st.run} ({st.run_id}, {st.mode})  phase {st.phase}"
        f"  ready {'yes' if st.ready else 'no'}"
    )
    print(
        f"fingerprint {st.fingerprint[:16]}  version vector {st.vv_digest}  "
        f"records applied {st.records.applied}  pending {st.records.pending}"
    )
    print(
        f"steps {st.steps.taken}"
        f"{'/' + str(st.steps.limit) if st.steps.limit >= 0 else ''}"
        f"  {st.steps.per_s:.2f} steps/s"
        f"{'' if st.steps.examples is None else f' of {st.steps.examples} examples'}"
        f"  {st.records_per_s:.1f} records/s"
        f"  loss {'-' if loss is None else f'{loss:.4f}'}"
    )
    b = st.broker
    print(
        f"broker {b.url} {b.state} (connects {b.connects}, outbox {b.outbox})"
        f"  dropped {st.dropped_total}  duplicates {st.duplicates}"
    )
    rows = [
        [
            st.node + " (this)",
            "yes",
            "-",
            st.records.held,
            "-",
            st.steps.taken,
            "-" if loss is None else f"{loss:.4f}",
        ]
    ]
    rows.extend(
        [
            p.node,
            "yes" if p.alive else "no",
            f"{p.last_seen_s:.1f}s",
            p.records,
            p.lag,
            p.steps,
            "-" if p.loss is None else f"{p.loss:.4f}",
        ]
        for p in st.peers
    )
    print(table(["node", "alive", "seen", "records", "behind", "steps", "loss"], rows))
    if st.dropped:
        print("dropped: " + ", ".join(f"{r} {sum(c.values())}" for r, c in st.dropped.items()))
    if st.headroom_warning and st.headroom_records is not None:
        print(
            f"WARNING: the state of {st.headroom_tensor} can take only {st.headroom_records:,} "
            "more records of the largest update before it leaves its exact range"
        )
    return 0


def show_log(s: LogSettings) -> int:
    query = urllib.parse.urlencode({"after": s.after, "limit": s.limit})
    data = fetch_json(_base(s.target) + "/log?" + query, s.timeout)
    if s.json:
        emit_json(data)
        return 0
    print_log(data)
    return 0
