"""Two real nodes in one process over the in-memory bus (``memory://``, a FAKE broker:
daemon/transport/memory.py), on a chat-format run and on a LoRA run (issue 21).

The claim here is the nodes' logic on these runs: the run planning picks the completion task
(chats through the tokenizer's chat template), both nodes evaluate at the same record counts
with exact match and F1 (the answers are short) and write their curves, the completion loss
falls, the replicas agree, and a shuffled replay of a node's log gives their fingerprint. For
the LoRA run, ``seedswarm export`` of a node's directory writes the adapter and its base, and
the exported adapter, read back onto the exported base (whose hash is the manifest's),
reproduces the run's fingerprint. The same through real processes and a real broker, on a
prompt -> completion run: tests/integration/test_completion_swarm.py.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from seedswarm.daemon.cli.export import ExportSettings, export_run
from seedswarm.daemon.cli.runs import open_log
from seedswarm.daemon.node.node import Node
from seedswarm.daemon.settings import LocalSettings, MqttSettings, NodeSettings, RunSettings
from seedswarm.daemon.status.schema import NodeStatus
from seedswarm.daemon.transport.memory import MemoryBus
from seedswarm.model import provenance
from seedswarm.model.adapters import ADAPTER_FILE, PEFT_PREFIX
from seedswarm.model.engine import Engine

from ...qa_data import save_chat_model, write_qa

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

STEPS = 150  # per node
EVAL_EVERY = 100  # records applied


def _node(
    tmp_path: Path, bus: MemoryBus, name: str, i: int, run: RunSettings, *, chat: bool
) -> Node:
    held = write_qa(tmp_path / "held.jsonl", 12, chat=chat, seed=9)
    return Node(
        NodeSettings(
            mqtt=MqttSettings(broker=f"memory://{bus.name}"),
            run=run,
            local=LocalSettings(node=name, shard=f"{i}/2", batch_size=16, kernel="torch"),
            data_dir=str(tmp_path / name),
            http="127.0.0.1:0",
            steps=STEPS,
            presence_interval=0.2,
            join_wait=0.2,
            max_latency=0.05,
            frame_records=32,
            torch_threads=1,
            eval=str(held),
            eval_every=EVAL_EVERY,
        )
    )


async def _run_two(
    tmp_path: Path, run: RunSettings, *, chat: bool = False
) -> tuple[list[Node], list[NodeStatus]]:
    """Run two nodes until both took their steps, agree, and evaluated at the last count."""
    bus = MemoryBus.named(f"completion-{tmp_path.name}")
    nodes = [_node(tmp_path, bus, f"n{i}", i, run, chat=chat) for i in range(2)]
    expect = {"n0": STEPS, "n1": STEPS}
    last_point = 2 * STEPS
    async with asyncio.TaskGroup() as tg:
        runs = [tg.create_task(n.run(signals=False)) for n in nodes]
        async with asyncio.timeout(600):  # a safety net on a loaded machine
            while True:
                await asyncio.sleep(0.2)
                ended = [
                    (n.me, r.result(), n.error)
                    for n, r in zip(nodes, runs, strict=True)
                    if r.done()
                ]
                assert not ended, f"a node ended before it was stopped: {ended}"
                if not all(n.phase == "running" for n in nodes):
                    continue
                sts = [await n.status(fresh=True) for n in nodes]
                if (
                    all(st.version_vector == expect for st in sts)
                    and len({st.fingerprint for st in sts}) == 1
                    and all(st.eval is not None and st.eval.records == last_point for st in sts)
                ):
                    break
        for n in nodes:
            n.request_stop()
        # a node that does not wind down fails here, naming its phase, not at pytest's timeout
        _, stuck = await asyncio.wait(runs, timeout=120)
        assert not stuck, [(n.me, n.phase) for n, r in zip(nodes, runs, strict=True) if r in stuck]
    assert [r.result() for r in runs] == [0, 0]
    return nodes, sts


def _shuffled_replay(data_dir: Path, model: str = "") -> str:
    """The fingerprint of the node's log replayed in a shuffled order on a fresh engine."""
    run = open_log(str(data_dir), "RUN")
    records = list(run.log.ordered())
    random.Random(11).shuffle(records)
    engine = Engine.open(run.manifest, model_ref=model or None, kernel="torch")
    engine.apply(records, batch=37)
    return engine.fingerprint()


