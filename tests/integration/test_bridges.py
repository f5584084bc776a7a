"""Mosquitto bridges: a root broker and two regional brokers, each bridged to the root.

What this proves (issue 13, the broker tier): with the bridge of daemon/launch/mosquitto.py
(``bridge_config``: ``<prefix>/#`` both ways at QoS 1, MQTT 5 No Local and Retain As Published),
every message crosses the tier exactly once and retained presence stays retained on every
broker; nodes spread over the three brokers agree on one fingerprint; when a regional broker
is killed and comes back empty on the same port, its nodes reconnect and fetch what they
missed from the peers behind the other brokers (wants and answers cross two bridges), and
every node agrees again. Brokers and nodes are real processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from seedswarm.daemon.launch.mosquitto import bridge_config

from ..helpers import MOSQUITTO, Broker, NodeProc, converged, running, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.broker]

REGIONS = ("r1", "r2")
STEPS = 15  # every node's own steps before the outage
MORE = 30  # n2's own steps in all: it takes the last 15 while r1 is down


class Tier:
    """A root broker and one regional broker per region, each bridged to the root."""

    def __init__(self, workdir: Path) -> None:
        self.root = Broker("mosquitto", workdir / "root")
        self.regional = {
            r: Broker("mosquitto", workdir / r, bridge=bridge_config(self.bridge(r), self.address))
            for r in REGIONS
        }

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.root.port}"

    @staticmethod
    def bridge(region: str) -> str:
        return f"bridge-{region}"

    def brokers(self) -> dict[str, Broker]:
        return {"root": self.root, **self.regional}

    def bridge_state(self, region: str) -> str:
        """What the root says of a regional's bridge: "1" up, "0" gone (the bridge's will),
        "" not yet known. Mosquitto publishes it, retained, as the bridge's notification."""
        topic = f"$SYS/broker/connection/{self.bridge(region)}/state"
        payload = asyncio.run(_first_message(self.root.port, topic))
        return payload.decode() if payload is not None else ""

    def wait_bridged(self, region: str, state: str = "1") -> None:
        wait_until(
            lambda: self.bridge_state(region) == state,
            timeout=60,
            what=f"the root to report bridge {self.bridge(region)} as {state!r}",
        )


@pytest.fixture
def tier(tmp_path: Path) -> Iterator[Tier]:
    if MOSQUITTO is None:
        pytest.fail("mosquitto is not installed: apt install mosquitto (scripts/test does)")
    t = Tier(tmp_path / "brokers")
    try:
        t.root.start()
        for b in t.regional.values():
            b.start()
        for r in REGIONS:
            t.wait_bridged(r)
        yield t
    finally:
        for b in t.brokers().values():
            b.stop()


async def _first_message(port: int, topic: str, wait: float = 2.0) -> bytes | None:
    """The first message on ``topic`` (a retained one arrives at once), or None."""
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"probe-{port}") as c:
        await c.subscribe(topic, qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                async for m in c.messages:
                    return m.payload if isinstance(m.payload, bytes) else b""
    return None


async def _collect(client: aiomqtt.Client, want: int, quiet: float) -> list[aiomqtt.Message]:
    """``want`` messages (a safety deadline against hangs), then whatever else arrives
    until ``quiet`` seconds pass without one: a loop would show here as more copies."""
    got: list[aiomqtt.Message] = []
    async with asyncio.timeout(60):
        async for m in client.messages:
            got.append(m)
            if len(got) == want:
                break
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(quiet):
            got.extend([m async for m in client.messages])
    return got


async def _probe(brokers: dict[str, Broker]) -> tuple[dict[str, Counter[str]], dict[str, set[str]]]:
    """Each broker gets one client, which subscribes to the probe topics and publishes one
    retained message: what each client received live, then what a fresh client on each
    broker receives as retained."""
    live: dict[str, Counter[str]] = {}
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            name: await stack.enter_async_context(
                aiomqtt.Client("127.0.0.1", b.port, identifier=f"live-{name}")
            )
            for name, b in brokers.items()
        }
        for c in clients.values():
            await c.subscribe("seedswarm/probe/#", qos=1)
        for name, c in clients.items():
            await c.publish(f"seedswarm/probe/{name}", name.encode(), qos=1, retain=True)
        for name, c in clients.items():
            got = await _collect(c, len(brokers), quiet=1.0)
            live[name] = Counter(m.topic.value for m in got)
    retained: dict[str, set[str]] = {}
    for name, b in brokers.items():
        async with aiomqtt.Client("127.0.0.1", b.port, identifier=f"late-{name}") as c:
            await c.subscribe("seedswarm/probe/#", qos=1)
            got = await _collect(c, len(brokers), quiet=0.5)
            retained[name] = {m.topic.value for m in got if m.retain}
    return live, retained


