"""What each command does, given its settings (daemon/settings.py). The heavy modules load
only when their command runs, so ``seedswarm --help`` stays quick."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .settings import (
    BrokerSettings,
    ClientSettings,
    EvalSettings,
    KeygenSettings,
    LogSettings,
    NodeSettings,
    RelaySettings,
    ReplaySettings,
    SwarmSettings,
    TrainSettings,
)


def train(s: TrainSettings) -> int:
    from . import single

    return single.train(s)


def replay(s: ReplaySettings) -> int:
    from . import single

    return single.replay(s)


def evaluate(s: EvalSettings) -> int:
    from . import single

    return single.evaluate(s)


def run_node(s: NodeSettings) -> int:
    import sys

    import uvloop

    from .node import Node

    logging.getLogger("seedswarm").setLevel(min(logging.getLogger().level, logging.INFO))
    node = Node(s)
    code = uvloop.run(node.run())
    if node.error:
        sys.stderr.write(f"seedswarm node: error: {node.error}\n")
    return code


def run_relay(s: RelaySettings) -> int:
    import sys

    import uvloop

    from .relay import Relay

    logging.getLogger("seedswarm").setLevel(min(logging.getLogger().level, logging.INFO))
    relay = Relay(s)
    code = uvloop.run(relay.run())
    if relay.error:
        sys.stderr.write(f"seedswarm relay: error: {relay.error}\n")
    return code


def run_swarm(s: SwarmSettings) -> int:
    from . import swarm

    return swarm.run_swarm(s)


def show_status(s: ClientSettings) -> int:
    from . import client

    return client.show_status(s)


def show_log(s: LogSettings) -> int:
    from . import client

    return client.show_log(s)


def run_bench(values: dict[str, Any]) -> int:
    from . import bench

    return bench.run_bench(values)


def keygen(s: KeygenSettings) -> int:
    from seedswarm.protocol.signing import NodeKey

    from .console import emit_json

    key = NodeKey.generate()
    if s.out:
        path = Path(s.out)
        path.write_text(key.private_hex() + "\n", encoding="utf-8")
        path.chmod(0o600)
    if s.json:
        emit_json(
            {
                "public": key.public_hex(),
                "private_file": s.out or None,
                **({} if s.out else {"private": key.private_hex()}),
            }
        )
    else:
        print(f"public  {key.public_hex()}")
        if s.out:
            print(f"private key written to {s.out}")
        else:
            print(f"private {key.private_hex()}")
    return 0


def run_broker(s: BrokerSettings) -> int:
    """The embedded broker as a process of its own (handy for tests and quick experiments)."""
    import asyncio
    import signal
    import sys

    import uvloop

    from .broker import EmbeddedBroker

    async def serve() -> None:
        broker = EmbeddedBroker(s.host, s.port)
        await broker.start()
        sys.stdout.write(f"broker listening on {broker.url}\n")
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await broker.stop()

    uvloop.run(serve())
    return 0
