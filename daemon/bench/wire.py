"""``seedswarm bench wire``: bytes per record through a real MQTT broker, for frames of 1..1024
records, counted on the wire by a TCP relay between the publisher and the broker, and (for
Mosquitto) by the broker's own ``$SYS`` counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seedswarm.daemon.console import table
from seedswarm.daemon.errors import ConfigError
from seedswarm.daemon.launch.mosquitto import mosquitto

from .settings import BenchSettings, sizes


@dataclass(frozen=True, slots=True)
class WireRow:
    records_per_frame: int
    signed: bool
    payload_bytes_per_record: float
    wire_bytes_per_record: float
    broker_sys_bytes_per_record: float | None  # Mosquitto's $SYS count (None with amqtt)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "records_per_frame": self.records_per_frame,
            "signed": self.signed,
            "payload_bytes_per_record": self.payload_bytes_per_record,
            "wire_bytes_per_record": self.wire_bytes_per_record,
        }
        if self.broker_sys_bytes_per_record is not None:
            out["broker_sys_bytes_per_record"] = self.broker_sys_bytes_per_record
        return out


@dataclass(frozen=True, slots=True)
class WireResult:
    broker: str  # mosquitto or amqtt
    frames: tuple[WireRow, ...]

    def to_json(self) -> dict[str, Any]:
        return {"broker": self.broker, "frames": [row.to_json() for row in self.frames]}


def bench_wire(s: BenchSettings) -> WireResult:
    import uvloop

    from seedswarm.daemon.launch.broker import free_port

    frames = sizes(s.frames, "frames")
    kind = s.broker
    if kind == "auto":
        kind = (
            "mosquitto"
            if (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists())
            else "amqtt"
        )
    if kind not in ("mosquitto", "amqtt"):
        raise ConfigError("--broker for wire: mosquitto, amqtt or auto")
    port = free_port()
    if kind == "mosquitto":
        with mosquitto(port):
            rows = uvloop.run(_wire_rows(port, frames, embedded=False))
    else:
        rows = uvloop.run(_wire_rows(port, frames, embedded=True))
    return WireResult(kind, tuple(rows))


def print_wire(r: WireResult) -> str:
    sys_col = r.broker == "mosquitto"
    headers = ["records/frame", "signed", "payload B/record", "wire B/record"]
    if sys_col:
        headers.append("broker $SYS B/record")
    rows = []
    for row in r.frames:
        cells = [
            row.records_per_frame,
            "yes" if row.signed else "no",
            f"{row.payload_bytes_per_record:.3f}",
            f"{row.wire_bytes_per_record:.3f}",
        ]
        if sys_col:
            cells.append(f"{row.broker_sys_bytes_per_record:.3f}")
        rows.append(cells)
    said = " and by the broker's $SYS counter" if sys_col else ""
    return "\n".join(
        [
            f"broker {r.broker}; bytes counted on the TCP connection to the broker{said}",
            table(headers, rows),
        ]
    )


class _CountingRelay:
    """A TCP relay that counts the bytes each way: the wire, as the broker sees it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.up = 0  # publisher -> broker
        self.down = 0  # broker -> publisher
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            try:
                while data := await src.read(65536):
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(pipe(reader, up_w, True))
            tg.create_task(pipe(up_r, writer, False))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def _wire_rows(port: int, frames: list[int], *, embedded: bool) -> list[WireRow]:
    import aiomqtt

    from seedswarm.daemon.launch.broker import EmbeddedBroker

    broker = EmbeddedBroker(port=port) if embedded else None
    if broker is not None:
        await broker.start()
    try:
        if embedded:
            return await _measure_wire(port, frames, None)
        async with aiomqtt.Client("127.0.0.1", port, identifier="wire-sys-counter") as sys_client:
            await sys_client.subscribe([(_SysCounter.BYTES, 0), (_SysCounter.TICK, 0)])
            counter = _SysCounter()
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(counter.read(sys_client), name="sys-counter")
                try:
                    return await _measure_wire(port, frames, counter)
                finally:
                    reader.cancel()
    finally:
        if broker is not None:
            await broker.stop()


