"""Where things are: a broker's URL, the status endpoint's address, a shard, a device."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from .errors import ConfigError


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where a peer's broker is. The scheme picks the transport (daemon/transport/choose.py):
    ``mqtt``/``mqtts`` a real broker, ``memory`` an in-process bus named by the host part
    (several peers in one process: tests, and the in-process runs of the benchmarks)."""

    scheme: str  # mqtt, mqtts or memory
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    @classmethod
    def parse(cls, url: str, *, username: str = "", password: str = "") -> BrokerAddress:
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts", "memory"):
            raise ConfigError(
                f"--broker {url!r}: use mqtt://host:port or mqtts://host:port (or memory://NAME "
                "for peers in one process)"
            )
        if not parts.hostname:
            raise ConfigError(f"--broker {url!r} names no host")
        if parts.scheme == "memory":
            return cls("memory", parts.hostname, 0)
        try:
            port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError:
            _, _, text = parts.netloc.rpartition(":")
            what = "is not in 1..65535" if text.isdigit() else "is not a number"
            raise ConfigError(f"--broker {url!r}: the port {text!r} {what}") from None
        user = username or (unquote(parts.username) if parts.username else None)
        pw = password or (unquote(parts.password) if parts.password else None)
        return cls(parts.scheme, parts.hostname, port, user or None, pw or None)

    def display(self) -> str:
        if self.scheme == "memory":
            return f"memory://{self.host}"
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` of the status endpoint (port 0: any free port)."""
    host, _, port = text.rpartition(":")
    if not host:
        host = "127.0.0.1"
    try:
        value = int(port)
    except ValueError:
        raise ConfigError(
            f"--http {text!r}: write it as host:port, the port a number (0 picks a free one)"
        ) from None
    if not 0 <= value <= 65535:
        raise ConfigError(
            f"--http {text!r}: the port {value} is not in 0..65535 (0 picks a free one)"
        )
    return host.strip("[]"), value


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, k = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: write it as i/k, e.g. 0/3") from None
    if not (k >= 1 and 0 <= i < k):
        raise ConfigError(f"--shard {text}: need 0 <= i < k")
    return i, k


def check_device(name: str) -> None:
    if name not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", name):
        raise ConfigError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