def _check_learning_and_curves(nodes: list[Node], sts: list[NodeStatus], fall: float) -> None:
    """Both nodes evaluated at 0, 100, 200 and 300 records, the held-out completion loss fell
    by more than ``fall``, and the curves were written."""
    for n, st in zip(nodes, sts, strict=True):
        assert n.trainer.evals is not None
        points = n.trainer.evals.points
        assert [p.records for p in points] == [0, 100, 200, 300]
        assert all(p.exact_match is not None and p.f1 is not None for p in points)
        assert points[-1].loss < points[0].loss - fall, [p.loss for p in points]
        assert st.eval is not None
        assert (st.eval.exact_match, st.eval.f1) == (points[-1].exact_match, points[-1].f1)
        events = list((n.datadir.root / "tensorboard").glob("events.out.tfevents.*"))
        assert len(events) == 1
        assert n.curves.points == STEPS + 3 * len(points)  # train/loss + eval loss, EM, F1
    # every node evaluates at the same counts; at the last one they hold the same records
    p0, p1 = (n.trainer.evals.points[-1] for n in nodes if n.trainer.evals is not None)
    assert (p0.vv_digest, p0.loss, p0.f1) == (p1.vv_digest, p1.loss, p1.f1)


async def test_a_chat_run_learns_agrees_and_replays_shuffled(tmp_path: Path) -> None:
    model = save_chat_model(tmp_path / "tiny-chat")
    data = write_qa(tmp_path / "chat.jsonl", 400, chat=True, seed=0)
    run = RunSettings(
        name="chat", model=str(model), data=str(data), estimator="spsa", lr=1e-3,
        unit_exp=-12, seq_len=64,
    )  # fmt: skip
    nodes, sts = await _run_two(tmp_path, run, chat=True)
    assert nodes[0].manifest.task.kind == "completion"
    assert nodes[0].manifest.task.chat
    _check_learning_and_curves(nodes, sts, fall=0.5)  # measured: 5.57 -> 4.00
    assert _shuffled_replay(nodes[1].datadir.root, str(model)) == sts[0].fingerprint


def _fingerprint_of_the_exported_adapter(exp: Path) -> str:
    """Open the run on the exported base (Engine.open checks its hash against the
    manifest's), read the adapter's weights back into grid steps (exact: they are fp32(n) *
    2^e with |n| < 2^24) and take the fingerprint of that state."""
    info = provenance.read(exp)
    engine = Engine.open(info.manifest, model_ref=str(exp / "base"), kernel="torch")
    weights = load_file(str(exp / ADAPTER_FILE))
    state: dict[str, torch.Tensor] = {}
    for (name, _), grid in zip(engine.trainable, engine.grids, strict=True):
        w = weights.pop(PEFT_PREFIX + name)
        n = torch.ldexp(w.double(), torch.tensor(-grid.exp, dtype=torch.float64)).round()
        assert float(n.abs().max()) < 2**24  # in the range where fp32 holds n exactly
        back = torch.ldexp(n.float(), torch.tensor(grid.exp, dtype=torch.float32))
        assert torch.equal(back.view(torch.int32), w.view(torch.int32)), name  # on the grid
        state[name] = n.to(torch.int64)
    assert not weights, f"the export has tensors the run does not train: {sorted(weights)}"
    return engine.fingerprint_of(state)


async def test_a_lora_run_agrees_and_its_exported_adapter_makes_the_fingerprint(
    tmp_path: Path,
) -> None:
    data = write_qa(tmp_path / "qa.jsonl", 400, chat=False, seed=0)
    run = RunSettings(name="lora", data=str(data), adapter="lora", lora_rank=4, lora_alpha=8.0)
    nodes, sts = await _run_two(tmp_path, run)
    adapter = nodes[0].manifest.adapter
    assert adapter is not None
    assert (adapter.rank, adapter.targets) == (4, ("c_attn",))
    _check_learning_and_curves(nodes, sts, fall=0.1)  # measured: 5.60 -> 5.32 (LoRA is slower)
    fingerprint = sts[0].fingerprint
    assert _shuffled_replay(nodes[0].datadir.root) == fingerprint
    exp = tmp_path / "exp"
    assert export_run(ExportSettings(run=str(nodes[1].datadir.root), out=str(exp))) == 0
    info = json.loads((exp / "seedswarm.json").read_text())
    assert (info["kind"], info["fingerprint"]) == ("peft_adapter", fingerprint)
    # the card's figures are the nodes' last evaluation: it was of exactly these weights
    last = sts[1].eval
    assert last is not None
    assert info["evals"]["loss"] == last.loss
    assert info["evals"]["f1"] == last.f1
    assert _fingerprint_of_the_exported_adapter(exp) == fingerprint
