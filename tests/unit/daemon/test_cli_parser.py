"""The command line's parsing, in process: actions of ``log``, no abbreviations, suggestions.
(The same as a user meets it, in real processes: tests/integration/test_cli.py.)"""

from __future__ import annotations

import pytest

from seedswarm.daemon.cli.main import _parse


@pytest.mark.parametrize(
    ("argv", "name", "target"),
    [
        (["log", "runs/a"], "log show", "runs/a"),
        (["log", "--limit", "3", "runs/a"], "log show", "runs/a"),
        (
            ["--log-level", "info", "log", "http://127.0.0.1:8470"],
            "log show",
            "http://127.0.0.1:8470",
        ),
        (["log", "show", "runs/a"], "log show", "runs/a"),
        (["status", "runs/a"], "status", "runs/a"),
    ],
)
def test_log_target_is_log_show(argv: list[str], name: str, target: str) -> None:
    args, _, got = _parse(argv)
    assert got == name
    assert args.target == target


def test_log_actions() -> None:
    args, _, name = _parse(["log", "export", "runs/a", "--out", "a.swlog"])
    assert (name, args.run_dir, args.out) == ("log export", "runs/a", "a.swlog")
    args, _, name = _parse(["log", "import", "a.swlog", "--out", "b"])
    assert (name, args.file, args.out) == ("log import", "a.swlog", "b")


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (
            ["swarm", "--node", "3"],
            "seedswarm swarm: error: unknown option --node (did you mean --nodes?)",
        ),
        (
            ["swarm", "--nod", "3"],
            "seedswarm swarm: error: unknown option --nod (did you mean --node",
        ),
        (["train", "--out", "x", "--stepz", "4"], "unknown option --stepz (did you mean --steps?)"),
        (["bench", "aply"], "invalid choice: 'aply' (did you mean apply?)"),
        (["log"], "seedswarm log: error: name an action: show, export, import"),
    ],
)
def test_no_abbreviation_and_a_suggestion(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        _parse(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert said in err
