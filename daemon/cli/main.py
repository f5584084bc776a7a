"""The ``seedswarm`` command line.

    seedswarm swarm   start a local swarm (embedded broker + N nodes) and watch it
    seedswarm node    the daemon: train with peers through an MQTT broker
    seedswarm train   one node, no network: train and write a run directory
    seedswarm status  a node's status: its URL while it runs, its data directory after
    seedswarm log     a node's log in total order (URL or data directory); ``log export`` /
                      ``log import``: the portable log file (docs/PROTOCOL.md §11)
    seedswarm eval    loss / accuracy of a run's model on held-out data
    seedswarm replay  rebuild the fine-tuned model from the base and the log
    seedswarm export  the run's model as directories transformers / peft / sentence-transformers load
    seedswarm verify  check that an export's weights are exactly what a log makes
    seedswarm relay   forward every node's frames in one bundle per interval (big swarms)
    seedswarm broker  the embedded MQTT broker on its own
    seedswarm keygen  make an Ed25519 key pair for a node of a signed run
    seedswarm bench   benchmarks (step, apply, wire, quant, live, join, control, load, learn)

The table in ``_commands`` holds one entry per command: its settings dataclass (daemon/settings.py,
cli/settings.py, bench/settings.py), whose fields are the flags (and environment variables, and
TOML keys for ``node``), and its handler (cli/commands.py). A new command is one entry there and
one handler.

Help is short: each command shows its common options, ``--help-all`` every one. Errors that a
user can fix print one line (``seedswarm CMD: error: ...``, with "did you mean" where a close
name exists) and exit with status 2; nothing prints a traceback unless SEEDSWARM_DEBUG=1. Flags
are never abbreviated (``--node`` is not ``--nodes``). Only commands that run a model import
torch, so ``--help``, ``status`` and ``log`` answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from seedswarm.daemon.bench.settings import BENCHES, BenchSettings, LearnSettings
from seedswarm.daemon.errors import BenchError
from seedswarm.daemon.options import Option, add_options, load_config_file, resolve, suggest
from seedswarm.daemon.settings import (
    LocalSettings,
    MqttSettings,
    NodeSettings,
    RelaySettings,
    RunSettings,
    SwarmSettings,
    build,
    options_of,
)
from seedswarm.protocol.errors import SeedswarmError

from . import commands
from .export import ExportSettings, export_run
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
from .verify import VerifySettings, verify_run

HELP_ALL = "--help-all"


class _Parser(argparse.ArgumentParser):
    """argparse that never abbreviates a flag and reports a usage error in one line, naming
    the command and, where one is close, what was meant."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        message = _with_suggestion(self, message)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _with_suggestion(parser: argparse.ArgumentParser, message: str) -> str:
    """argparse's message, with "did you mean" for an unknown flag or a misspelt choice."""
    if message.startswith("unrecognized arguments: "):
        flags = [a for a in message.split(": ", 1)[1].split() if a.startswith("--")]
        if flags:
            name = flags[0].split("=", 1)[0]
            known = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
            return f"unknown option {name}{suggest(name, known)}"
    if "invalid choice: " in message:
        bad = message.split("invalid choice: ", 1)[1].split(" (choose", 1)[0].strip("'")
        choices = [str(c) for a in parser._actions if a.choices for c in a.choices]
        hint = suggest(bad, choices)
        if hint:
            return message.split(" (choose", 1)[0] + hint
    return message


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    help: str
    section: str  # where the top-level help lists it
    settings: type  # the dataclass its values build
    groups: Sequence[tuple[str, Sequence[Option]]]
    handler: Callable[[Any], int]
    positional: tuple[str, str] | None = None  # (name, help)
    choices: tuple[str, ...] | None = None  # of the positional
    actions: Sequence[Command] = field(default_factory=tuple)  # `log export`, `log import`


SECTIONS = ("train", "inspect", "operate", "measure")


def _bench_groups() -> list[tuple[str, Sequence[Option]]]:
    """bench's options, one group per benchmark (their help says which, ``step: ...``); the
    shared ones first, and only those in the short help."""
    general: list[Option] = []
    by_bench: dict[str, list[Option]] = {}
    for opt in [*options_of(BenchSettings), *options_of(LearnSettings)]:
        which, sep, _ = opt.help.partition(":")
        if sep and which in BENCHES:
            by_bench.setdefault(which, []).append(dataclasses.replace(opt, advanced=True))
        else:
            general.append(opt)
    return [("bench", general), *((f"bench {b}", by_bench[b]) for b in BENCHES if b in by_bench)]