async def _measure_wire(
    port: int, frames_of: list[int], counter: _SysCounter | None
) -> list[WireRow]:
    import aiomqtt

    from seedswarm.protocol.codec import encode_frame, sign_frame
    from seedswarm.protocol.records import Frame, q_to_byte
    from seedswarm.protocol.signing import NodeKey

    key = NodeKey.generate()
    topic = "seedswarm/default/records/n0"
    rows: list[WireRow] = []
    sys_before = await counter.fresh() if counter is not None else 0
    for n in frames_of:
        for signed in (False, True):
            relay = _CountingRelay(port)
            await relay.start()
            qs = bytes(q_to_byte((i * 37) % 255 - 127) for i in range(n))  # any valid bytes
            total_records = max(4096, n * 8)
            frames = math.ceil(total_records / n)
            async with aiomqtt.Client(
                "127.0.0.1", relay.port, identifier=f"wire-{n}-{signed}"
            ) as c:
                base_up = relay.up
                seq = 0
                payload_bytes = 0
                for _ in range(frames):
                    frame = Frame(b"\x01" * 8, "n0", seq, seq // n, qs)
                    if signed:
                        frame = sign_frame(frame, key)
                    body = encode_frame(frame)
                    payload_bytes += len(body)
                    await c.publish(topic, body, qos=1)
                    seq += n
                wire_up = relay.up - base_up
            records = frames * n
            sys_per_record = None
            if counter is not None:
                # the broker's own count: $SYS/broker/bytes/received, which also counts
                # the CONNECT/DISCONNECT of the publisher and the counter client's pings
                sys_after = await counter.fresh()
                sys_per_record = (sys_after - sys_before) / records
                sys_before = sys_after  # nothing reaches the broker between two rows
            row = WireRow(
                records_per_frame=n,
                signed=signed,
                payload_bytes_per_record=payload_bytes / records,
                wire_bytes_per_record=wire_up / records,
                broker_sys_bytes_per_record=sys_per_record,
            )
            rows.append(row)
            await relay.stop()
    return rows


class _SysCounter:
    """Mosquitto's $SYS/broker/bytes/received, as a separate client reads it.

    Mosquitto refreshes $SYS on a tick (every 2 s with ``sys_interval 1``: it waits until more
    than the interval has passed). Each tick publishes the uptime first, then bytes/received if
    it changed. So the value is current once enough ticks have passed, which is counted in
    ticks, not guessed from silence: a loaded machine delays ticks, it cannot fake one.
    """

    BYTES = "$SYS/broker/bytes/received"
    TICK = "$SYS/broker/uptime"  # changes, hence is published, on every tick
    TICKS = 3  # after the 3rd tick the value held covers all that reached the broker by the 2nd
    PATIENCE_S = 60.0

    def __init__(self) -> None:
        self.value = -1
        self.ticks = 0
        self._ticked = asyncio.Event()

    async def read(self, client: Any) -> None:
        async for m in client.messages:
            if m.retain or not isinstance(m.payload, bytes | bytearray):
                continue  # retained: the state at subscribe time, not a tick
            if m.topic.matches(self.TICK):
                self.ticks += 1
                self._ticked.set()
            elif m.topic.matches(self.BYTES):
                self.value = int(m.payload)

    async def fresh(self) -> int:
        """The counter as of at least one full tick after this call."""
        target = self.ticks + self.TICKS
        try:
            async with asyncio.timeout(self.PATIENCE_S):
                while self.ticks < target or self.value < 0:
                    self._ticked.clear()
                    await self._ticked.wait()
        except TimeoutError:
            raise ConfigError(
                f"bench wire: mosquitto's $SYS counters did not tick within "
                f"{self.PATIENCE_S:.0f} s (is sys_interval set?)"
            ) from None
        return self.value
