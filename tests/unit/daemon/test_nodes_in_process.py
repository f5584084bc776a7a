"""Three real nodes in one process over the in-memory bus (``memory://``, a FAKE broker:
daemon/transport/memory.py).

This tests the node's logic (driver, session, store, model thread, trainer, flusher, gap
filling) quickly and without a broker; the same behaviour through real Mosquitto and real
processes is tested in tests/integration.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from seedswarm.daemon.node.node import Node
from seedswarm.daemon.settings import LocalSettings, MqttSettings, NodeSettings, RunSettings
from seedswarm.daemon.status.schema import NodeStatus
from seedswarm.daemon.transport.memory import MemoryBus, MemoryTransport
from seedswarm.model.replica import grown_batch
from seedswarm.protocol.schedule import lr_at

pytestmark = pytest.mark.asyncio

STEPS = 20


def _bus(tmp_path: Path) -> MemoryBus:
    """A bus of this test's own (its name is unique to the test)."""
    return MemoryBus.named(f"nodes-{tmp_path.name}")


def _node(
    bus: MemoryBus,
    tmp_path: Path,
    name: str,
    i: int,
    n: int,
    run: RunSettings | None = None,
    *,
    batch_size: int = 4,
    batch_growth: float = 1.0,
) -> Node:
    settings = NodeSettings(
        mqtt=MqttSettings(broker=f"memory://{bus.name}"),
        run=run or RunSettings(name="mem"),
        local=LocalSettings(
            node=name,
            shard=f"{i}/{n}",
            batch_size=batch_size,
            batch_growth=batch_growth,
            kernel="torch",
        ),
        data_dir=str(tmp_path / name),
        http="127.0.0.1:0",
        steps=STEPS,
        presence_interval=0.2,
        join_wait=0.2,
        max_latency=0.05,
        frame_records=8,
        snapshot_every=25,
        torch_threads=1,
    )
    return Node(settings)


async def _statuses(nodes: list[Node]) -> list[NodeStatus]:
    return [await n.status(fresh=True) for n in nodes]


async def _until_agreed(nodes: list[Node], expect: dict[str, int]) -> list[NodeStatus]:
    async with asyncio.timeout(240):  # a safety net on a loaded machine
        while True:
            sts = await _statuses(nodes) if all(n.phase == "running" for n in nodes) else []
            if (
                sts
                and all(st.version_vector == expect for st in sts)
                and len({st.fingerprint for st in sts}) == 1
            ):
                return sts
            await asyncio.sleep(0.1)


async def _run_alone(node: Node, expect: dict[str, int]) -> NodeStatus:
    """Run one node until it holds ``expect``, stop it, check it exited cleanly; its status."""
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(node.run(signals=False))
        (st,) = await _until_agreed([node], expect)
        node.request_stop()
    assert task.result() == 0
    return st


async def test_three_nodes_reach_one_fingerprint(tmp_path: Path) -> None:
    bus = _bus(tmp_path)
    names = ["n0", "n1", "n2"]
    nodes = [_node(bus, tmp_path, name, i, len(names)) for i, name in enumerate(names)]
    async with asyncio.TaskGroup() as tg:
        runs = [tg.create_task(n.run(signals=False)) for n in nodes]
        sts = await _until_agreed(nodes, dict.fromkeys(names, STEPS))
        assert all(st.records.pending == 0 and st.steps.done for st in sts)
        assert all(st.fingerprint_vv_digest == st.vv_digest for st in sts)
        assert {p.node for p in sts[0].peers} == {"n1", "n2"}
        assert sts[0].dropped_total == 0
        for n in nodes:
            n.request_stop()
    assert [r.result() for r in runs] == [0, 0, 0]


async def test_fzoo_nodes_with_low_rank_directions_agree_step_by_step(tmp_path: Path) -> None:
    """K = 4 records a step, each its own seq: --steps counts steps, the log counts records."""
    bus = _bus(tmp_path)
    run = RunSettings(name="fz", estimator="fzoo", directions=4, direction="lowrank")
    nodes = [_node(bus, tmp_path, name, i, 2, run) for i, name in enumerate(["n0", "n1"])]
    async with asyncio.TaskGroup() as tg:
        runs = [tg.create_task(n.run(signals=False)) for n in nodes]
        sts = await _until_agreed(nodes, {"n0": 4 * STEPS, "n1": 4 * STEPS})
        assert all(st.steps.taken == STEPS and st.steps.done for st in sts)
        for n in nodes:
            n.request_stop()
    assert [r.result() for r in runs] == [0, 0]


async def test_a_late_joiner_catches_up_by_gap_filling(tmp_path: Path) -> None:
    """n2 starts after n0 and n1 have finished: everything it gets comes through wants."""
    bus = _bus(tmp_path)
    first = [_node(bus, tmp_path, name, i, 3) for i, name in enumerate(["n0", "n1"])]
    async with asyncio.TaskGroup() as tg:
        runs = [tg.create_task(n.run(signals=False)) for n in first]
        await _until_agreed(first, {"n0": STEPS, "n1": STEPS})
        late = _node(bus, tmp_path, "n2", 2, 3)
        runs.append(tg.create_task(late.run(signals=False)))
        sts = await _until_agreed([*first, late], dict.fromkeys(["n0", "n1", "n2"], STEPS))
        assert sts[2].sync.wants_sent > 0
        assert sum(st.sync.wants_answered for st in sts[:2]) > 0
        for n in [*first, late]:
            n.request_stop()
    assert [r.result() for r in runs] == [0, 0, 0]


