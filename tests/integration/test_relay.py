"""Relays between real nodes, through a real Mosquitto: nodes listen to a relay's bundles
instead of to each other while one is up, to the other relay when one is killed (-9), and to
each other again when none is left; they agree throughout."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ..helpers import Broker, NodeProc, converged, env, get_json, running, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.broker]


class RelayProc(NodeProc):
    """A ``seedswarm relay`` process (NodeProc's start/stop/status, a relay's arguments)."""

    def __init__(self, name: str, workdir: Path, broker_url: str, manifest: Path) -> None:
        super().__init__(name, workdir, broker_url)
        self.manifest = manifest

    def args(self) -> list[str]:
        return [
            "relay", "--relay", self.name, "--manifest", str(self.manifest),
            "--data-dir", str(self.data_dir), "--http", f"127.0.0.1:{self.port}",
            "--broker", self.broker_url, "--interval", "0.25", "--presence-interval", "1",
        ]  # fmt: skip

    def start(self, args: list[str] | None = None, extra_env: dict[str, str] | None = None) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "seedswarm.daemon.cli", *self.args()],
            stdout=log, stderr=log, env=env(), start_new_session=True,
        )  # fmt: skip
        log.close()

    def status(self, fresh: bool = False) -> dict[str, Any]:
        st: dict[str, Any] = get_json(self.url + "/status")
        return st


def listening(nodes: list[NodeProc], relays: list[str]) -> bool:
    return all(n.status()["relays"] == relays for n in nodes)


def test_nodes_listen_to_relays_and_fall_back_when_they_die(
    mosquitto: Broker, tmp_path: Path
) -> None:
    steps = 150
    pace = ["--step-interval", "0.2", "--max-latency", "0.3", "--relays", "r0,r1"]
    nodes = [NodeProc(f"n{i}", tmp_path, mosquitto.url, *pace, steps=steps) for i in range(3)]
    relays = [RelayProc(f"r{i}", tmp_path, mosquitto.url, tmp_path / "n0") for i in range(2)]
    with running(*nodes, *relays):
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_ready()
        for r in relays:
            r.start()
        wait_until(lambda: all(r.ready("/healthz") for r in relays), timeout=60, what="relays")
        wait_until(lambda: listening(nodes, ["r0", "r1"]), timeout=60, what="nodes to use relays")
        # frames now reach the nodes in the relays' bundles
        forwarded = relays[0].status()["frames_forwarded"]
        taken = [n.status()["records"]["held"] for n in nodes]
        wait_until(
            lambda: all(n.status()["records"]["held"] > t + 10 for n, t in zip(nodes, taken, strict=True)),
            timeout=60, what="records through the relays",
        )  # fmt: skip
        assert relays[0].status()["frames_forwarded"] > forwarded
        assert relays[0].status()["dropped"] == {}

        relays[0].stop(signal.SIGKILL)
        wait_until(lambda: listening(nodes, ["r1"]), timeout=60, what="nodes to keep r1 alone")
        relays[1].stop(signal.SIGKILL)
        wait_until(lambda: listening(nodes, []), timeout=60, what="nodes to listen directly")
        expect = {n.name: steps for n in nodes}
        wait_until(lambda: converged(nodes, expect), timeout=300, what="agreement")
        statuses = [n.status(fresh=True) for n in nodes]
        assert len({st["fingerprint"] for st in statuses}) == 1
        for st in statuses:
            assert {p["node"]: p["relay"] for p in st["peers"]} == {
                **{n.name: False for n in nodes if n.name != st["node"]},
                "r0": True,
                "r1": True,
            }
            assert "equivocation" not in st["dropped"], st["dropped"]
        for n in nodes:
            assert n.stop() == 0, n.tail()
