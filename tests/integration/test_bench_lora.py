"""``seedswarm bench step`` and ``bench apply`` with ``--adapter lora``: the same benchmarks on
the LoRA tensors a run with an adapter trains (issue 21), so their figures stand beside the
dense ones. Never asserts on speed (shared machines cannot promise it), only on what ran."""

from __future__ import annotations

import pytest

from seedswarm.model.engine import Engine
from seedswarm.model.hyper import Hyper
from seedswarm.protocol.manifest import TaskSpec

from ..helpers import cli_json_all

pytestmark = [pytest.mark.slow]

LORA = ("--model", "tiny", "--repeats", "2", "--adapter", "lora", "--lora-rank", "4")


def test_bench_step_and_apply_measure_the_adapters_tensors() -> None:
    task = TaskSpec(kind="causal_lm", seq_len=16)
    adapter = Engine.build("bench", "tiny", task, Hyper(adapter="lora", lora_rank=4)).numel
    dense = Engine.build("bench", "tiny", task, Hyper()).numel
    assert adapter == 2 * (4 * 64 + 192 * 4)  # c_attn's A and B in each of the two layers
    step, apply = cli_json_all(
        ("bench", "step", *LORA, "--batch-size", "2", "--seq-len", "16"),
        ("bench", "apply", *LORA, "--batches", "1,16"),
    )
    assert step["params"] == apply["params"] == adapter < dense
    assert all(step["seconds"][k] > 0 for k in ("two_forwards", "zo_step", "mezo_step"))
    assert [row["batch"] for row in apply["batches"]] == [1, 16]
    assert all(row["records_per_s"] > 0 for row in apply["batches"])
