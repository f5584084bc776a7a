"""docs/cli.md, generated from the command table and the settings dataclasses.

Every flag of every command is a field of a settings dataclass (daemon/settings.py,
cli/settings.py, bench/settings.py) with its help, default, choices and environment variable,
so the reference is made from them and cannot drift: tests/unit/daemon/test_cli_reference.py
fails when docs/cli.md differs from what this writes. After changing a setting:

    python -m seedswarm.daemon.cli.reference > docs/cli.md
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from seedswarm.daemon.options import Option

from .main import HELP_ALL, SECTIONS, Command, _commands

HEADER = f"""# Command-line reference

Generated from the settings by `python -m seedswarm.daemon.cli.reference > docs/cli.md`; a
test fails when this page is stale. Every option is also an environment variable (shown) and,
for `seedswarm node`, a key of its `--config` TOML file (the flag without `--`, `_` for `-`).
Precedence: flag, environment, config file, default. `--help` shows a command's common
options; `{HELP_ALL}` all of them (marked *advanced* here). Flags are never abbreviated.
"""


def _default(opt: Option) -> str:
    if opt.kind is bool:
        return "off" if not opt.default else "on"
    if opt.default == "":
        return "-"
    return f"`{opt.default}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _options(options: Sequence[Option]) -> list[str]:
    lines = [
        "| option | environment | default | |",
        "|---|---|---|---|",
    ]
    for opt in options:
        flag = f"`{opt.flag}`" if opt.kind is not bool else f"`{opt.flag}` / `--no-{opt.flag[2:]}`"
        what = opt.help
        if opt.choices:
            what += " (one of: " + ", ".join(f"`{c}`" for c in opt.choices) + ")"
        if opt.advanced:
            what += " *advanced*"
        lines.append(f"| {flag} | `{opt.env}` | {_cell(_default(opt))} | {_cell(what)} |")
    return lines


def _command(cmd: Command, name: str) -> list[str]:
    usage = f"seedswarm {name}"
    if cmd.actions:
        usage += " ACTION ..."
    else:
        if cmd.positional is not None:
            usage += f" {cmd.positional[0].upper()}"
        usage += " [options]"
    out = [f"## seedswarm {name}", "", _sentence(cmd.help), "", f"    {usage}", ""]
    if cmd.actions:
        first = cmd.actions[0]
        arg = first.positional[0].upper() if first.positional else ""
        out += [f"`seedswarm {name} {arg}` is short for `seedswarm {name} {first.name} {arg}`.", ""]
    if cmd.positional is not None and not cmd.actions:
        pos, help_ = cmd.positional
        out += [f"`{pos.upper()}`: {help_}.", ""]
    for title, options in cmd.groups:
        if options:
            out += [f"**{title}**", "", *_options(options), ""]
    for act in cmd.actions:
        out += [f"### seedswarm {name} {act.name}", "", _sentence(act.help), ""]
        body = _command(act, f"{name} {act.name}")
        out += body[body.index("") + 1 :][2:]  # its usage and options, without its heading
    return out


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def render() -> str:
    table = _commands()
    lines = [HEADER]
    for section in SECTIONS:
        names = ", ".join(f"[{c.name}](#seedswarm-{c.name})" for c in table if c.section == section)
        lines.append(f"- {section}: {names}")
    lines.append("")
    for cmd in table:
        lines += _command(cmd, cmd.name)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(render())
