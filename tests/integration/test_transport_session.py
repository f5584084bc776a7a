"""The MQTT transport against a real Mosquitto: persistent session and outbox across a cut.

A TCP relay sits between the transport and the broker so the test can cut the connection the
way a network does (the broker sees the socket die; no DISCONNECT is sent). While it is cut,
another client publishes QoS 1 messages and the transport queues its own. After the relay comes
back, the transport must (1) reconnect by itself, (2) receive what the broker queued for its
persistent session, and (3) deliver its outbox. The cut lasts until the transport has tried
at least once to reconnect and been turned away (TCP accepted, then closed before CONNACK), the
case that once made a re-entered aiomqtt client report "connected" without a broker. The control
case shows that the same cut loses the messages for a clean session, so the test can tell the
difference.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import aiomqtt
import pytest

from seedswarm.daemon.settings import BrokerAddress
from seedswarm.daemon.transport import TransportSpec
from seedswarm.daemon.transport.mqtt import MqttTransport
from seedswarm.protocol.events import Kind, Outgoing
from seedswarm.protocol.topics import Subscription

from ..helpers import Broker

pytestmark = [pytest.mark.broker, pytest.mark.asyncio]


class CuttableRelay:
    """Loopback TCP relay to the broker; ``cut()`` kills every connection and refuses new ones."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.open = True
        self.turned_away = 0  # connections accepted and closed at once while cut

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            self.turned_away += 1
            writer.close()
            return
        b_reader, b_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, b_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(pipe(reader, b_writer))
            tg.create_task(pipe(b_reader, writer))

    def cut(self) -> None:
        self.open = False
        for w in self._writers:
            sock = w.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(2)  # RST-like: both directions die now
            w.close()
        self._writers.clear()

    def restore(self) -> None:
        self.open = True

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def _wait(pred: Callable[[], bool]) -> None:
    """Poll a condition that no event signals (state inside the transport), with a deadline."""
    async with asyncio.timeout(180):  # a safety net on a loaded machine, not a speed target
        while not pred():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_persistent_session_and_outbox_survive_a_cut(mosquitto: Broker) -> None:
    relay = CuttableRelay(mosquitto.port)
    await relay.start()
    try:
        await _session_and_outbox(mosquitto, relay)
    finally:
        await relay.close()


async def _session_and_outbox(mosquitto: Broker, relay: CuttableRelay) -> None:
    received: list[str] = []
    transport = MqttTransport(
        BrokerAddress.parse(f"mqtt://127.0.0.1:{relay.port}"),
        TransportSpec(
            client_id="session-test",
            subscriptions=[Subscription("t/in/#", 1)],
            on_message=lambda topic, payload: received.append(payload.decode()),
            will=Outgoing("t/will", b"gone", Kind.PRESENCE, retain=True),
        ),
        keepalive=5,
    )
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="other") as other:
        await other.subscribe("t/out/#", qos=1)
        got_out: list[str] = []
        async with asyncio.TaskGroup() as tg:
            tg.create_task(transport.run())

            async def collect() -> None:
                # one message at a time: the test watches got_out grow while this runs
                async for m in other.messages:
                    if isinstance(m.payload, bytes):
                        got_out.append(m.payload.decode())  # noqa: PERF401

            collector = tg.create_task(collect())
            await _wait(transport.connected.is_set)
            await other.publish("t/in/x", b"before", qos=1)
            await _wait(lambda: received == ["before"])
            # paho hands "before" to on_message before it sends the PUBACK; cut now and the
            # broker would rightly deliver it again. A publish of our own is a barrier: its
            # PUBACK comes back after the broker has read everything sent before it.
            transport.publish(Outgoing("t/out/x", b"barrier", Kind.FRAME))
            await _wait(lambda: not transport.statistics().outbox)

            relay.cut()
            await _wait(lambda: not transport.connected.is_set())
            for i in range(10):
                await other.publish("t/in/x", f"during-{i}".encode(), qos=1)
                transport.publish(Outgoing("t/out/x", f"queued-{i}".encode(), Kind.FRAME))
            await _wait(lambda: relay.turned_away >= 1)  # a reconnect attempt hit the cut
            assert transport.connects == 1  # ... and did not pass for a connection
            assert transport.statistics().outbox == 10  # nothing acknowledged while cut

            relay.restore()
            await _wait(lambda: len(received) == 11 and len(got_out) == 11)
            assert received == ["before"] + [f"during-{i}" for i in range(10)]
            assert got_out == ["barrier"] + [f"queued-{i}" for i in range(10)]
            assert transport.connects == 2
            assert not transport.statistics().outbox
            transport.close()
            collector.cancel()


async def test_a_clean_session_loses_messages_across_the_same_cut(mosquitto: Broker) -> None:
    """Control: the cut really loses QoS 1 messages when the session is not persistent."""
    relay = CuttableRelay(mosquitto.port)
    await relay.start()
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="other2") as other:
        client = aiomqtt.Client("127.0.0.1", relay.port, identifier="clean", clean_session=True)
        async with client:
            await client.subscribe("t/in/#", qos=1)
        # the context exit above ended the clean session; publish while it is gone
        for i in range(5):
            await other.publish("t/in/x", f"lost-{i}".encode(), qos=1)
        got: list[bytes] = []
        async with client:
            await client.subscribe("t/in/#", qos=1)
            await other.publish("t/in/x", b"after", qos=1)
            async with asyncio.timeout(30):
                async for m in client.messages:
                    assert isinstance(m.payload, bytes)
                    got.append(m.payload)
                    if m.payload == b"after":
                        break
        assert got == [b"after"]
    await relay.close()
