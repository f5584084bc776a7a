"""A relay the run names that negates the records of one node, between two real nodes in one
process over the in-memory bus (``memory://``, a FAKE broker: daemon/transport/memory.py). The
relay is a client of the bus written here (tests/hostile.py), not ``seedswarm relay``.

It negates n1's frames and forwards n0's as they came. n1 gets its own frames back altered and
stops following it at once (``tampered``). n0 gets its own back unaltered, so nothing tells it
but the held digests: it holds n1's records with other bytes than n1, asks n1 for its vv, gives
all of n1's records back (its model un-applies them, trusted as they were), deletes any
snapshot that holds them, fetches them again from n1, and catches the relay. The two nodes end
with one fingerprint, and a restart of n0 from its snapshot and its log gives the same. The same
through real processes and Mosquitto: tests/integration/test_hostile_relays.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from seedswarm.daemon.node.node import Node
from seedswarm.daemon.settings import LocalSettings, MqttSettings, NodeSettings, RunSettings
from seedswarm.daemon.status.schema import NodeStatus
from seedswarm.daemon.transport import TransportSpec
from seedswarm.daemon.transport.memory import MemoryBus
from seedswarm.protocol.events import Kind, Outgoing
from seedswarm.protocol.session import Session
from seedswarm.protocol.topics import Subscription

from ...hostile import HostileBundler, negated

pytestmark = pytest.mark.asyncio

STEPS = 30


def _node(bus: MemoryBus, tmp_path: Path, name: str, i: int, steps: int = STEPS) -> Node:
    settings = NodeSettings(
        mqtt=MqttSettings(broker=f"memory://{bus.name}"),
        run=RunSettings(name="rep", relays="r0"),
        local=LocalSettings(node=name, shard=f"{i}/2", batch_size=4, kernel="torch"),
        data_dir=str(tmp_path / name),
        http="127.0.0.1:0",
        steps=steps,
        presence_interval=0.2,
        join_wait=0.2,
        max_latency=0.05,
        frame_records=4,
        snapshot_every=8,
        step_interval=0.05,
        torch_threads=1,
    )
    return Node(settings)


async def _hostile_relay(bus: MemoryBus, session: Session, stop: asyncio.Event) -> None:
    """Forward n0's frames as they came and n1's negated, every 0.05 s, as relay r0."""
    bundler = HostileBundler(lambda: session.presence(steps=0, loss=None).payload, "r0")
    topics = session.topics

    def on_message(topic: str, payload: bytes) -> None:
        kind, node = topic.split("/")[-2:]
        bundler.take(kind, node, payload, lambda n, f: negated(f, signed=False) if n == "n1" else f)

    client = bus.factory(
        TransportSpec(
            client_id="r0",
            subscriptions=[
                Subscription(topics.records("+"), 0),
                Subscription(topics.presence("+"), 0),
            ],
            on_message=on_message,
            will=Outgoing(topics.presence("r0"), b"", Kind.PRESENCE),
        )
    )
    running = asyncio.ensure_future(client.run())
    try:
        client.publish(session.presence(steps=0, loss=None))
        while not stop.is_set():
            client.publish(Outgoing(topics.bundles("r0"), bundler.bundle(), Kind.BUNDLE))
            await asyncio.sleep(0.05)
    finally:
        client.close()
        await running


async def _statuses(nodes: list[Node]) -> list[NodeStatus]:
    return [await n.status(fresh=True) for n in nodes]


async def _until(pred: Callable[[], Awaitable[bool]], what: str, seconds: float = 240) -> None:
    """Poll ``pred`` until it holds; ``what`` names it if the safety net runs out."""
    try:
        async with asyncio.timeout(seconds):  # a safety net on a loaded machine
            while not await pred():  # noqa: ASYNC110 (the nodes' state)
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_a_relay_that_negates_one_nodes_records_is_caught_and_repaired(
    tmp_path: Path,
) -> None:
    bus = MemoryBus.named(f"repair-{tmp_path.name}")
    n0, n1 = _node(bus, tmp_path, "n0", 0), _node(bus, tmp_path, "n1", 1)
    stop = asyncio.Event()
    expect = {"n0": STEPS, "n1": STEPS}

    async def agreed() -> bool:
        if not all(n.phase == "running" for n in (n0, n1)):
            return False
        sts = await _statuses([n0, n1])
        return all(st.version_vector == expect and not st.records.pending for st in sts) and (
            len({st.fingerprint for st in sts}) == 1
        )

    async with asyncio.TaskGroup() as tg:
        runs = [tg.create_task(n.run(signals=False)) for n in (n0, n1)]

        async def started() -> bool:
            return all(n.phase == "running" for n in (n0, n1))

        await _until(started, "the nodes to start")
        relay_session = Session(n0.manifest, "r0", relay=True)
        relay = tg.create_task(_hostile_relay(bus, relay_session, stop))

        async def n0_follows() -> bool:
            return (await n0.status(fresh=False)).relays == ["r0"]

        await _until(n0_follows, "n0 to follow r0")
        await _until(agreed, "one fingerprint")
        s0, s1 = await _statuses([n0, n1])
        # n1 saw its own frames altered: caught at once; n0 only by n1's word on its records
        assert s1.trust.distrusted == {"r0": "tampered"}
        assert s0.trust.distrusted == {"r0": "tampered"}
        assert s0.trust.repairs >= 1
        assert s0.trust.content_mismatches >= 1
        assert s0.trust.records_given_back >= 1
        assert s0.dropped["tampered"] == {"r0": 1}
        assert s0.trust.held_digest == s1.trust.held_digest
        # a snapshot n0 took while it held n1's negated records is deleted, never served
        # again (if it took one: n0 now catches the relay while the nodes step, often before
        # its next snapshot); the restart below, from the newest snapshot n0 kept, shows it
        print(f"n0 discarded {s0.snapshots.discarded} snapshots")
        stop.set()
        await relay
        for n in (n0, n1):
            n.request_stop()
    assert [r.result() for r in runs] == [0, 0]

    # n0 again, from what it left on disk (its newest snapshot, then its log): same weights
    again = _node(bus, tmp_path, "n0", 0)
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(again.run(signals=False))

        async def restored() -> bool:
            if again.phase != "running":
                return False
            st = await again.status(fresh=True)
            return st.version_vector == expect and not st.records.pending

        await _until(restored, "n0 to restart")
        st = await again.status(fresh=True)
        assert st.fingerprint == s1.fingerprint
        assert st.restored_records > 0  # from a snapshot taken after the repair
        again.request_stop()
    assert run.result() == 0