def _commands() -> list[Command]:
    client = [("client", options_of(ClientSettings))]
    return [
        Command(
            "swarm",
            "start a local swarm: an embedded broker (or --broker) and N nodes, and watch it",
            "train",
            SwarmSettings,
            [("swarm", options_of(SwarmSettings)), ("run", options_of(RunSettings))],
            commands.run_swarm,
        ),
        Command(
            "node",
            "run a node daemon: train with peers through an MQTT broker",
            "train",
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
            "train",
            "train one node without a network and write a run directory",
            "train",
            TrainSettings,
            [
                ("train", options_of(TrainSettings)),
                ("run", options_of(RunSettings)),
                ("node", options_of(LocalSettings)),
            ],
            commands.train,
        ),
        Command(
            "status",
            "show a node's status: from its URL while it runs, or from its data directory",
            "inspect",
            ClientSettings,
            client,
            commands.show_status,
            ("target", "a status URL (http://127.0.0.1:8470) or a data directory"),
        ),
        Command(
            "log",
            "show a node's log in total order; export or import it as one file",
            "inspect",
            LogSettings,
            [],
            commands.show_log,
            actions=(
                Command(
                    "show",
                    "show a node's log in total order (the default: seedswarm log TARGET)",
                    "inspect",
                    LogSettings,
                    [("log", options_of(LogSettings))],
                    commands.show_log,
                    ("target", "a status URL (http://127.0.0.1:8470) or a data directory"),
                ),
                Command(
                    "export",
                    "write a data directory's log to one file (docs/PROTOCOL.md §11)",
                    "inspect",
                    LogExportSettings,
                    [("export", options_of(LogExportSettings))],
                    commands.export_log,
                    ("run_dir", "a run or node data directory"),
                ),
                Command(
                    "import",
                    "make a data directory from a log file (then: seedswarm replay DIR)",
                    "inspect",
                    LogImportSettings,
                    [("import", options_of(LogImportSettings))],
                    commands.import_log,
                    ("file", "a log file written by seedswarm log export"),
                ),
            ),
        ),
        Command(
            "eval",
            "evaluate a run's model on held-out data (default: the run's own eval data)",
            "inspect",
            EvalSettings,
            [("eval", options_of(EvalSettings))],
            commands.evaluate,
            ("run_dir", "a run or node data directory"),
        ),
        Command(
            "replay",
            "rebuild the fine-tuned model from the base model and the log",
            "inspect",
            ReplaySettings,
            [("replay", options_of(ReplaySettings))],
            commands.replay,
            ("run_dir", "a run or node data directory"),
        ),
        Command(
            "export",
            "write the run's model as directories the Hugging Face libraries load, with a card",
            "inspect",
            ExportSettings,
            [("export", options_of(ExportSettings))],
            export_run,
            ("run", "the run's data directory (a node's --data-dir, or train --out)"),
        ),
        Command(
            "verify",
            "check that an export's weights are exactly what a log makes",
            "inspect",
            VerifySettings,
            [("verify", options_of(VerifySettings))],
            verify_run,
            ("export_dir", "the export to check (seedswarm export --out)"),
        ),
        Command(
            "relay",
            "forward every node's frames and presence in one bundle per interval",
            "operate",
            RelaySettings,
            [("relay", options_of(RelaySettings)), ("broker", options_of(MqttSettings))],
            commands.run_relay,
        ),
        Command(
            "broker",
            "run the embedded MQTT broker (amqtt) on its own, until Ctrl+C",
            "operate",
            BrokerSettings,
            [("broker", options_of(BrokerSettings))],
            commands.run_broker,
        ),
        Command(
            "keygen",
            "make an Ed25519 key pair for a node of a signed run",
            "operate",
            KeygenSettings,
            [("keygen", options_of(KeygenSettings))],
            commands.keygen,
        ),
        Command(
            "bench",
            "benchmarks with side-by-side ratios",
            "measure",
            BenchSettings,
            _bench_groups(),
            commands.run_bench,
            ("which", "which benchmark: " + ", ".join(BENCHES)),
            BENCHES,
        ),
    ]