async def test_a_node_that_crashed_is_seen_gone_and_its_restart_rejoins(tmp_path: Path) -> None:
    bus = _bus(tmp_path)
    a, b = (_node(bus, tmp_path, name, i, 2) for i, name in enumerate(["n0", "n1"]))
    async with asyncio.TaskGroup() as tg:
        run_a = tg.create_task(a.run(signals=False))
        run_b = tg.create_task(b.run(signals=False))
        await _until_agreed([a, b], {"n0": STEPS, "n1": STEPS})
        transport = b.driver.transport
        assert isinstance(transport, MemoryTransport)
        transport.crash()  # its will says it is gone
        async with asyncio.timeout(60):
            while any(p.alive for p in (await a.status(fresh=False)).peers):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        b.request_stop()
        await run_b
        again = _node(bus, tmp_path, "n1", 1, 2)
        run_again = tg.create_task(again.run(signals=False))
        sts = await _until_agreed([a, again], {"n0": STEPS, "n1": STEPS})
        assert sts[1].restored_records + sts[1].replayed_records == 2 * STEPS
        a.request_stop()
        again.request_stop()
    assert (run_a.result(), run_again.result()) == (0, 0)


async def test_a_restarted_node_that_applied_new_records_stops_with_a_snapshot(
    tmp_path: Path,
) -> None:
    """n1 restarts holding its own records (from its log and snapshot), applies a newcomer's
    records, and is stopped: it saves a snapshot of them on the way out (the records since the
    last one are fewer than --snapshot-every) and ends. Its stop waits for its own records to be
    in the store, which they were before it started: once this waited forever (the session was
    made before the log was read, so it counted none of them as stored)."""
    bus = _bus(tmp_path)
    a, b = (_node(bus, tmp_path, name, i, 3) for i, name in enumerate(["n0", "n1"]))
    async with asyncio.TaskGroup() as tg:
        run_a = tg.create_task(a.run(signals=False))
        run_b = tg.create_task(b.run(signals=False))
        await _until_agreed([a, b], {"n0": STEPS, "n1": STEPS})
        b.request_stop()
        assert await run_b == 0
        again = _node(bus, tmp_path, "n1", 1, 3)
        run_again = tg.create_task(again.run(signals=False))
        await _until_agreed([a, again], {"n0": STEPS, "n1": STEPS})
        newcomer = _node(bus, tmp_path, "n2", 2, 3)
        run_new = tg.create_task(newcomer.run(signals=False))
        everyone = dict.fromkeys(["n0", "n1", "n2"], STEPS)
        await _until_agreed([a, again, newcomer], everyone)
        again.request_stop()
        async with asyncio.timeout(120):  # the stop ends, by itself
            assert await run_again == 0, again.error
        last = _node(bus, tmp_path, "n1", 1, 3)  # it restarts from the snapshot it saved
        run_last = tg.create_task(last.run(signals=False))
        sts = await _until_agreed([a, last, newcomer], everyone)
        assert (sts[1].restored_records, sts[1].replayed_records) == (3 * STEPS, 0)
        for n in (a, last, newcomer):
            n.request_stop()
    assert (run_a.result(), run_new.result(), run_last.result()) == (0, 0, 0)


async def test_a_nodes_status_shows_the_batch_its_last_step_drew(tmp_path: Path) -> None:
    """--batch-growth on a decayed run: the node's status says how many examples its last step
    drew, which has grown past --batch-size as the rate fell (the size train prints a range
    of, and the dashboard and /metrics show), and before a step the batch the next would draw."""
    bus = _bus(tmp_path)
    run = RunSettings(name="mem-grow", estimator="fzoo", directions=2, schedule="decay",
                      budget=2 * STEPS)  # fmt: skip
    node = _node(bus, tmp_path, "n0", 0, 1, run, batch_size=8, batch_growth=4.0)
    st = await _run_alone(node, {"n0": 2 * STEPS})
    assert st.steps.done
    # the last step was taken on a model holding all but its own 2 records
    fraction = lr_at(1.0, "decay", 2 * STEPS, 2 * STEPS - 2)
    assert st.steps.examples == grown_batch(8, 4.0, fraction) == 32
    # restarted, the node has no step to take this session; its status gives the batch a
    # step would draw at the records it holds (the budget's: the rate is 0, the batch 4 x 8),
    # not nothing (the dashboard showed "-" until a node's first step of a session)
    again = _node(bus, tmp_path, "n0", 0, 1, run, batch_size=8, batch_growth=4.0)
    restarted = await _run_alone(again, {"n0": 2 * STEPS})
    assert restarted.steps.this_session == 0
    assert restarted.steps.examples == grown_batch(8, 4.0, 0.0) == 32
    # `seedswarm status` reads a node of a version before the field (a default), but not a
    # status that lacks a field every version sends
    older = st.to_json()
    del older["steps"]["examples"]
    assert NodeStatus.from_json(older).steps.examples is None
    del older["steps"]["taken"]
    with pytest.raises(ValueError, match="StepsStatus lacks 'taken'"):
        NodeStatus.from_json(older)
