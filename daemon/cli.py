"""The ``seedswarm`` command line.

    seedswarm train   one node, no network: train and write a run directory
    seedswarm replay  rebuild the fine-tuned model from the base and the log
    seedswarm eval    loss / accuracy of a run's model on a held-out file
    seedswarm node    the daemon: train with peers through an MQTT broker
    seedswarm relay   forward every node's frames in one bundle per interval (big swarms)
    seedswarm swarm   start a local swarm (embedded broker + N nodes) and watch it
    seedswarm status  show a node's /status;   seedswarm log   show a node's /log
    seedswarm bench   benchmarks (step, apply, wire, quant, live, join, control)
    seedswarm keygen  make an Ed25519 key pair for a node of a signed run

Every command's settings are a dataclass of daemon/settings.py: its fields are the flags (and
environment variables, and TOML keys for ``node``). Errors that a user can fix print one line
(``seedswarm: error: ...``) and exit with status 2; nothing prints a traceback unless
SEEDSWARM_DEBUG=1.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from seedswarm.protocol.errors import SeedswarmError

from . import commands
from .options import Option, add_options, load_config_file, resolve
from .settings import (
    BrokerSettings,
    ClientSettings,
    EvalSettings,
    KeygenSettings,
    LocalSettings,
    LogSettings,
    MqttSettings,
    NodeSettings,
    RelaySettings,
    ReplaySettings,
    RunSettings,
    SwarmSettings,
    TrainSettings,
    build,
    options_of,
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    help: str
    settings: type | None  # the dataclass its values build; None: a plain dict (bench)
    groups: Sequence[tuple[str, Sequence[Option]]]
    handler: Callable[[Any], int]
    positional: tuple[str, str] | None = None  # (name, help)
    choices: tuple[str, ...] | None = None  # of the positional


def _commands() -> list[Command]:
    from .bench_options import BENCH_OPTIONS, BENCHES, LEARN_OPTIONS

    return [
        Command(
            "train",
            "train one node without a network and write a run directory",
            TrainSettings,
            [
                ("run", options_of(RunSettings)),
                ("node", options_of(LocalSettings)),
                ("train", options_of(TrainSettings)),
            ],
            commands.train,
        ),
        Command(
            "replay",
            "rebuild the fine-tuned model from the base model and the log",
            ReplaySettings,
            [("replay", options_of(ReplaySettings))],
            commands.replay,
            ("run_dir", "a run or node data directory"),
        ),
        Command(
            "eval",
            "evaluate a run's model on held-out data",
            EvalSettings,
            [("eval", options_of(EvalSettings))],
            commands.evaluate,
            ("run_dir", "a run or node data directory"),
        ),
        Command(
            "node",
            "run a node daemon: train with peers through an MQTT broker",
            NodeSettings,
            [
                ("node", options_of(NodeSettings)),
                ("broker", options_of(MqttSettings)),
                ("run", options_of(RunSettings)),
                ("local", options_of(LocalSettings)),
            ],
            commands.run_node,
        ),
        Command(
            "relay",
            "forward every node's frames and presence in one bundle per interval",
            RelaySettings,
            [("relay", options_of(RelaySettings)), ("broker", options_of(MqttSettings))],
            commands.run_relay,
        ),
        Command(
            "swarm",
            "start a local swarm: an embedded broker (or --broker) and N nodes",
            SwarmSettings,
            [("swarm", options_of(SwarmSettings)), ("run", options_of(RunSettings))],
            commands.run_swarm,
        ),
        Command(
            "status",
            "show a node's status",
            ClientSettings,
            [("client", options_of(ClientSettings))],
            commands.show_status,
            ("url", "the node's status URL, e.g. http://127.0.0.1:8470"),
        ),
        Command(
            "log",
            "show a node's log in total order",
            LogSettings,
            [("client", options_of(LogSettings))],
            commands.show_log,
            ("url", "the node's status URL"),
        ),
        Command(
            "broker",
            "run the embedded MQTT broker (amqtt) on its own, until Ctrl+C",
            BrokerSettings,
            [("broker", options_of(BrokerSettings))],
            commands.run_broker,
        ),
        Command(
            "keygen",
            "make an Ed25519 key pair for a node of a signed run",
            KeygenSettings,
            [("keygen", options_of(KeygenSettings))],
            commands.keygen,
        ),
        Command(
            "bench",
            "benchmarks with side-by-side ratios",
            None,
            [("bench", BENCH_OPTIONS), ("learn", LEARN_OPTIONS)],
            commands.run_bench,
            ("which", "which benchmark"),
            BENCHES,
        ),
    ]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    parser = _Parser(
        prog="seedswarm",
        description="Fine-tune a language model across hosts that exchange one byte per step.",
        epilog="Start with: seedswarm swarm --nodes 3   (each command has --help)",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("SEEDSWARM_LOG_LEVEL", "warning"),
        choices=("debug", "info", "warning", "error"),
        help="logging detail",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    table = {}
    for cmd in _commands():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        if cmd.positional is not None:
            name, help_ = cmd.positional
            p.add_argument(name, help=help_, choices=cmd.choices)
        for title, options in cmd.groups:
            add_options(p, options, title)
        table[cmd.name] = cmd
    return parser, table


def main(argv: Sequence[str] | None = None) -> int:
    parser, table = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    # `kill -USR1 <pid>` prints every thread's stack: how to see what a stuck process waits for
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warnings
    cmd = table[args.command]
    try:
        config = load_config_file(getattr(args, "config", None))
        options = [o for _, group in cmd.groups for o in group]
        values = resolve(options, args, config=config)
        if cmd.positional is not None:
            values[cmd.positional[0]] = getattr(args, cmd.positional[0])
        settings = build(cmd.settings, values) if cmd.settings else values
        # torch and transformers load only now: a bad setting is reported in a blink
        from seedswarm.model.loading import quiet_libraries

        quiet_libraries()
        return cmd.handler(settings)
    # OSError: a path the user gave (unwritable, a file for a directory, ...): exit 1, not the
    # 2 of a bad setting
    except (SeedswarmError, OSError) as exc:
        if os.environ.get("SEEDSWARM_DEBUG"):
            raise
        sys.stderr.write(f"seedswarm {args.command}: error: {exc}\n")
        return 2 if isinstance(exc, SeedswarmError) else 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