def test_each_message_crosses_the_bridges_once_and_retained_stays_retained(tier: Tier) -> None:
    brokers = tier.brokers()
    live, retained = asyncio.run(_probe(brokers))
    every = {f"seedswarm/probe/{name}" for name in brokers}
    for name in brokers:
        # one copy of each broker's message on every broker: nothing echoed back by a bridge
        assert live[name] == Counter(every), (name, live[name])
        # a client that connects later, anywhere, gets every broker's retained message
        assert retained[name] == every, (name, retained[name])


def test_nodes_on_bridged_brokers_agree_and_survive_a_regional_restart(
    tier: Tier, tmp_path: Path
) -> None:
    homes = {"n0": "r1", "n1": "r1", "n2": "r2", "n3": "r2", "n4": "root"}
    brokers = tier.brokers()
    nodes = [
        NodeProc(name, tmp_path, brokers[home].url, "--shard", f"{i}/{len(homes)}", steps=STEPS)
        for i, (name, home) in enumerate(homes.items())
    ]
    on_r1 = [n for n in nodes if homes[n.name] == "r1"]
    # n2 again, restarted from its data directory with a higher limit while r1 is down
    n2_again = NodeProc("n2", tmp_path, brokers["r2"].url, "--shard", f"2/{len(homes)}", steps=MORE)
    with running(*nodes, n2_again):
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_ready()
        expect = {n.name: STEPS for n in nodes}
        wait_until(
            lambda: converged(nodes, expect), timeout=300, what="the nodes to agree across bridges"
        )
        statuses = [n.status(fresh=True) for n in nodes]
        assert len({st["fingerprint"] for st in statuses}) == 1, statuses
        for st in statuses:
            assert st["echoes"] == 0, st  # no own frame came back through a bridge
            assert st["dropped_total"] == 0, st["dropped"]
            # every other node's presence arrived, whichever broker it is on
            assert {p["node"] for p in st["peers"]} == set(homes) - {st["node"]}, st["peers"]

        # r1 dies without a goodbye: no will is published for its nodes, and the root
        # publishes the bridge's own (its state "0")
        tier.regional["r1"].stop(signal.SIGKILL)
        tier.wait_bridged("r1", "0")
        wait_until(
            lambda: all(n.status()["broker"]["state"] != "connected" for n in on_r1),
            timeout=60,
            what="the nodes on r1 to lose their broker",
        )
        # meanwhile n2 (on r2) trains on; n3 (r2) and n4 (root) get its new records, n0 and
        # n1 (r1) cannot
        assert nodes[2].stop() == 0, nodes[2].tail()
        nodes[2] = n2_again
        n2_again.start()
        n2_again.wait_ready()
        after = {**expect, "n2": MORE}
        reachable = [n for n in nodes if homes[n.name] != "r1"]
        wait_until(lambda: converged(reachable, after), timeout=300, what="r2 and root to agree")
        wants_before: dict[str, int] = {}
        for n in on_r1:
            st = n.status()
            assert st["version_vector"] == expect  # nothing reached them
            wants_before[n.name] = st["sync"]["wants_sent"]

        # r1 comes back on the same port, empty (no persistence, no queue kept at the root):
        # its nodes reconnect, and fetch n2's last records by wants across both bridges
        tier.regional["r1"].start()
        tier.wait_bridged("r1")
        wait_until(lambda: converged(nodes, after), timeout=300, what="all nodes to agree again")
        statuses = [n.status(fresh=True) for n in nodes]
        assert len({st["fingerprint"] for st in statuses}) == 1, statuses
        for st in statuses:
            assert st["echoes"] == 0, st
            assert "equivocation" not in st["dropped"], st["dropped"]
        for n, st in zip(nodes, statuses, strict=True):
            if n in on_r1:
                assert st["broker"]["connects"] >= 2, st["broker"]  # reconnected to r1
                # n2's new records came by wants (nothing else carries them now) ...
                assert st["sync"]["wants_sent"] > wants_before[n.name], st["sync"]
        # ... and n2, their author, answered them: one want at least from each
        assert statuses[2]["sync"]["wants_answered"] >= len(on_r1), statuses[2]["sync"]
        for n in nodes:
            assert n.stop() == 0, n.tail()
