"""A Mosquitto broker of the benchmarks' own, on a port of this machine, for one run."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from seedswarm.daemon.errors import ConfigError

from .broker import free_port


def executable() -> str | None:
    """Mosquitto's path where it is installed (Debian's package puts it in /usr/sbin)."""
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )


@contextlib.contextmanager
def mosquitto(port: int, extra: Sequence[str] = ()) -> Iterator[subprocess.Popen[bytes]]:
    """Mosquitto's defaults but persistence (off) and ``sys_interval`` (its counters every
    second), plus the config lines ``extra``; yields the process (bench load reads its CPU)."""
    exe = executable()
    if exe is None:
        raise ConfigError("mosquitto is not installed (apt install mosquitto)")
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "m.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nsys_interval 1\n"
            + "".join(f"{line}\n" for line in extra)
        )
        err_path = Path(tmp) / "m.err"
        with err_path.open("wb") as err:  # a file, not a pipe: a full pipe would block it
            proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=err)
        try:
            _wait_listening(proc, port, err_path)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def broker_for_swarm() -> Iterator[list[str]]:
    """The ``--broker`` option for a ``seedswarm swarm`` a benchmark starts: a Mosquitto of its
    own on a free port while the block runs, or none (the swarm's embedded broker) where
    Mosquitto is not installed."""
    if executable() is None:
        yield []
        return
    port = free_port()
    with mosquitto(port):
        yield ["--broker", f"mqtt://127.0.0.1:{port}"]


def _wait_listening(
    proc: subprocess.Popen[bytes], port: int, err_path: Path, patience: float = 30.0
) -> None:
    """Until mosquitto accepts connections; a clear error if it exits or never listens."""
    deadline = time.monotonic() + patience
    while True:
        if proc.poll() is not None:
            err = err_path.read_text(errors="replace").strip()
            last = err.splitlines()[-1] if err else f"exit status {proc.returncode}"
            raise ConfigError(f"mosquitto on port {port} stopped at start: {last}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"mosquitto did not listen on port {port} within {patience:.0f} s"
                ) from None
            time.sleep(0.05)


def bridge_config(
    name: str, root: str, *, topic_prefix: str = "seedswarm", keepalive: int = 60
) -> list[str]:
    """The lines of a regional Mosquitto's config that bridge it to the root broker ``root``
    (``host:port``), carrying every run under ``topic_prefix`` both ways (README, "Operations:
    more than one broker"). Append them after the regional's own settings: ``connection``
    opens the bridge's section.

    Why each line:
    * ``remote_clientid``: the bridge's client id at the root. It must differ per regional:
      two bridges with one id would take the root's session from each other in turn.
    * ``bridge_protocol_version mqttv50``: the bridge subscribes at the root with No Local (the
      root sends nothing back that came from this regional: no loop) and Retain As Published
      (retained presence stays retained on the far side, so a node that connects anywhere
      gets every node's last presence). Both are MQTT 5 subscription options, so any MQTT 5
      root does this, not only Mosquitto.
    * ``try_private false``: Mosquitto's private "bridge bit", which does the same for MQTT
      3.1.1, is not needed with MQTT 5 and not understood by every root.
    * ``cleansession true``: the root keeps no queue for a regional that is gone; what its nodes
      miss meanwhile they fetch from their peers (gap filling), since the broker is not the log.
    * ``restart_timeout 1 10``: retry the root soon after it comes back (backoff from 1 s to
      10 s instead of Mosquitto's 5 s to 30 s).
    * ``topic <prefix>/# both 1``: records, presence, sync and manifests of every run, at QoS 1.
    """
    return [
        f"connection {name}",
        f"address {root}",
        f"remote_clientid {name}",
        "bridge_protocol_version mqttv50",
        "try_private false",
        "cleansession true",
        f"keepalive_interval {keepalive}",
        "restart_timeout 1 10",
        f"topic {topic_prefix}/# both 1",
    ]
