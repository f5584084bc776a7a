"""Shared fixtures. Brokers here are real processes (Mosquitto, or amqtt run as a process)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import Broker, started_broker

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    yield from started_broker("mosquitto", tmp_path)


@pytest.fixture(params=["mosquitto", "amqtt"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    yield from started_broker(str(request.param), tmp_path)


SLOW_TEST_LIMIT_S = 900


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` drive real processes that wait on each other with their own named
    deadlines (wait_until, cli timeouts), which add up to more than the default 300 s. Unless a
    test sets its own limit, it gets one above that sum, so a slow machine fails with the named
    wait's message rather than a bare timeout."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TEST_LIMIT_S))
    # the docker tests last: their engine and images are prepared in the background meanwhile
    items.sort(key=lambda item: item.get_closest_marker("docker") is not None)  # stable


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the docker tests' preparation (tests/docker/prebuild.py) once it is known that one
    of them runs, so its minutes overlap with the other tests."""
    if session.config.option.collectonly:
        return
    if any(item.get_closest_marker("docker") for item in session.items):
        from .docker.prebuild import PREBUILD

        PREBUILD.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Undo what the preparation made and no docker test took (a session stopped early)."""
    prebuild = sys.modules.get(f"{__package__}.docker.prebuild")
    if prebuild is not None:
        prebuild.PREBUILD.abandon()
