"""Faults and bad input against real node processes and a real broker.

kill -9 in the middle of training, a broker restart that loses every session (no
persistence), garbage and forged frames and messages from the network, a node that brings
another manifest, and the status endpoint while the model thread is busy.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt
import pytest

from seedswarm.protocol.codec import encode_frame, encode_message, sign_frame
from seedswarm.protocol.messages import Presence, encode_presence
from seedswarm.protocol.records import Frame
from seedswarm.protocol.signing import NodeKey

from ..helpers import (
    Broker,
    NodeProc,
    cli,
    converged,
    free_port,
    get_text,
    running,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.broker]


def test_kill9_and_broker_restart_lose_nothing(tmp_path: Path) -> None:
    broker = Broker("mosquitto", tmp_path / "broker", persistence=False)
    broker.start()
    steps = 60
    nodes = [NodeProc(f"n{i}", tmp_path, broker.url, steps=steps) for i in range(3)]
    try:
        with running(*nodes):
            for n in nodes:
                n.start()
            for n in nodes:
                n.wait_ready()
            wait_until(
                lambda: nodes[2].status()["steps"]["taken"] >= 10, timeout=120, what="n2 to step"
            )
            # kill -9 in the middle of training: no goodbye, no final flush, no snapshot
            nodes[2].stop(signal.SIGKILL)

            # the broker publishes n2's will (retained presence, alive false) once the
            # keepalive runs out; the others see it
            def n2_gone() -> bool:
                peers = {p["node"]: p for p in nodes[0].status()["peers"]}
                return "n2" in peers and not peers["n2"]["alive"]

            wait_until(n2_gone, timeout=120, what="the broker to deliver n2's will")
            # and the broker goes away too, forgetting every session and queued message
            broker.stop()
            time.sleep(1.0)
            broker.start()  # same port
            restarted = NodeProc("n2", tmp_path, broker.url, steps=steps)
            nodes[2] = restarted
            restarted.start()
            expect = {n.name: steps for n in nodes}
            wait_until(lambda: converged(nodes, expect), timeout=300, what="recovery")
            statuses = [n.status(fresh=True) for n in nodes]
            assert len({st["fingerprint"] for st in statuses}) == 1
            for st in statuses:
                assert "equivocation" not in st["dropped"], st["dropped"]
                assert st["broker"]["connects"] >= 1
            assert statuses[0]["broker"]["connects"] >= 2  # n0 reconnected after the restart
            for n in nodes:
                assert n.stop() == 0, n.tail()
    finally:
        broker.stop()


async def _inject(port: int, messages: list[tuple[str, bytes]]) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="attacker") as c:
        for topic, payload in messages:
            await c.publish(topic, payload, qos=1)


def test_bad_frames_and_messages_are_dropped_and_counted(mosquitto: Broker, tmp_path: Path) -> None:
    keys = {name: NodeKey.generate() for name in ("n0", "n1")}
    for name, key in keys.items():
        (tmp_path / f"{name}.key").write_text(key.private_hex())
    key_arg = ",".join(f"{n}={k.public_hex()}" for n, k in keys.items())
    nodes = [
        NodeProc(n, tmp_path, mosquitto.url, "--keys", key_arg, "--key-file", str(tmp_path / f"{n}.key"),
                 steps=20)
        for n in keys
    ]  # fmt: skip
    with running(*nodes):
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_ready()
        run_id = bytes.fromhex(nodes[0].status()["run_id"])
        base = "seedswarm/default"
        good = Frame(run_id, "n0", 1000, 5, b"\x01\x02")
        outsider = NodeKey.generate()
        sig = b"\x00" * 64  # room for a signature: the checks before it are what is hit
        other_run = encode_presence(Presence("n0", b"other-rn", True), keys["n0"])
        messages = [
            (f"{base}/records/n0", b"\xc1"),  # not a frame of protocol 2
            (f"{base}/records/n0", b"\x02\x80\x80\x80" + sig),  # a varint cut short
            (f"{base}/records/n0", b"\x02\x80\x00\x00\x01" + sig),  # a varint too long
            (f"{base}/records/n0", b"\x02\x00\x00\x80" + sig),  # record value -128
            (f"{base}/records/n0", encode_frame(good)),  # unsigned in a signed run
            (f"{base}/records/n0", encode_frame(sign_frame(good, outsider))),  # wrong key
            (
                f"{base}/records/n9",
                encode_frame(sign_frame(Frame(run_id, "n9", 0, 1, b"\x01"), outsider)),
            ),
            # n0's frame on n1's topic: read as n1's, its signature does not fit
            (f"{base}/records/n1", encode_frame(sign_frame(good, keys["n0"]))),
            # a frame in n1's own name (forged with its key): n1 trusts its own log
            (
                f"{base}/records/n1",
                encode_frame(sign_frame(Frame(run_id, "n1", 900, 5, b"\x07"), keys["n1"])),
            ),
            (f"{base}/records/n0", b"\x02" + b"\x00" * 9000),  # oversized
            # a want that is validly signed by n0 but names a node with a number
            (
                f"{base}/sync/n1/n0",
                encode_message("w", run_id, [5, 0, 1], sender="n0", key=keys["n0"]),
            ),
            (f"{base}/presence/n0", other_run),  # not retained: a presence of another run
        ]
        asyncio.run(_inject(mosquitto.port, messages))
        expect = {"n0": 20, "n1": 20}
        wait_until(
            lambda: converged(nodes, expect), timeout=300, what="convergence despite garbage"
        )
        wait_until(
            lambda: nodes[1].status()["dropped_total"] >= 11, timeout=60, what="drops counted"
        )
        st = nodes[1].status(fresh=True)
        dropped = st["dropped"]
        for reason in (
            "malformed",
            "truncated",
            "bad_type",
            "bad_range",
            "bad_version",
            "wrong_run",
            "unsigned",
            "bad_signature",
            "unknown_signer",
            "oversized",
            "impersonation",
        ):
            assert reason in dropped, (reason, sorted(dropped.items()))
        assert dropped["impersonation"] == {"n1": 1}
        assert st["mode"] == "signed"
        assert nodes[0].status(fresh=True)["fingerprint"] == st["fingerprint"]
        status, metrics = get_text(nodes[1].url + "/metrics")
        assert status == 200
        assert 'seedswarm_dropped_total{node="n1",reason="bad_signature",sender="n0"}' in metrics

        # equivocation: n0's own key signs another byte for a record n0 already published
        clock, _, _, q = next(r for r in nodes[1].full_log() if r[1] == "n0" and r[2] == 0)
        forged = sign_frame(Frame(run_id, "n0", 0, clock, bytes([(q + 1) & 0x7F])), keys["n0"])
        asyncio.run(_inject(mosquitto.port, [(f"{base}/records/n0", encode_frame(forged))]))
        wait_until(
            lambda: nodes[1].status()["dropped"].get("equivocation", {}).get("n0", 0) >= 1,
            timeout=60,
            what="the equivocation to be counted",
        )
        after = nodes[1].status(fresh=True)
        assert after["fingerprint"] == st["fingerprint"]
        assert after["version_vector"] == expect
        assert (clock, "n0", 0, q) in nodes[1].full_log()  # the first byte stands
        for n in nodes:
            assert n.stop() == 0, n.tail()


def test_a_node_of_another_manifest_is_warned_about_and_stops_nobody(
    mosquitto: Broker, tmp_path: Path
) -> None:
    """Different settings under one run name make another run: each node trains in its own,
    says so loudly, and mixes nothing (a forged presence can no longer stop a node)."""
    first = NodeProc("n0", tmp_path, mosquitto.url, steps=10)
    other = NodeProc("n1", tmp_path, mosquitto.url, "--lr", "0.01", steps=10)
    with running(first, other):
        first.start()
        first.wait_ready()
        other.start()
        other.wait_ready()
        wait_until(
            lambda: first.status()["steps"]["done"] and other.status()["steps"]["done"],
            timeout=300,
            what="both to finish their steps",
        )
        wait_until(
            lambda: "runs another manifest" in other.log_path.read_text(),
            timeout=60,
            what="the warning",
        )
        assert "wrong_run" in other.status()["dropped"]
        assert first.status()["version_vector"] == {"n0": 10}  # nothing of n1's run mixed in
        assert other.status()["version_vector"] == {"n1": 10}
        assert first.stop() == 0
        assert other.stop() == 0


def test_status_log_metrics_answer_while_a_step_runs(mosquitto: Broker, tmp_path: Path) -> None:
    # a batch large enough that one step of the tiny model takes a while
    node = NodeProc(
        "n0", tmp_path, mosquitto.url, "--batch-size", "256", "--seq-len", "256", steps=3
    )
    with running(node):
        node.start()
        node.wait_ready()
        busy_answers = 0
        deadline = time.monotonic() + 120
        while busy_answers < 3 and time.monotonic() < deadline:
            st = node.status()
            if st["model_busy"]:
                steps = st["steps"]["this_session"]
                # while the model thread is inside one step, every endpoint still answers
                assert get_text(node.url + "/healthz")[0] == 200
                assert get_text(node.url + "/log?limit=5")[0] == 200
                assert get_text(node.url + "/metrics")[0] == 200
                again = node.status()
                if again["model_busy"] and again["steps"]["this_session"] == steps:
                    busy_answers += 1
        assert busy_answers >= 3, "the endpoints did not answer during a step"
        assert node.stop() == 0, node.tail()


def test_node_settings_from_a_config_file_and_the_environment(
    mosquitto: Broker, tmp_path: Path
) -> None:
    """--config file < environment < flags, for the daemon."""
    cfg = tmp_path / "node.toml"
    cfg.write_text(
        f'[node]\nnode = "from-file"\nsteps = 4\nbatch_size = 2\nbroker = "{mosquitto.url}"\n'
    )
    node = NodeProc("ignored", tmp_path, mosquitto.url, steps=4)
    args = [a for a in node.args() if a not in ("--node", "ignored", "--steps", "4")]
    args += ["--config", str(cfg)]
    with running(node):
        node.start(args, extra_env={"SEEDSWARM_STEPS": "6"})  # the environment beats the file
        node.wait_ready()
        wait_until(lambda: node.status()["steps"]["done"], timeout=120, what="six steps")
        st = node.status()
        assert st["node"] == "from-file"
        assert st["steps"]["limit"] == 6
        assert st["steps"]["taken"] == 6
        # rates over the last 30 s: the six steps were just taken
        assert st["steps"]["per_s"] > 0
        assert st["steps"]["seconds_each"] > 0
        assert st["steps"]["examples"] == 2  # batch_size from the file: what a step drew
        assert 'seedswarm_step_examples{node="from-file"} 2.0' in get_text(node.url + "/metrics")[1]
        assert "steps/s of 2 examples" in cli("status", node.url, check=True).stdout
        assert st["records_per_s"] > 0
        assert node.stop() == 0
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = 'many'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "seedswarm.daemon.cli", "node", "--config", str(bad)],
        capture_output=True, text=True, timeout=120, env=env_without_steps(),
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "seedswarm node: error: config file: steps: expected an integer, got 'many'"
    )


def test_a_node_that_never_reached_its_broker_stops_on_sigterm(tmp_path: Path) -> None:
    """SIGTERM before the first connection (broker down) ends the node promptly, exit 0."""
    nobody = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens here
    node = NodeProc("lonely", tmp_path, nobody, steps=5)
    with running(node):
        node.start()
        wait_until(lambda: node.ready("/healthz"), timeout=120, what="the node's status endpoint")
        st = node.status()
        assert st["broker"]["connects"] == 0
        assert st["broker"]["state"] in ("connecting", "disconnected")
        assert get_text(node.url + "/readyz")[0] == 503
        assert node.stop(timeout=30) == 0, node.tail()


def test_sigusr2_ends_stepping_but_not_the_node(mosquitto: Broker, tmp_path: Path) -> None:
    """kill -USR2: no more own steps (as if --steps had been reached); the node still serves."""
    node = NodeProc("n0", tmp_path, mosquitto.url, steps=-1)
    with running(node):
        node.start()
        node.wait_ready()
        wait_until(lambda: node.status()["steps"]["taken"] >= 5, timeout=120, what="5 steps")
        assert node.proc is not None
        node.proc.send_signal(signal.SIGUSR2)
        wait_until(lambda: node.status()["steps"]["done"], timeout=60, what="stepping to end")
        st = node.status()
        assert st["steps"]["limit"] == st["steps"]["taken"]
        time.sleep(1.0)
        assert node.status()["steps"]["taken"] == st["steps"]["taken"]
        assert node.status(fresh=True)["version_vector"] == {"n0": st["steps"]["taken"]}
        assert node.stop() == 0, node.tail()


def env_without_steps() -> dict[str, str]:
    e = dict(os.environ)
    e.pop("SEEDSWARM_STEPS", None)
    return e
