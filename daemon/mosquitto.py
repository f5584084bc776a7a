"""A Mosquitto broker of the benchmarks' own, on a port of this machine, for one run."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigError


@contextlib.contextmanager
def mosquitto(port: int) -> Iterator[None]:
    exe = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if exe is None:
        raise ConfigError("mosquitto is not installed (apt install mosquitto)")
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "m.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nsys_interval 1\n"
        )
        err_path = Path(tmp) / "m.err"
        with err_path.open("wb") as err:  # a file, not a pipe: a full pipe would block it
            proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=err)
        try:
            _wait_listening(proc, port, err_path)
            yield
        finally:
            proc.terminate()
            proc.wait(10)


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
