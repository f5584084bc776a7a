"""The processes of a ``bench load`` row besides the simulated nodes: the relay and the real
``seedswarm node`` processes, started in their own sessions (no signal to the bench reaches
them: the bench ends them itself), and what the bench reads of them over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seedswarm.daemon.errors import ConfigError
from seedswarm.daemon.status.schema import NodeStatus

from .load_types import RELAY, LoadRow


def env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "seedswarm.daemon.cli", *args],
            stdout=out, stderr=out, env=env(), start_new_session=True,
        )  # fmt: skip


def get_json(url: str, timeout: float = 10.0) -> Any:
    """The JSON at ``url``, or None while it cannot be had."""
    with (
        contextlib.suppress(OSError, ValueError),
        urllib.request.urlopen(url, timeout=timeout) as r,
    ):
        return json.loads(r.read())
    return None


def node_status(url: str, timeout: float = 10.0) -> NodeStatus | None:
    data = get_json(url, timeout)
    return NodeStatus.from_json(data) if data is not None else None


def healthy(url: str, timeout: float = 2.0) -> bool:
    """``/healthz`` answers 200 (the peer's HTTP endpoint is up)."""
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=timeout) as r:
            return int(r.status) == 200
    except (OSError, urllib.error.URLError):
        return False


def end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(slots=True)
class Real:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path


def start_real(
    name: str, i: int, row: LoadRow, steps: int, port: int, manifest: Path, tmp: Path
) -> Real:
    from seedswarm.daemon.launch.broker import free_port

    http = free_port()
    log = tmp / f"{name}.log"
    proc = spawn(
        [
            "node", "--node", name, "--manifest", str(manifest), "--data-dir", str(tmp / name),
            "--http", f"127.0.0.1:{http}", "--broker", f"mqtt://127.0.0.1:{port}",
            "--steps", str(steps), "--step-interval", str(1.0 / row.frame_rate),
            "--max-latency", "0", "--frame-records", "1", "--torch-threads", "1",
            "--shard", f"{i}/{row.real}", "--join-wait", "0.5",
        ],
        log,
    )  # fmt: skip
    return Real(name, proc, f"http://127.0.0.1:{http}", log)


def ready(r: Real, relay: bool) -> bool:
    if r.proc.poll() is not None:
        raise ConfigError(
            f"bench load: real node {r.name} exited:\n{r.log.read_text(errors='replace')[-2000:]}"
        )
    st = node_status(r.url + "/status", 5)
    return st is not None and st.ready and (not relay or st.relays == [RELAY])


async def holds(r: Real, names: list[str], reals: list[Real], steps: int) -> bool:
    st = await asyncio.to_thread(node_status, r.url + "/status", 30)
    if st is None:
        return False
    vv = st.version_vector
    return all(vv.get(n, 0) >= steps for n in [*names, *(x.name for x in reals)])
