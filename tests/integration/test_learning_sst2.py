"""The pretrained MiniLM learns SST-2 through the CLI, from the data in the shared folder.

Run as a user would: ``seedswarm train --model minilm`` on the real SST-2 training split with a
held-out slice of its dev split, with the defaults a user gets (FZOO, K = 8: 9 forward passes
and 8 records a step, biases and LayerNorms trained). The figures for the long run are in the
README; this test takes 20 steps (160 records) and checks the trend: the dev loss falls and the
replay rebuilds the weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ..helpers import cli_json

pytestmark = [pytest.mark.slow]

SST2 = Path(__file__).resolve().parents[3] / "shared" / "data" / "sst2"


def test_minilm_learns_sst2(tmp_path: Path) -> None:
    assert (SST2 / "train.tsv").is_file(), f"the SST-2 data is not at {SST2}"
    dev = (SST2 / "dev.tsv").read_text().splitlines()
    held_out = tmp_path / "dev-300.tsv"
    held_out.write_text("\n".join(dev[:301]) + "\n")  # the header and 300 sentences
    out = cli_json(
        "train", "--model", "minilm", "--data", str(SST2 / "train.tsv"),
        "--eval", str(held_out), "--steps", "20", "--eval-every", "20",
        "--out", str(tmp_path / "run"),
    )  # fmt: skip
    first, last = out["eval"][0], out["eval"][-1]
    assert (first["step"], last["step"]) == (0, 20)
    assert first["examples"] == last["examples"] == 300
    assert 0.6 < first["accuracy"] < 0.8  # zero-shot: the label descriptions already help
    assert last["loss"] < first["loss"], (first, last)  # measured: 0.600 -> 0.573
    assert last["accuracy"] >= first["accuracy"], (first, last)  # measured: 66.0% -> 68.0%
    replayed = cli_json("replay", str(tmp_path / "run"))
    assert replayed["fingerprint"] == out["fingerprint"]
