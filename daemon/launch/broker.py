"""The embedded broker of ``seedswarm swarm``: amqtt, in the launcher's event loop.

It is the zero-install default for a local swarm. Production swarms and the compose file use
Mosquitto; nothing in the nodes depends on which broker they talk to.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
from typing import Any

from seedswarm.daemon.peer.lifecycle import Lifecycle, Stages, Supervised


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports that were free just now (all held open until all are chosen)."""
    with contextlib.ExitStack() as stack:
        socks = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(n)
        ]
        for s in socks:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]


class _Probes(logging.Filter):
    """amqtt logs a connection that closes before sending anything as an ERROR and a WARNING;
    that is what a probe does (a node's first look at its broker, trouble.py, and health
    checks), not a fault of the broker or the client."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No data to decode MQTT packet fixed header" not in record.getMessage()


class EmbeddedBroker:
    """An amqtt broker on ``host:port``, anonymous."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._broker: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def start(self) -> None:
        from amqtt.broker import Broker

        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("amqtt.broker").addFilter(_Probes())
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }
        self._broker = Broker(config)
        await self._broker.start()

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None


class BrokerService(Supervised):
    """``seedswarm broker``: the embedded broker as a process of its own, until stopped."""

    def __init__(self, host: str, port: int) -> None:
        self.broker = EmbeddedBroker(host, port)
        self.life = Lifecycle("broker", Stages(teardown=30.0))

    async def startup(self) -> None:
        await self.broker.start()
        sys.stdout.write(f"broker listening on {self.broker.url}\n")
        sys.stdout.flush()

    async def main(self) -> None:
        await self.life.stop.wait()

    async def teardown(self) -> None:
        await self.broker.stop()
