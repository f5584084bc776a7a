"""The manifest on the wire, with real processes and a real Mosquitto: a node under the
swarm's run name with another --lr, and the retained manifest a joiner fetches by run id.

Each side fetches the other's retained manifest (docs/PROTOCOL.md §7) and names the setting
that differs, ours and theirs, in its log and its /status; ``seedswarm swarm`` stops on it with
exit status 2 and that line. (The same two-sided naming in one process, quickly:
tests/unit/daemon/test_foreign_manifest.py.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from seedswarm.protocol.manifest import Manifest
from seedswarm.protocol.retained import manifest_subscription, read_retained_manifest

from ..helpers import Broker, NodeProc, env, running, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.broker]


def test_swarm_stops_naming_the_setting_another_node_runs(
    mosquitto: Broker, tmp_path: Path
) -> None:
    stranger = NodeProc("x", tmp_path, mosquitto.url, "--lr", "0.001", steps=-1)
    with running(stranger):
        stranger.start()
        stranger.wait_ready()
        swarm = subprocess.run(
            [sys.executable, "-m", "seedswarm.daemon.cli", "swarm", "--nodes", "1", "--broker",
             mosquitto.url, "--dir", str(tmp_path / "swarm"), "--presence-interval", "0.5"],
            capture_output=True, text=True, env=env(), timeout=600,
        )  # fmt: skip
        assert swarm.returncode == 2, swarm.stderr[-3000:]
        (line,) = [x for x in swarm.stderr.splitlines() if "runs another manifest" in x]
        assert re.fullmatch(
            r"n0: node x under run name 'default' runs another manifest \(run id [0-9a-f]{16}\): "
            r"lr ours 0\.003 / theirs 0\.001; it is not in this run\. Stopping: give every node "
            r"the same run settings, or another --name",
            line,
        ), line
        # the other side says the same of n0, in its log and its /status
        wait_until(
            lambda: any(f["differences"] for f in stranger.status()["foreign_runs"]),
            timeout=60, what="x to name what n0 runs differently",
        )  # fmt: skip
        (seen,) = stranger.status()["foreign_runs"]
        assert seen["nodes"] == ["n0"]
        assert seen["differences"] == [{"field": "lr", "ours": "0.001", "theirs": "0.003"}]
        assert re.search(
            r"x: n0 under run name 'default' runs another manifest \(run id [0-9a-f]{16}\): "
            r"lr ours 0\.001 / theirs 0\.003",
            stranger.log_path.read_text(),
        )
        assert stranger.stop() == 0


def _retained_manifest(broker: Broker, run_id: bytes) -> bytes:
    """What a joiner that knows only the run id gets from the broker (a real MQTT client)."""
    import concurrent.futures

    import paho.mqtt.subscribe as subscribe

    topic = manifest_subscription("seedswarm", run_id).topic
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        got = pool.submit(subscribe.simple, topic, qos=1, hostname="127.0.0.1", port=broker.port)
        msg = got.result(timeout=60)  # a safety net: a retained message comes at once
    payload: bytes = msg.payload
    assert read_retained_manifest(msg.topic, payload, prefix="seedswarm", run_id=run_id)
    return payload


def test_a_node_publishes_its_manifest_on_every_connect(tmp_path: Path) -> None:
    """Retained on ``manifest/<run id>`` at every connection: a Mosquitto restarted without
    persistence has forgotten it, and has it again once the node is back."""
    broker = Broker("mosquitto", tmp_path / "broker")
    broker.start()
    node = NodeProc("a", tmp_path, broker.url, steps=2)
    try:
        with running(node):
            node.start()
            node.wait_ready()
            run_id = bytes.fromhex(node.status()["run_id"])
            manifest = Manifest.from_json((node.data_dir / "manifest.json").read_text())
            assert _retained_manifest(broker, run_id) == manifest.canonical_bytes()
            connects = node.status()["broker"]["connects"]
            broker.stop()
            broker.start()  # same port, nothing retained
            wait_until(
                lambda: node.status()["broker"]["connects"] > connects
                and node.status()["broker"]["state"] == "connected",
                timeout=120, what="the node to reconnect",
            )  # fmt: skip
            assert _retained_manifest(broker, run_id) == manifest.canonical_bytes()
            assert node.stop() == 0
    finally:
        broker.stop()
