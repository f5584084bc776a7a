"""A stop that lands while the trainer's pass is in flight ends the node, and a stop that cannot
finish is cut short by ``--shutdown-timeout`` (a real node over the in-memory bus,
``memory://``, a FAKE broker: daemon/transport/memory.py).

The trainer sleeps between passes on a wake-up event. It once cleared that event *after* a pass
that found no work, so a stop requested while such a pass ran (typically the evaluation at the
last record count: the swarm's and the tests' usual moment to stop) was forgotten, and the node
waited forever with its log open. The stop is placed in that window deterministically here: the
real evaluation history's ``add`` (which the trainer runs on a worker thread in its pass)
requests the stop before it returns, and nothing is left to do after it.

The bound is tested with a shutdown made to hang on purpose (the final snapshot replaced by a
wait that never ends: a stand-in for any fault of that kind), so the node must give up on it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from seedswarm.daemon.errors import ConfigError
from seedswarm.daemon.node.evaluation import EvalHistory, EvalPoint
from seedswarm.daemon.node.node import Node
from seedswarm.daemon.node.trainer import Trainer
from seedswarm.daemon.settings import LocalSettings, MqttSettings, NodeSettings, RunSettings
from seedswarm.daemon.transport.memory import MemoryBus

from ...qa_data import write_qa

STEPS = 8  # own steps, one record each (SPSA)
EVAL_EVERY = 4  # so the last evaluation is at STEPS records, after the last step


def _node(tmp_path: Path, **changes: float) -> Node:
    bus = MemoryBus.named(f"trainer-stop-{tmp_path.name}")
    return Node(
        NodeSettings(
            mqtt=MqttSettings(broker=f"memory://{bus.name}"),
            run=RunSettings(
                name="stop", data=str(write_qa(tmp_path / "qa.jsonl", 40, chat=False, seed=0))
            ),
            local=LocalSettings(node="n0", batch_size=4, kernel="torch"),
            data_dir=str(tmp_path / "n0"),
            http="127.0.0.1:0",
            steps=STEPS,
            presence_interval=0.2,
            join_wait=0.1,
            max_latency=0.05,
            torch_threads=1,
            eval=str(write_qa(tmp_path / "held.jsonl", 4, chat=False, seed=9)),
            eval_every=EVAL_EVERY,
            **changes,  # type: ignore[arg-type]
        )
    )


@pytest.mark.asyncio
async def test_a_stop_during_the_last_evaluation_ends_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = _node(tmp_path)
    loop = asyncio.get_running_loop()
    add = EvalHistory.add
    stopped_at: list[int] = []

    def add_then_stop(self: EvalHistory, point: EvalPoint) -> None:
        add(self, point)
        if point.records == STEPS:
            stopped_at.append(point.records)
            # queued before the worker thread's result: the stop is set before the pass resumes
            loop.call_soon_threadsafe(node.request_stop)

    monkeypatch.setattr(EvalHistory, "add", add_then_stop)
    async with asyncio.timeout(120):  # a safety net: without the fix this waits forever
        code = await node.run(signals=False)
    assert (code, node.error) == (0, "")
    assert stopped_at == [STEPS]
    assert node.trainer.own_steps == STEPS
    evals = node.trainer.evals
    assert evals is not None
    assert [p.records for p in evals.points] == [0, EVAL_EVERY, STEPS]
    # it wound down in order: its final snapshot holds every record
    served = node.snapshots.statistics().served
    assert served is not None
    assert served.info.records == STEPS


@pytest.mark.asyncio
async def test_a_stop_that_cannot_finish_is_cut_short_by_the_shutdown_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def never(self: Trainer) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(Trainer, "snapshot", never)  # the final snapshot never ends
    node = _node(tmp_path, shutdown_timeout=2.0, drain_timeout=1.0)
    loop = asyncio.get_running_loop()
    add = EvalHistory.add

    def add_then_stop(self: EvalHistory, point: EvalPoint) -> None:
        add(self, point)
        if point.records == STEPS:  # the steps are taken: the node owes a final snapshot
            loop.call_soon_threadsafe(node.request_stop)

    monkeypatch.setattr(EvalHistory, "add", add_then_stop)
    async with asyncio.timeout(120):  # a safety net: without the bound this waits forever
        code = await node.run(signals=False)
    assert (code, node.error) == (1, "node n0: the shutdown took more than 2 s")
    assert node.phase == "stopped"
    assert node.flusher.statistics().records == STEPS  # written and published before it gave up


@pytest.mark.parametrize(("shutdown", "drain"), [(10.0, 10.0), (5.0, 10.0)])
def test_a_shutdown_bound_not_longer_than_its_drain_is_refused(
    tmp_path: Path, shutdown: float, drain: float
) -> None:
    with pytest.raises(ConfigError) as exc:
        _node(tmp_path, shutdown_timeout=shutdown, drain_timeout=drain)
    assert str(exc.value) == (
        f"--shutdown-timeout {shutdown:g} is not longer than --drain-timeout {drain:g}, a part "
        "of it: raise it (or 0 for no limit)"
    )
    _node(tmp_path, shutdown_timeout=0.0, drain_timeout=drain)  # 0: no limit
