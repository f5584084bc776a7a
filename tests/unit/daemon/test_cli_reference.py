"""docs/cli.md is generated from the settings (daemon/cli/reference.py): it fails here when a
flag, a default or a help text changed and the page was not written again."""

from __future__ import annotations

from pathlib import Path

from seedswarm.daemon.cli.main import build_parser
from seedswarm.daemon.cli.reference import render

PAGE = Path(__file__).resolve().parents[3] / "docs" / "cli.md"


def test_the_cli_reference_is_current() -> None:
    assert PAGE.read_text(encoding="utf-8") == render(), (
        "docs/cli.md is stale: python -m seedswarm.daemon.cli.reference > docs/cli.md"
    )


def test_the_reference_names_every_flag_the_parser_takes() -> None:
    """Rendered from the same table the parser is built from: every option of every command
    (and action) is on the page, under its command."""
    page = render()
    _, table, parsers = build_parser(show_all=True)
    for name, parser in parsers.items():
        section = page.split(f"seedswarm {name}\n", 1)[1]
        for action in parser._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag not in ("--help", "--no-help"):
                    assert (
                        f"`{flag.removeprefix('--no-') if flag.startswith('--no-') else flag}`"
                        in section
                        or f"`{flag}`" in section
                    ), (name, flag)
    assert set(table) >= {
        "swarm",
        "node",
        "train",
        "status",
        "log show",
        "log export",
        "log import",
    }
