"""``train``'s stop on a signal (daemon/cli/stop_signal.py ``StopAtStepEnd``), in this process: the
first signal is noted and the previous handlers come back, a signal the process ignores stays
ignored. The whole command stopped by Ctrl+C and kill is in tests/integration/test_cli.py."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest

from seedswarm.daemon.cli.stop_signal import StopAtStepEnd


@pytest.fixture
def handlers() -> Iterator[None]:
    """This test's changes to SIGINT and SIGTERM's handlers are undone after it."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_the_first_signal_is_noted_and_the_previous_handlers_come_back(handlers: None) -> None:
    seen: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    before = signal.getsignal(signal.SIGTERM)
    with StopAtStepEnd() as stop:
        assert signal.getsignal(signal.SIGTERM) not in (before, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal == "SIGTERM"
        assert signal.getsignal(signal.SIGTERM) is before  # a second one: its usual effect
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_ignored_signal_stays_ignored(handlers: None) -> None:
    """A job a script put in the background starts with SIGINT ignored: Ctrl+C meant for the
    script does not stop it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with StopAtStepEnd() as stop:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signal == ""
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_outside_the_main_thread_signals_are_left_alone(handlers: None) -> None:
    before = signal.getsignal(signal.SIGTERM)
    during: list[object] = []

    def worker() -> None:
        with StopAtStepEnd():
            during.append(signal.getsignal(signal.SIGTERM))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert during == [before]
