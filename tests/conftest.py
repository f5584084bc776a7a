"""Shared fixtures. Brokers here are real processes (Mosquitto, or amqtt run as a process)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import MOSQUITTO, Broker

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _broker(kind: str, tmp_path: Path) -> Iterator[Broker]:
    if kind == "mosquitto" and MOSQUITTO is None:
        pytest.fail("mosquitto is not installed: apt install mosquitto (.ci/run does)")
    b = Broker(kind, tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    yield from _broker("mosquitto", tmp_path)


@pytest.fixture
def amqtt_broker(tmp_path: Path) -> Iterator[Broker]:
    yield from _broker("amqtt", tmp_path)


@pytest.fixture(params=["mosquitto", "amqtt"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    yield from _broker(str(request.param), tmp_path)
