"""Helpers for tests that run real processes: brokers, nodes, the CLI.

Nothing here is a fake: brokers are real Mosquitto / amqtt processes, nodes are real
``seedswarm node`` processes talking HTTP and MQTT on loopback. Waits have generous deadlines
(safety nets against hangs on a loaded machine, not speed assertions).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web

T = TypeVar("T")

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
        SEEDSWARM_LOG_LEVEL="info",
    )
    return e


def cli(*args: str, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``seedswarm ARGS`` in a subprocess, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "seedswarm.daemon.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(),
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"seedswarm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
        )
    return proc


def cli_json(*args: str, timeout: float = 600) -> dict[str, Any]:
    proc = cli(*args, "--json", timeout=timeout, check=True)
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def cli_json_all(*commands: tuple[str, ...], timeout: float = 600) -> list[dict[str, Any]]:
    """``cli_json`` of several independent commands at once (each its own process, as users
    on two terminals would run them): most of a short command is importing torch, which a
    second core does alongside."""
    with concurrent.futures.ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: cli_json(*args, timeout=timeout), commands))


_SIGINT_AT_DEFAULT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, '-m', 'seedswarm.daemon.cli', *sys.argv[1:]])"
)


def signalled_cli(
    *args: str,
    ready: Callable[[subprocess.Popen[str]], bool],
    what: str,
    sig: int,
    ready_timeout: float,
    exit_timeout: float,
    interval: float = 0.25,
) -> subprocess.CompletedProcess[str]:
    """Start ``seedswarm ARGS``, wait until ``ready(proc)``, send it ``sig`` (as a user's
    Ctrl-C or ``kill``), and return how it ended; killed if it outlives ``exit_timeout``.
    The command starts with SIGINT at its default, as from a terminal, even where the tests
    run as a background job (which a shell starts with SIGINT ignored, and a child inherits)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SIGINT_AT_DEFAULT, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
    )  # fmt: skip
    try:
        wait_until(lambda: ready(proc), timeout=ready_timeout, what=what, interval=interval)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=exit_timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_until(
    pred: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.25
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def get_json(url: str, timeout: float = 30) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


def get_text(url: str, timeout: float = 30) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def started_broker(kind: str, tmp_path: Path, extra: Sequence[str] = ()) -> Iterator[Broker]:
    """A started broker for one test (``yield from`` it in a fixture); ``extra``: more
    Mosquitto config lines. No Mosquitto where one is expected fails the test, never skips it."""
    if kind == "mosquitto" and MOSQUITTO is None:
        pytest.fail("mosquitto is not installed: apt install mosquitto (scripts/test does)")
    b = Broker(kind, tmp_path / "broker", extra=list(extra))
    b.start()
    try:
        yield b
    finally:
        b.stop()


class Broker:
    """A real broker process on a free port: Mosquitto, or the embedded amqtt as a process."""

    def __init__(
        self,
        kind: str,
        workdir: Path,
        *,
        persistence: bool = False,
        extra: list[str] | None = None,
        bridge: list[str] | None = None,
    ) -> None:
        self.kind = kind
        self.workdir = workdir
        self.port = free_port()
        self.persistence = persistence
        self.extra = extra or []  # more Mosquitto listener settings (TLS, passwords)
        # a bridge section (daemon/mosquitto.bridge_config), last in the config: it ends there
        self.bridge = bridge or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / f"{self.kind}.log").open("ab")
        if self.kind == "mosquitto":
            assert MOSQUITTO is not None, "mosquitto is not installed (apt install mosquitto)"
            conf = self.workdir / "mosquitto.conf"
            lines = [
                f"listener {self.port} 127.0.0.1",
                *(self.extra or ["allow_anonymous true"]),
                "max_queued_messages 100000",
                f"persistence {'true' if self.persistence else 'false'}",
                f"persistence_location {self.workdir}/",
                "sys_interval 1",
                *self.bridge,
            ]
            conf.write_text("\n".join(lines) + "\n")
            cmd = [MOSQUITTO, "-c", str(conf)]
        else:
            cmd = [sys.executable, "-m", "seedswarm.daemon.cli", "broker", "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env())
        log.close()
        wait_until(self._listening, timeout=60, what=f"{self.kind} to listen")

    def _listening(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
            return True
        return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class NodeProc:
    """A ``seedswarm node`` process with its own data directory and status port."""

    def __init__(
        self, name: str, workdir: Path, broker_url: str, *extra: str, steps: int = 30
    ) -> None:
        self.name = name
        self.data_dir = workdir / name
        self.port = free_port()
        self.broker_url = broker_url
        self.steps = steps
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def args(self) -> list[str]:
        return [
            "node", "--node", self.name, "--data-dir", str(self.data_dir),
            "--http", f"127.0.0.1:{self.port}", "--broker", self.broker_url,
            "--steps", str(self.steps), "--torch-threads", "1", "--presence-interval", "0.5",
            "--join-wait", "0.5", *self.extra,
        ]  # fmt: skip

    def start(self, args: list[str] | None = None, extra_env: dict[str, str] | None = None) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "seedswarm.daemon.cli", *(args or self.args())],
            stdout=log, stderr=log, env={**env(), **(extra_env or {})}, start_new_session=True,
        )  # fmt: skip
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self, path: str = "/readyz") -> bool:
        """The node answers 200 on ``path`` (/readyz: joined; /healthz: serving at all)."""
        if not self.alive():
            raise AssertionError(f"node {self.name} exited early:\n{self.tail()}")
        with contextlib.suppress(OSError, ValueError):
            return get_text(self.url + path, timeout=2)[0] == 200
        return False

    def wait_ready(self, timeout: float = 120) -> None:
        wait_until(self.ready, timeout=timeout, what=f"node {self.name} to be ready")

    def status(self, fresh: bool = False) -> dict[str, Any]:
        st: dict[str, Any] = get_json(self.url + "/status" + ("?fresh=1" if fresh else ""))
        return st

    def full_log(self) -> list[tuple[int, str, int, int]]:
        out: list[tuple[int, str, int, int]] = []
        after = ""
        while True:
            page = get_json(f"{self.url}/log?limit=500&after={after}")
            out.extend((r["clock"], r["node"], r["seq"], r["q"]) for r in page["records"])
            if not page["next"]:
                return out
            after = page["next"]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"node {self.name} did not stop on {sig}:\n{self.tail()}"
            ) from None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class HostileClient:
    """``python -m tests.hostile_clients KIND ...`` (tests/hostile_clients.py: paho, not
    seedswarm) while the ``with`` block runs. Leaving the block stops it with SIGTERM, fails the
    test if it does not end within ``stop_s``, and reads the figures it wrote to ``out``."""

    ROOT = Path(__file__).resolve().parents[1]

    def __init__(self, kind: str, out: Path, *args: str, stop_s: float = 30) -> None:
        self.kind, self.out, self.stop_s = kind, out, stop_s
        self.args = [sys.executable, "-m", "tests.hostile_clients", kind, *args, "--out", str(out)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.figures: dict[str, Any] = {}

    def __enter__(self) -> HostileClient:
        self.proc = subprocess.Popen(self.args, cwd=self.ROOT, env=env())
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(self.stop_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the {self.kind} did not stop on SIGTERM") from None
        if exc[0] is None:
            self.figures = json.loads(self.out.read_text())


@contextlib.contextmanager
def running(*procs: NodeProc) -> Iterator[None]:
    """Kill what is still running at the end; first ask it for its stacks (SIGUSR1, see
    daemon/cli/main.py), so a node that hung leaves in its log what it was waiting for."""
    try:
        yield
    finally:
        live = [p for p in procs if p.alive()]
        for p in live:
            assert p.proc is not None
            p.proc.send_signal(signal.SIGUSR1)
        if live:
            time.sleep(1.0)
        for p in live:
            assert p.proc is not None
            p.proc.kill()
            p.proc.wait()


def converged(nodes: list[NodeProc], expect: dict[str, int]) -> bool:
    """True when every node applied exactly ``expect`` and has nothing pending."""
    for n in nodes:
        st = n.status()
        if st["version_vector"] != expect or st["records"]["pending"]:
            return False
    return True


class LoopThread:
    """An event loop on a thread of its own, for servers the test runs beside the nodes."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, make: Callable[[], Awaitable[T]], timeout: float = 30) -> T:
        async def run() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@contextlib.contextmanager
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()


async def serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner
