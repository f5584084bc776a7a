"""``seedswarm bench control`` at tiny swarm sizes: the shape of its output and its byte counts.

Times are never asserted on (docs: tests never assert on wall time); only that they are there.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from seedswarm.daemon.bench.control import (
    HTTP,
    LOSS,
    MANIFEST,
    ME,
    OWN_RECORDS,
    PEER_RECORDS,
    ControlResult,
    bench_control,
    peer_sizes,
    print_control,
)
from seedswarm.daemon.bench.run import run_bench
from seedswarm.daemon.bench.settings import BENCHES, BenchSettings
from seedswarm.daemon.errors import ConfigError
from seedswarm.protocol.messages import Presence, encode_presence
from seedswarm.protocol.records import SIGNATURE_BYTES
from seedswarm.protocol.vv import digest_bytes


@pytest.fixture(scope="module")
def control() -> ControlResult:
    return bench_control(BenchSettings(which="control", peers="2,3", repeats=1))


@pytest.fixture(scope="module")
def result(control: ControlResult) -> dict[str, Any]:
    """The result as ``--json`` prints it."""
    return control.to_json()


def test_one_row_per_size_with_every_figure(result: dict[str, Any]) -> None:
    assert [row["peers"] for row in result["rows"]] == [2, 3]
    for row in result["rows"]:
        for state in ("in_sync", "behind"):
            seconds = row["heartbeat"][state]["seconds"]
            assert set(seconds) == {"receive", "presence", "wants", "tick", "total"}
            assert all(v > 0 for v in seconds.values())
        assert row["frame_accept_seconds"] > 0
        assert row["vv_copy_seconds"] > 0
        assert set(row["ratios"]) == {
            "presence_bytes",
            "frame_accept",
            "receive_per_presence",
            "heartbeat_per_peer_in_sync",
            "heartbeat_per_peer_behind",
        }
    assert all(v == 1.0 for v in result["rows"][0]["ratios"].values())


def test_presence_bytes_are_those_of_the_encoded_message(result: dict[str, Any]) -> None:
    for row in result["rows"]:
        n = row["peers"]
        held = {f"p{i:05d}": PEER_RECORDS for i in range(n)} | {ME: OWN_RECORDS}
        expected = Presence(
            node=ME,
            run_id=MANIFEST.run_id(),
            alive=True,
            own=OWN_RECORDS,
            held_digest=digest_bytes(held),
            held_total=sum(held.values()),
            steps=OWN_RECORDS,
            loss=LOSS,
            http=HTTP,
        )
        assert row["presence_bytes"]["open"] == len(encode_presence(expected))
        assert row["presence_bytes"]["signed"] == row["presence_bytes"]["open"] + SIGNATURE_BYTES


def test_in_sync_sends_nothing_and_behind_asks_every_peer(result: dict[str, Any]) -> None:
    for row in result["rows"]:
        assert row["heartbeat"]["in_sync"]["messages_out"] == 0
        # one want per peer (each is one record ahead) and one vv request
        assert row["heartbeat"]["behind"]["messages_out"] == row["peers"] + 1


def test_printed_table_has_a_line_per_size(control: ControlResult) -> None:
    text = print_control(control)
    lines = text.splitlines()
    assert lines[1].split()[0] == "peers"
    assert [line.split()[0] for line in lines[3:5]] == ["2", "3"]
    assert "one heartbeat round, by part" in text


def test_the_command_is_registered_and_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert "control" in BENCHES
    assert run_bench(BenchSettings(which="control", peers="2", repeats=1, json=True)) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bench"] == "control"
    assert out["rows"][0]["peers"] == 2


@pytest.mark.parametrize("raw", ["", "0,10", "ten", "-1"])
def test_bad_sizes_are_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="--peers"):
        peer_sizes(raw)
