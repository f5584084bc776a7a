"""A real relay (its driver, session, bundler and SQLite store) in one process over the
in-memory bus (``memory://``, a FAKE broker: daemon/transport/memory.py), fed by a node that
is only a session: the relay's logic, fast and without a broker. What the relay does through a
real Mosquitto, between real node processes, is tested in tests/integration/test_relay.py.

What this pins down is how a relay stops: in a node's order. It stops reading with the batch
in hand stored (no frame it accepted is lost, though it is stopped in the middle of a stream),
forwards what waited for the next bundle, and only then says goodbye, its last word. (The
relay before issue 19 accepted frames as they came and queued their writes for a task it
cancelled at stop: in this scenario it kept 104 of the 204 records it had accepted.)
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from seedswarm.daemon.relay.relay import Relay
from seedswarm.daemon.settings import MqttSettings, RelaySettings
from seedswarm.daemon.store.datadir import DataDir
from seedswarm.daemon.store.log_store import SqliteLogStore, Stored
from seedswarm.daemon.transport import TransportSpec
from seedswarm.daemon.transport.memory import MemoryBus
from seedswarm.protocol.codec import FRAME_V2, decode_bundle, decode_frame
from seedswarm.protocol.events import Kind, Outgoing
from seedswarm.protocol.log import OrderedLog
from seedswarm.protocol.manifest import Manifest, TaskSpec
from seedswarm.protocol.messages import Presence, decode_control
from seedswarm.protocol.session import Session
from seedswarm.protocol.topics import Subscription

pytestmark = pytest.mark.asyncio

MANIFEST = Manifest(
    name="relayed",
    model="tiny",
    base_hash="0" * 64,
    task=TaskSpec(kind="causal_lm"),
    relays=("r0",),  # a relay the run does not name is refused at start
)
WAVE = 100  # frames published in one go: two waves, the relay stopped during the second


def _relay(tmp_path: Path, bus: MemoryBus, **kw: float) -> Relay:
    DataDir(tmp_path / "run").write_manifest(MANIFEST)
    settings = RelaySettings(
        mqtt=MqttSettings(broker=f"memory://{bus.name}"),
        relay="r0",
        manifest=str(tmp_path / "run"),
        data_dir=str(tmp_path / "relay"),
        http="127.0.0.1:0",
        interval=kw.get("interval", 60.0),
        presence_interval=kw.get("presence_interval", 60.0),
        drain_timeout=1.0,
    )
    return Relay(settings)


def slow(store: SqliteLogStore, seconds: float = 0.2) -> None:
    """Make each append of ``store`` take ``seconds`` more (it runs on the store's thread)."""
    append = store.append

    def slow_append(frames: Sequence[Stored]) -> None:
        time.sleep(seconds)
        append(frames)

    store.append = slow_append  # type: ignore[method-assign]


def _accepted_beyond(relay: Relay, records: int) -> bool:
    return relay.session.log.next_seq("n0") > records


def _listen(bus: MemoryBus, topic: str) -> list[tuple[str, bytes]]:
    """Everything published on ``topic`` (a client of the bus that only listens)."""
    got: list[tuple[str, bytes]] = []
    listener = bus.factory(
        TransportSpec(
            client_id="listener",
            subscriptions=[Subscription(topic, 0)],
            on_message=lambda t, p: got.append((t, p)),
            will=Outgoing("unused/will", b"", Kind.PRESENCE),
        )
    )
    bus.clients.append(listener)  # type: ignore[arg-type]
    listener.connected.set()
    return got


async def _until(pred: Callable[[], object]) -> None:
    async with asyncio.timeout(60):
        while not pred():  # noqa: ASYNC110 (a condition of another task's state)
            await asyncio.sleep(0.005)


async def test_a_relay_stopped_mid_stream_loses_no_frame_it_accepted(tmp_path: Path) -> None:
    bus = MemoryBus.named(f"relay-stop-{tmp_path.name}")
    relay = _relay(tmp_path, bus)
    node = Session(MANIFEST, "n0")
    topics = node.topics
    out = _listen(bus, "#")
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(relay.run(signals=False))
        await _until(lambda: relay.phase == "running" and relay.ready)
        p = node.presence(steps=0, loss=None)
        bus.publish(p.topic, p.payload, p.retain)
        for sealed in node.seal([1, -1, 2, -2]):
            bus.publish(sealed.message.topic, sealed.message.payload, False)
        await _until(lambda: relay.store.statistics().frames_written)
        # a slow disk from here on: each write takes a while, so frames come in while one is
        # on its way to the disk, and the stop comes while the session has accepted frames the
        # store does not hold yet
        store = relay.store.store
        assert isinstance(store, SqliteLogStore)
        slow(store)
        for wave in range(2):
            for q in range(WAVE):
                for sealed in node.seal([q % 100 + 1]):
                    bus.publish(sealed.message.topic, sealed.message.payload, False)
            await _until(functools.partial(_accepted_beyond, relay, 4 + wave * WAVE))
        assert relay.store.statistics().frames_written < relay.session.log.next_seq("n0")
        relay.request_stop()
    assert run.result() == 0, relay.error

    accepted = relay.session.log.held()  # what the relay's session took
    # it accepted part of the burst (what it had not read when it stopped is not lost: it never
    # accepted it, and nodes fetch it from their peers)
    assert 4 + WAVE < accepted["n0"] <= 4 + 2 * WAVE
    stored = OrderedLog()
    store = DataDir(tmp_path / "relay").open_store(MANIFEST)
    try:
        store.load_log(stored)
    finally:
        store.close()
    assert stored.held() == accepted  # every frame it accepted is in its log on disk

    # every frame it accepted went out in a bundle, and then the goodbye, its last word
    from_relay = [(t, payload) for t, payload in out if t.endswith("/r0")]
    *before, (last_topic, last) = from_relay
    assert last_topic == topics.presence("r0")
    goodbye = decode_control(last, sender="r0", run_id=MANIFEST.run_id(), keys=None)
    assert isinstance(goodbye, Presence)
    assert not goodbye.alive
    frames = [
        decode_frame(body, run_id=MANIFEST.run_id(), node=entry, keys=None)
        for t, payload in before
        if t == topics.bundles("r0")
        for entry, body in decode_bundle(payload)
        if body[:1] == bytes([FRAME_V2])  # the rest is presence
    ]
    assert sum(f.count for f in frames) == accepted["n0"]
    assert relay.bundler.statistics().frames_forwarded == len(frames)


async def test_the_relay_notices_a_peer_that_fell_silent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``Session.tick`` events reach the relay's driver (once, the relay dropped them)."""
    caplog.set_level(logging.INFO, logger="seedswarm.peer")
    bus = MemoryBus.named(f"relay-tick-{tmp_path.name}")
    relay = _relay(tmp_path, bus, presence_interval=0.2)  # a peer is silent after 0.6 s
    node = Session(MANIFEST, "n0")
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(relay.run(signals=False))
        await _until(lambda: relay.ready)
        p = node.presence(steps=0, loss=None)
        bus.publish(p.topic, p.payload, p.retain)
        await _until(lambda: "peer n0 is here" in caplog.text)
        await _until(lambda: "peer n0 is gone (silent)" in caplog.text)
        relay.request_stop()
    assert run.result() == 0


async def test_a_relay_the_run_does_not_name_refuses_to_start(tmp_path: Path) -> None:
    """Nodes would never follow it (docs/PROTOCOL.md §9): it says so and how to fix it."""
    bus = MemoryBus.named(f"relay-unnamed-{tmp_path.name}")
    DataDir(tmp_path / "run").write_manifest(MANIFEST.replace(relays=()))
    relay = Relay(
        RelaySettings(
            mqtt=MqttSettings(broker=f"memory://{bus.name}"),
            relay="r0",
            manifest=str(tmp_path / "run"),
            data_dir=str(tmp_path / "relay"),
            http="127.0.0.1:0",
        )
    )
    assert await relay.run(signals=False) == 2
    assert "does not name r0 among its relays" in relay.error
    assert "--relays r0" in relay.error
