"""What a node says when its broker is wrong: one node, in this process, against real sockets
(nothing fake: a port nothing listens on, and a server that accepts connections and never
answers). The swarm launcher's side is in tests/e2e/test_quickstart.py."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from seedswarm.daemon.node.node import Node
from seedswarm.daemon.settings import LocalSettings, MqttSettings, NodeSettings, RunSettings

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


def _node(tmp_path: Path, broker: str, version: str = "auto") -> Node:
    return Node(
        NodeSettings(
            mqtt=MqttSettings(broker=broker, mqtt_version=version),
            run=RunSettings(name="trouble"),
            local=LocalSettings(node="n0", batch_size=4, kernel="torch"),
            data_dir=str(tmp_path / "n0"),
            http="127.0.0.1:0",
            steps=0,
            torch_threads=1,
        )
    )


async def _run_until(
    node: Node, caplog: pytest.LogCaptureFixture, seen: Callable[[list[str]], bool]
) -> list[str]:
    """Run the node until the log holds what ``seen`` looks for; the log's lines."""
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(node.run(signals=False))
        try:
            async with asyncio.timeout(120):  # a safety net, not a measurement
                while not seen([r.getMessage() for r in caplog.records]):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        finally:
            node.request_stop()
    assert run.result() == 0
    return [f"{r.name} {r.levelname} {r.getMessage()}" for r in caplog.records]


async def test_a_refused_connection_is_said_before_the_model_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="seedswarm")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    why = f"nothing accepts connections at mqtt://127.0.0.1:{port} (connection refused)"
    lines = await _run_until(
        _node(tmp_path, f"mqtt://127.0.0.1:{port}"), caplog,
        lambda ms: sum(why in m for m in ms) >= 2,
    )  # fmt: skip
    said = [i for i, line in enumerate(lines) if why in line]
    loaded = next(i for i, line in enumerate(lines) if "restored 0 records" in line)
    # the first look at the broker comes while the model loads: seconds, whatever the model
    assert said[0] < loaded, lines
    assert lines[said[0]] == (
        f"seedswarm.node WARNING n0: broker: {why}: start a broker there (seedswarm broker "
        f"--port {port}, or Mosquitto) or pass the right --broker URL; retrying"
    )
    # the transport says it too once it tries, and keeps trying (once a minute it says so again)
    assert lines[said[1]].startswith(f"seedswarm.transport WARNING broker: {why}")


async def test_a_silent_broker_is_a_timeout_not_an_mqtt_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that takes the connection and never answers: the node says it did not answer
    (3 s for MQTT 5, then 10 s for 3.1.1), and never that it 'does not speak MQTT 5'."""
    caplog.set_level(logging.INFO, logger="seedswarm")
    held: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # keep it open, say nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"mqtt://127.0.0.1:{port}"
    try:
        lines = await _run_until(
            _node(tmp_path, url), caplog, lambda ms: any("sent no MQTT answer" in m for m in ms)
        )
    finally:
        server.close()
        for w in held:
            w.close()
    assert (
        f"seedswarm.transport WARNING broker {url} accepted the connection but did not answer "
        "an MQTT 5 CONNECT within 3 s; trying MQTT 3.1.1 (some brokers answer only that)"
    ) in lines
    assert (
        f"seedswarm.transport WARNING broker: {url} accepted the connection but sent no MQTT "
        "answer within 10 s: is it an MQTT broker, and is it overloaded? retrying"
    ) in lines
    assert not any("does not speak MQTT 5" in line for line in lines)
