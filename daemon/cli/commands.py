"""What each command does, given its settings (daemon/settings.py, cli/settings.py).

The heavy modules load only when their command runs, and torch only for the commands that run a
model (``_models``), so ``seedswarm --help``, ``status``, ``log`` and a bad flag answer at once."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from seedswarm.daemon.bench.settings import BenchSettings
from seedswarm.daemon.settings import NodeSettings, RelaySettings, SwarmSettings

from .settings import (
    BrokerSettings,
    ClientSettings,
    EvalSettings,
    KeygenSettings,
    LogExportSettings,
    LogImportSettings,
    LogSettings,
    ReplaySettings,
    TrainSettings,
)


def _models() -> None:
    """torch and transformers, quietened: for the commands that run a model."""
    from seedswarm.model.loading import quiet_libraries

    quiet_libraries()


def train(s: TrainSettings) -> int:
    _models()
    from . import single

    return single.train(s)


def replay(s: ReplaySettings) -> int:
    _models()
    from . import single

    return single.replay(s)


def evaluate(s: EvalSettings) -> int:
    _models()
    from . import single

    return single.evaluate(s)


class _Service(Protocol):
    @property
    def error(self) -> str: ...

    async def run(self) -> int: ...


def _serve(command: str, service: _Service) -> int:
    """Run a long-running command's service under its lifecycle (daemon/peer/lifecycle.py) on
    uvloop; print its error, if any, in one line."""
    import sys

    import uvloop

    code = uvloop.run(service.run())
    if service.error:
        sys.stderr.write(f"seedswarm {command}: error: {service.error}\n")
    return code


def run_node(s: NodeSettings) -> int:
    _models()
    from seedswarm.daemon.node.node import Node

    logging.getLogger("seedswarm").setLevel(min(logging.getLogger().level, logging.INFO))
    return _serve("node", Node(s))


def run_relay(s: RelaySettings) -> int:
    from seedswarm.daemon.relay.relay import Relay

    logging.getLogger("seedswarm").setLevel(min(logging.getLogger().level, logging.INFO))
    return _serve("relay", Relay(s))


def run_swarm(s: SwarmSettings) -> int:
    _models()
    from seedswarm.daemon.launch.swarm import Swarm

    return _serve("swarm", Swarm(s))


def show_status(s: ClientSettings) -> int:
    from . import client, offline

    if offline.is_data_dir(s.target):
        return offline.show_status(s)
    return client.show_status(s)


def show_log(s: LogSettings) -> int:
    from . import client, offline

    if offline.is_data_dir(s.target):
        return offline.show_log(s)
    return client.show_log(s)


def export_log(s: LogExportSettings) -> int:
    from . import portable

    return portable.export_log(s)


def import_log(s: LogImportSettings) -> int:
    from . import portable

    return portable.import_log(s)


def run_bench(s: BenchSettings) -> int:
    _models()
    from seedswarm.daemon.bench.run import run_bench

    return run_bench(s)


def keygen(s: KeygenSettings) -> int:
    from seedswarm.daemon.console import emit_json
    from seedswarm.protocol.signing import NodeKey

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
    from seedswarm.daemon.launch.broker import BrokerService

    return _serve("broker", BrokerService(s.host, s.port))
