"""The retained manifest (docs/PROTOCOL.md §7) and what a node says of another manifest under
its run name: two real nodes in one process over the in-memory bus (a FAKE broker,
daemon/transport/memory.py); tests/integration/test_swarm_nodes.py does the same through real
processes and a real broker, and checks that ``seedswarm swarm`` stops on it."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from seedswarm.daemon.node.node import Node
from seedswarm.daemon.settings import LocalSettings, MqttSettings, NodeSettings, RunSettings
from seedswarm.daemon.transport.memory import MemoryBus, matches
from seedswarm.protocol.retained import manifest_subscription, read_retained_manifest

pytestmark = pytest.mark.asyncio


def _node(bus: MemoryBus, tmp_path: Path, name: str, lr: float) -> Node:
    return Node(
        NodeSettings(
            mqtt=MqttSettings(broker=f"memory://{bus.name}"),
            run=RunSettings(name="mem", lr=lr),
            local=LocalSettings(node=name, batch_size=4, kernel="torch"),
            data_dir=str(tmp_path / name),
            http="127.0.0.1:0",
            steps=2,
            presence_interval=0.2,
            join_wait=0.2,
            torch_threads=1,
        )
    )


async def test_each_node_names_the_setting_that_differs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="seedswarm.peer")
    bus = MemoryBus.named(f"foreign-{tmp_path.name}")
    a, b = _node(bus, tmp_path, "a", 3e-3), _node(bus, tmp_path, "b", 1e-3)
    async with asyncio.TaskGroup() as tg:
        runs = [tg.create_task(n.run(signals=False)) for n in (a, b)]
        async with asyncio.timeout(120):
            while True:
                sts = [await n.status(fresh=False) for n in (a, b)] if all(
                    n.phase == "running" for n in (a, b)
                ) else []  # fmt: skip
                if sts and all(st.foreign_runs and st.foreign_runs[0].differences for st in sts):
                    break
                await asyncio.sleep(0.05)
        for n in (a, b):
            n.request_stop()
    assert [r.result() for r in runs] == [0, 0]

    (fa,), (fb,) = sts[0].foreign_runs, sts[1].foreign_runs
    assert fa.nodes == ["b"]
    assert fa.run_id == b.session.run_id.hex()
    assert [(d.field, d.ours, d.theirs) for d in fa.differences] == [("lr", "0.003", "0.001")]
    assert [(d.field, d.ours, d.theirs) for d in fb.differences] == [("lr", "0.001", "0.003")]
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(m.startswith("a: b under run name 'mem' runs") and "lr ours 0.003 / theirs 0.001" in m for m in said), said  # fmt: skip
    assert any(m.startswith("b: a under run name 'mem' runs") and "lr ours 0.001 / theirs 0.003" in m for m in said), said  # fmt: skip
    # neither node took the other's frames: they stayed apart
    assert "b" not in sts[0].version_vector
    assert "a" not in sts[1].version_vector


async def test_a_node_publishes_its_manifest_retained_by_its_hash(tmp_path: Path) -> None:
    """Whoever knows only the run id finds the manifest: subscribe to
    ``<prefix>/+/manifest/<run id>`` and check the retained bytes by their hash."""
    bus = MemoryBus.named(f"retained-{tmp_path.name}")
    node = _node(bus, tmp_path, "a", 0.0)
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(node.run(signals=False))
        async with asyncio.timeout(120):
            while node.phase != "running" or not node.driver.connected.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        node.request_stop()
    assert run.result() == 0
    run_id = node.session.run_id
    sub = manifest_subscription("seedswarm", run_id)
    found = [(t, p) for t, p in bus.retained.items() if matches(sub.topic, t)]
    assert [t for t, _ in found] == [f"seedswarm/mem/manifest/{run_id.hex()}"]
    topic, payload = found[0]
    got = read_retained_manifest(topic, payload, prefix="seedswarm", run_id=run_id)
    assert got == node.manifest
    # ... and the presence came after it: the manifest's topic was retained first
    topics = list(bus.retained)
    assert topics.index(topic) < topics.index("seedswarm/mem/presence/a")
