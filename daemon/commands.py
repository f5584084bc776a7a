"""The networked commands: node, swarm, status, log, keygen (and bench)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .options import JSON, Option, non_negative, positive, steps_limit
from .runspec import RUN_OPTIONS

NODE_OPTIONS = (
    Option(
        "config", str, "", "a TOML file with any of these settings (keys as the flags, _ for -)"
    ),
    Option(
        "broker",
        str,
        "mqtt://127.0.0.1:1883",
        "MQTT broker URL: mqtt://host:port or mqtts://host:port",
    ),
    Option("username", str, "", "broker user name"),
    Option("password", str, "", "broker password"),
    Option("ca_file", str, "", "CA certificate file for mqtts://"),
    Option("topic_prefix", str, "seedswarm", "first MQTT topic level"),
    Option("data_dir", str, "seedswarm-data", "where the log, manifest and snapshots live"),
    Option("http", str, "127.0.0.1:8470", "status endpoint host:port (port 0: a free port)"),
    Option("advertise", str, "", "status URL to tell peers (default: the bound address)"),
    Option(
        "steps",
        int,
        -1,
        "own ZO steps to take, then keep serving and applying (-1: no limit)",
        check=steps_limit,
    ),
    Option(
        "frame_window",
        float,
        0.2,
        "seconds a frame collects own records before it is sent",
        check=non_negative,
    ),
    Option("frame_records", int, 256, "most records in one frame", check=positive),
    Option("presence_interval", float, 2.0, "seconds between presence heartbeats", check=positive),
    Option("snapshot_every", int, 2000, "records applied between snapshots", check=positive),
    Option(
        "join_wait",
        float,
        1.0,
        "seconds to listen for peers before the first step",
        check=non_negative,
    ),
    Option(
        "drain_timeout",
        float,
        10.0,
        "seconds to wait for the broker's acks at shutdown",
        check=non_negative,
    ),
    Option("key_file", str, "", "this node's Ed25519 private key (hex), for signed runs"),
    Option(
        "torch_threads",
        int,
        0,
        "torch threads on the model thread (0: torch's default)",
        check=non_negative,
    ),
)

CLIENT_OPTIONS = (
    Option("json", bool, False, "print the JSON as the node sent it"),
    Option("timeout", float, 10.0, "seconds to wait for the node", check=positive),
)

LOG_OPTIONS = (
    *CLIENT_OPTIONS,
    Option("after", str, "", "cursor (clock:node:seq) to continue after"),
    Option("limit", int, 50, "records to show", check=positive),
)

BROKER_OPTIONS = (
    Option("host", str, "127.0.0.1", "address to listen on"),
    Option(
        "port",
        int,
        1883,
        "port to listen on (0: a free port, printed at start)",
        check=non_negative,
    ),
)

KEYGEN_OPTIONS = (
    Option("out", str, "", "write the private key here (default: print it)"),
    JSON,
)


def register(sub: Any, subcommand: Callable[..., Any]) -> None:
    from .cli import LOCAL_OPTIONS
    from .swarm import SWARM_OPTIONS

    subcommand(
        sub,
        "node",
        "run a node daemon: train with peers through an MQTT broker",
        [("node", NODE_OPTIONS), ("run", RUN_OPTIONS), ("local", LOCAL_OPTIONS)],
    )
    subcommand(
        sub,
        "swarm",
        "start a local swarm: an embedded broker (or --broker) and N nodes",
        [("swarm", SWARM_OPTIONS), ("run", RUN_OPTIONS)],
    )
    subcommand(
        sub,
        "status",
        "show a node's status",
        [("client", CLIENT_OPTIONS)],
        [("url", {"help": "the node's status URL, e.g. http://127.0.0.1:8470"})],
    )
    subcommand(
        sub,
        "log",
        "show a node's log in total order",
        [("client", LOG_OPTIONS)],
        [("url", {"help": "the node's status URL"})],
    )
    subcommand(
        sub,
        "broker",
        "run the embedded MQTT broker (amqtt) on its own, until Ctrl+C",
        [("broker", BROKER_OPTIONS)],
    )
    subcommand(
        sub,
        "keygen",
        "make an Ed25519 key pair for a node of a signed run",
        [("keygen", KEYGEN_OPTIONS)],
    )
    from .bench import register as register_bench

    register_bench(sub, subcommand)


def handlers() -> dict[str, Callable[[dict[str, Any]], int]]:
    from . import bench, client, swarm

    return {
        "node": run_node,
        "swarm": swarm.run_swarm,
        "status": client.show_status,
        "log": client.show_log,
        "keygen": keygen,
        "broker": run_broker,
        "bench": bench.run_bench,
    }


def run_node(values: dict[str, Any]) -> int:
    import sys

    import uvloop

    from .node import Node

    logging.getLogger("seedswarm").setLevel(min(logging.getLogger().level, logging.INFO))
    node = Node(values)
    code = uvloop.run(node.run())
    if node.error:
        sys.stderr.write(f"seedswarm node: error: {node.error}\n")
    return code


def keygen(values: dict[str, Any]) -> int:
    from seedswarm.protocol.signing import NodeKey

    from .console import emit_json

    key = NodeKey.generate()
    if values["out"]:
        path = Path(values["out"])
        path.write_text(key.private_hex() + "\n", encoding="utf-8")
        path.chmod(0o600)
    if values["json"]:
        emit_json(
            {
                "public": key.public_hex(),
                "private_file": values["out"] or None,
                **({} if values["out"] else {"private": key.private_hex()}),
            }
        )
    else:
        print(f"public  {key.public_hex()}")
        if values["out"]:
            print(f"private key written to {values['out']}")
        else:
            print(f"private {key.private_hex()}")
    return 0


def run_broker(values: dict[str, Any]) -> int:
    """The embedded broker as a process of its own (handy for tests and quick experiments)."""
    import asyncio
    import signal
    import sys

    import uvloop

    from .broker import EmbeddedBroker

    async def serve() -> None:
        broker = EmbeddedBroker(values["host"], values["port"])
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
