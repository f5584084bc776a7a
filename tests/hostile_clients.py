"""Hostile MQTT clients that run as processes of their own, beside real nodes and Mosquitto.

    python -m tests.hostile_clients flood --port P --topic T --payloads FILE --rate R --out FILE

publishes the payloads of FILE (hex, one a line, in turn) on topic T at R messages a second
(QoS 0, one plain paho client, no seedswarm code) until it is sent SIGTERM or SIGINT, then
writes what it did to --out as JSON: ``published`` (messages handed to the broker) and
``seconds`` (from the first publish until the last one left the socket, the DISCONNECT after
them sent). The rate a test reports is ``published / seconds``, what was achieved, not asked.

    python -m tests.hostile_clients relay --port P --base PREFIX/RUN --me ID --run-id HEX
        [--key HEX] [--negate NODE] --out FILE

is a relay written by hand: it says ``relay: true`` in its presence (signed with --key in a
signed run), subscribes to every node's records and presence, and every 0.1 s publishes on
``bundles/ID`` a bundle of its presence and what came, in the relay bundle format (tests/
hostile.py ``HostileBundler``), with every record byte of NODE's frames negated (their
signatures as they were). On SIGTERM it clears its retained presence and writes ``seen``,
``forwarded``, ``altered`` and ``bundles`` to --out.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from seedswarm.protocol.messages import Presence, encode_presence
from seedswarm.protocol.signing import NodeKey

from .hostile import HostileBundler, negated

BATCH_EVERY = 0.005  # seconds between two looks at how far behind the target the flood is
RELAY_EVERY = 0.1  # seconds between two bundles of the relay


def flood(port: int, topic: str, payloads: list[bytes], rate: float, out: Path) -> None:
    stop = _stopper()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"mallory-flood-{time.time_ns()}",
        protocol=mqtt.MQTTv5,
    )
    client.max_queued_messages_set(0)  # no cap: the flood is paced here, not by paho
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    sent = 0
    t0 = time.monotonic()
    while not stop.is_set():
        due = int((time.monotonic() - t0) * rate) + 1
        while sent < due:
            client.publish(topic, payloads[sent % len(payloads)], qos=0)
            sent += 1
        stop.wait(BATCH_EVERY)
    client.disconnect()  # queued after every publish: it leaves the socket after them
    client.loop_stop()
    seconds = time.monotonic() - t0
    out.write_text(json.dumps({"published": sent, "seconds": seconds}))


def _stopper() -> threading.Event:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop


def relay(
    port: int, base: str, me: str, run_id: bytes, key: NodeKey | None, negate: str, out: Path
) -> None:
    stop = _stopper()
    own = encode_presence(Presence(me, run_id, True, relay=True), key)
    bundler = HostileBundler(lambda: own, me)
    altered = 0

    def alter(node: str, frame: bytes) -> bytes:
        nonlocal altered
        if node != negate:
            return frame
        altered += 1
        return negated(frame, signed=key is not None)

    lock = threading.Lock()  # paho's network thread takes, this one bundles

    def on_message(_c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        kind, node = m.topic.split("/")[-2:]
        with lock:
            bundler.take(kind, node, bytes(m.payload), alter)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=me, protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.will_set(f"{base}/presence/{me}", b"", qos=1, retain=True)
    client.connect("127.0.0.1", port, keepalive=60)
    client.subscribe([(f"{base}/records/+", 0), (f"{base}/presence/+", 0)])
    client.loop_start()
    bundles = 0
    announced = 0.0
    while not stop.wait(RELAY_EVERY):
        if time.monotonic() - announced >= 0.5:
            client.publish(f"{base}/presence/{me}", own, qos=1, retain=True)
            announced = time.monotonic()
        with lock:
            bundle = bundler.bundle()
        client.publish(f"{base}/bundles/{me}", bundle, qos=0)
        bundles += 1
    client.publish(f"{base}/presence/{me}", b"", qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
    figures = {"seen": bundler.seen, "forwarded": bundler.forwarded, "altered": altered}
    out.write_text(json.dumps({**figures, "bundles": bundles}))


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tests.hostile_clients")
    sub = p.add_subparsers(dest="what", required=True)
    f = sub.add_parser("flood", help="publish junk on one topic at a fixed rate until SIGTERM")
    f.add_argument("--port", type=int, required=True)
    f.add_argument("--topic", required=True)
    f.add_argument("--payloads", type=Path, required=True, help="hex, one payload a line")
    f.add_argument("--rate", type=float, required=True, help="messages a second")
    f.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("relay", help="a relay that negates one node's records")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--base", required=True, help="PREFIX/RUN")
    r.add_argument("--me", required=True)
    r.add_argument("--run-id", required=True, help="hex")
    r.add_argument("--key", default="", help="its private key, hex (a signed run)")
    r.add_argument("--negate", default="", help="the node whose record bytes it negates")
    r.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    if a.what == "flood":
        payloads = [bytes.fromhex(line) for line in a.payloads.read_text().split()]
        flood(a.port, a.topic, payloads, a.rate, a.out)
    else:
        key = NodeKey.from_hex(a.key) if a.key else None
        relay(a.port, a.base, a.me, bytes.fromhex(a.run_id), key, a.negate, a.out)


if __name__ == "__main__":
    main()
