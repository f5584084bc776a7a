"""Print the docker test's stage timings in pytest's summary, whether or not output is captured."""

from __future__ import annotations

import pytest

from .engine import SUMMARY


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SUMMARY:
        terminalreporter.section("docker test stages")
        for line in SUMMARY:
            terminalreporter.write_line(line)