class _Version(argparse.Action):
    """``--version``: the installed distribution's version, looked up only when asked."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("seedswarm")
        except PackageNotFoundError:  # run from a source tree that was never installed
            text = "unknown (not installed)"
        sys.stdout.write(f"seedswarm {text}\n")
        parser.exit(0)


def _overview(table: Sequence[Command]) -> str:
    lines = []
    for section in SECTIONS:
        lines.append(f"{section}:")
        lines.extend(f"  {c.name:<8} {c.help}" for c in table if c.section == section)
    return "\n".join(lines)


def _add_command(
    sub: Any, cmd: Command, *, show_all: bool, prog_hint: str, listed: bool = False
) -> argparse.ArgumentParser:
    """The parser of one command (or action); ``listed``: its parent's help lists it (the
    top-level help lists commands by section instead)."""
    hidden = sum(o.advanced for _, g in cmd.groups for o in g)
    epilog = None
    usage = None
    if not show_all and cmd.groups:
        epilog = "every option is also an environment variable: --batch-size = SEEDSWARM_BATCH_SIZE"
        if hidden:
            epilog = f"{hidden} more options: {prog_hint} {HELP_ALL}; {epilog}"
        positional = f" {cmd.positional[0].upper()}" if cmd.positional else ""
        usage = f"{prog_hint}{positional} [options]"
    extra = {"help": cmd.help} if listed else {}
    p: argparse.ArgumentParser = sub.add_parser(
        cmd.name, description=cmd.help, epilog=epilog, usage=usage, allow_abbrev=False, **extra
    )
    if cmd.positional is not None:
        name, help_ = cmd.positional
        p.add_argument(name, help=help_, choices=cmd.choices)
    for title, options in cmd.groups:
        add_options(p, options, title, show_all=show_all)
    return p


def build_parser(
    *, show_all: bool = True
) -> tuple[argparse.ArgumentParser, dict[str, Command], dict[str, argparse.ArgumentParser]]:
    """The parser, the commands by name (``log export`` for an action), and their parsers.
    ``show_all``: the help lists every option (``--help-all``), not only the common ones."""
    table = _commands()
    parser = _Parser(
        prog="seedswarm",
        description="Fine-tune a language model across hosts that exchange one byte per step.",
        epilog=_overview(table)
        + "\n\nStart with: seedswarm swarm --nodes 3   (each command has --help; "
        + f"{HELP_ALL} shows every option)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version)
    parser.add_argument(
        "--log-level",
        default=os.environ.get("SEEDSWARM_LOG_LEVEL", "warning"),
        choices=("debug", "info", "warning", "error"),
        help="logging detail",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands_by_name: dict[str, Command] = {}
    parsers: dict[str, argparse.ArgumentParser] = {}
    for cmd in table:
        p = _add_command(sub, cmd, show_all=show_all, prog_hint=f"seedswarm {cmd.name}")
        commands_by_name[cmd.name] = cmd
        parsers[cmd.name] = p
        if cmd.actions:
            actions = p.add_subparsers(
                dest="action", metavar="ACTION", parser_class=_Parser, title="actions"
            )
            for act in cmd.actions:
                full = f"{cmd.name} {act.name}"
                parsers[full] = _add_command(
                    actions, act, show_all=show_all, prog_hint=f"seedswarm {full}", listed=True
                )
                commands_by_name[full] = act
    return parser, commands_by_name, parsers


def _normalise(argv: list[str]) -> list[str]:
    """``log TARGET`` is ``log show TARGET``: argparse needs the action named, users need not."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] == "--log-level" else 1  # the one top-level option with a value
    if i >= len(argv) or argv[i] != "log":
        return argv
    rest = argv[i + 1 :]
    first = next((a for a in rest if not a.startswith("-")), None)
    if first is None or first in ACTIONS_OF_LOG:
        return argv
    return [*argv[: i + 1], "show", *rest]


ACTIONS_OF_LOG = ("show", "export", "import")


def _parse(argv: list[str]) -> tuple[argparse.Namespace, Command, str]:
    """The parsed flags, the command (or action) they name, and its full name."""
    show_all = HELP_ALL in argv
    argv = _normalise(["--help" if a == HELP_ALL else a for a in argv])
    parser, table, parsers = build_parser(show_all=show_all)
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        raise SystemExit(2)
    name = args.command
    if table[name].actions:
        if not getattr(args, "action", None):
            parsers[name].error(f"name an action: {', '.join(a.name for a in table[name].actions)}")
        name = f"{name} {args.action}"
    if extra:
        parsers[name].error(f"unrecognized arguments: {' '.join(extra)}")
    return args, table[name], name


def main(argv: Sequence[str] | None = None) -> int:
    args, cmd, name = _parse(list(sys.argv[1:] if argv is None else argv))
    import faulthandler
    import logging
    import signal

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    # `kill -USR1 <pid>` prints every thread's stack: how to see what a stuck process waits for
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warnings
    try:
        config = load_config_file(getattr(args, "config", None))
        options = [o for _, group in cmd.groups for o in group]
        values = resolve(options, args, config=config)
        if cmd.positional is not None:
            values[cmd.positional[0]] = getattr(args, cmd.positional[0])
        settings: Any = build(cmd.settings, values)
        return cmd.handler(settings)
    # OSError: a path the user gave (unwritable, a file for a directory, ...): exit 1, not the
    # 2 of a bad setting
    except (SeedswarmError, OSError) as exc:
        if os.environ.get("SEEDSWARM_DEBUG"):
            raise
        sys.stderr.write(f"seedswarm {name}: error: {exc}\n")
        return 2 if isinstance(exc, SeedswarmError) and not isinstance(exc, BenchError) else 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
