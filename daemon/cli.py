"""The ``seedswarm`` command line.

    seedswarm train   one node, no network: train and write a run directory
    seedswarm replay  rebuild the fine-tuned model from the base and the log
    seedswarm eval    loss / accuracy of a run's model on a held-out file
    seedswarm node    the daemon: train with peers through an MQTT broker
    seedswarm swarm   start a local swarm (embedded broker + N nodes) and watch it
    seedswarm status  show a node's /status;   seedswarm log   show a node's /log
    seedswarm bench   speed benchmarks (step, apply, wire)
    seedswarm keygen  make an Ed25519 key pair for a node of a signed run

Errors that a user can fix print one line (``seedswarm: error: ...``) and exit with status 2;
nothing prints a traceback unless SEEDSWARM_DEBUG=1.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from seedswarm.protocol.errors import SeedswarmError

from .errors import ConfigError
from .options import (
    BASE_OVERRIDE,
    DEVICE,
    JSON,
    KERNEL,
    Option,
    add_options,
    load_config_file,
    non_negative,
    positive,
    resolve,
)
from .runspec import RUN_OPTIONS

LOCAL_OPTIONS = (
    Option("node", str, "n0", "this node's id (A-Z a-z 0-9 _ -)"),
    Option("batch_size", int, 16, "examples per forward pass", check=positive),
    DEVICE,
    KERNEL,
    Option("amp", bool, False, "run forward passes in bf16 autocast on GPU (weights stay fp32)"),
    Option("shard", str, "0/1", "use shard i of k of the training data (i/k)"),
)

TRAIN_OPTIONS = (
    Option("steps", int, 200, "ZO steps to take", check=non_negative),
    Option("out", str, "", "run directory to write (required)"),
    Option("eval", str, "", "held-out data to evaluate on (same format as --data)"),
    Option(
        "eval_every",
        int,
        0,
        "evaluate every N steps (0: at start and end only)",
        check=non_negative,
    ),
    Option(
        "eval_limit", int, 0, "evaluate on the first N examples only (0: all)", check=non_negative
    ),
    Option("frame_records", int, 256, "records per frame in the log", check=positive),
    JSON,
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


Handler = Callable[[dict[str, Any]], int]


def _subcommand(
    sub: Any,
    name: str,
    help_: str,
    groups: Sequence[tuple[str, Sequence[Option]]],
    positionals: Sequence[tuple[str, dict[str, Any]]] = (),
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_, description=help_)
    for pname, kwargs in positionals:
        p.add_argument(pname, **kwargs)
    for title, options in groups:
        add_options(p, options, title)
    p.set_defaults(_groups=groups, _command=name)
    return p


REPLAY_OPTIONS = (
    Option("out", str, "", "directory to save the fine-tuned model to (save_pretrained)"),
    Option(
        "order", str, "log", "apply records in log order or shuffled", choices=("log", "shuffled")
    ),
    Option("shuffle_seed", int, 0, "seed of the shuffled order"),
    Option("batch", int, 256, "records applied per pass over the weights", check=positive),
    BASE_OVERRIDE,
    DEVICE,
    KERNEL,
    JSON,
)

EVAL_OPTIONS = (
    Option("data", str, "", "held-out data (.txt .jsonl .csv .tsv)"),
    Option("limit", int, 0, "first N examples only (0: all)", check=non_negative),
    Option("batch_size", int, 64, "examples per forward pass", check=positive),
    Option(
        "compare_base",
        bool,
        False,
        "also evaluate the base model on the same examples (what fine-tuning changed)",
    ),
    BASE_OVERRIDE,
    DEVICE,
    KERNEL,
    JSON,
)


def build_parser() -> argparse.ArgumentParser:
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
    _subcommand(
        sub,
        "train",
        "train one node without a network and write a run directory",
        [("run", RUN_OPTIONS), ("node", LOCAL_OPTIONS), ("train", TRAIN_OPTIONS)],
    )
    _subcommand(
        sub,
        "replay",
        "rebuild the fine-tuned model from the base model and the log",
        [("replay", REPLAY_OPTIONS)],
        [("run_dir", {"help": "a run or node data directory"})],
    )
    _subcommand(
        sub,
        "eval",
        "evaluate a run's model on held-out data",
        [("eval", EVAL_OPTIONS)],
        [("run_dir", {"help": "a run or node data directory"})],
    )
    from . import commands

    commands.register(sub, _subcommand)
    return parser


def _handlers() -> dict[str, Handler]:
    from . import commands, single

    handlers: dict[str, Handler] = {
        "train": _train_handler,
        "replay": single.replay,
        "eval": single.evaluate,
    }
    handlers.update(commands.handlers())
    return handlers


def _train_handler(values: dict[str, Any]) -> int:
    from . import single

    if not values["out"]:
        raise ConfigError(
            "train needs --out RUN_DIR (where to write the manifest, log and snapshot)"
        )
    return single.train(values)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    # `kill -USR1 <pid>` prints every thread's stack: how to see what a stuck process waits for
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    from seedswarm.model.loading import quiet_libraries

    quiet_libraries()
    try:
        config = load_config_file(getattr(args, "config", None))
        options = [o for _, group in args._groups for o in group]
        values = resolve(options, args, config=config)
        for pname in ("run_dir", "url", "which"):
            if hasattr(args, pname):
                values[pname] = getattr(args, pname)
        return _handlers()[args.command](values)
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
