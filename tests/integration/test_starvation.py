"""Junk on ``sync/<holder>/<victim>`` does not starve the victim's gap filling (issue 20).

Real ``seedswarm node`` processes, a real Mosquitto, and a hostile plain MQTT client in a process
of its own (tests/hostile_clients.py: paho, no seedswarm code) that publishes junk on
``sync/n0/v1`` (the topic of v1's wants to n0) at 2,500 messages a second, from before the
victim v1 starts until it has caught up. n0 trained alone first, so every record v1 lacks is
n0's and only n0 can send it: v1 fills its log by asking n0, on the very topic the junk floods.

Junk is what no key makes: bytes that do not decode, and, in the signed run, wants in v1's name
unsigned or signed by an outsider. A budget charged before decoding (the bug: 20 wants a second
and a burst of 100 per requester) would be spent by the junk in the first 50 ms and v1's wants
would go unanswered for as long as the flood lasts. Charged after decoding and verification,
the junk costs v1 nothing: n0 counts it under the reason it failed (``truncated``,
``bad_type``, ``unsigned``, ``bad_signature`` ...), never ``over_budget``, and v1's version
vector reaches n0's, with one fingerprint.

The rate asserted (>= 2,000 a second) is the one the flood achieved: messages handed to the
broker over the seconds from its first publish until the last left its socket.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from seedswarm.protocol.messages import Want, encode_want
from seedswarm.protocol.signing import NodeKey
from seedswarm.protocol.topics import Topics

from ..helpers import Broker, HostileClient, NodeProc, converged, running, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.broker]

HOLDER, VICTIM = "n0", "v1"
STEPS = 40  # n0's, all before v1 starts
VICTIM_STEPS = 3
RATE = 2500.0  # junk messages a second the flood aims at ...
MIN_RATE = 2000.0  # ... and the least it must achieve for this test to be what it says
TOPICS = Topics("seedswarm", "default")
SPENT_ON = ("over_budget",)  # what junk must never be counted as under the victim's name


def _junk(run_id: bytes, signed: bool) -> list[bytes]:
    """Payloads no key makes: undecodable bytes of every kind, and in a signed run v1's wants
    unsigned and signed by an outsider (well formed, so only the signature check stops them)."""
    rng = random.Random(20)
    out = [b"", b"\x02", b"\x03", b"\x03\x05v1", b"\xff" * 8]
    out += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 48))) for _ in range(200)]
    if signed:
        outsider = NodeKey.generate()
        for i in range(100):
            want = Want(VICTIM, run_id, HOLDER, i % STEPS, 4096)
            out += [encode_want(want), encode_want(want, outsider)]
    return [p for p in out if p]  # an empty payload is not junk but a cleared retained message


class Flood(HostileClient):
    """``python -m tests.hostile_clients flood``: publishes the payloads on one topic."""

    def __init__(self, tmp: Path, port: int, topic: str, payloads: list[bytes]) -> None:
        (tmp / "junk.hex").write_text("\n".join(p.hex() for p in payloads) + "\n")
        super().__init__(
            "flood", tmp / "flood.json", "--port", str(port), "--topic", topic,
            "--payloads", str(tmp / "junk.hex"), "--rate", str(RATE), stop_s=60,
        )  # fmt: skip

    @property
    def published(self) -> int:
        return int(self.figures["published"])

    @property
    def seconds(self) -> float:
        return float(self.figures["seconds"])

    @property
    def rate(self) -> float:
        return self.published / self.seconds


def _junk_counted(holder: NodeProc) -> int:
    """Messages n0 dropped under v1's name, whatever the reason."""
    return sum(by.get(VICTIM, 0) for by in holder.status()["dropped"].values())


@pytest.fixture(params=["open", "signed"])
def signed(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "signed")


@contextlib.contextmanager
def _nodes(tmp: Path, url: str, signed: bool) -> Iterator[tuple[NodeProc, NodeProc]]:
    keys = {n: NodeKey.generate() for n in (HOLDER, VICTIM)}
    common = ["--max-latency", "0.3"]
    if signed:
        for n, k in keys.items():
            (tmp / f"{n}.key").write_text(k.private_hex())
        common += ["--keys", ",".join(f"{n}={k.public_hex()}" for n, k in keys.items())]

    def key(name: str) -> list[str]:
        return ["--key-file", str(tmp / f"{name}.key")] if signed else []

    holder = NodeProc(HOLDER, tmp, url, *common, *key(HOLDER), steps=STEPS)
    victim = NodeProc(VICTIM, tmp, url, *common, *key(VICTIM), "--join", "replay",
                      steps=VICTIM_STEPS)  # fmt: skip
    with running(holder, victim):
        yield holder, victim


def test_junk_on_the_victims_sync_topic_does_not_starve_its_gap_filling(
    tmp_path: Path, mosquitto: Broker, signed: bool
) -> None:
    broker = mosquitto
    with _nodes(tmp_path, broker.url, signed) as (holder, victim):
        holder.start()
        holder.wait_ready()
        wait_until(lambda: converged([holder], {HOLDER: STEPS}), timeout=300,
                   what="n0 to train alone")  # fmt: skip
        run_id = bytes.fromhex(holder.status()["run_id"])
        flood = Flood(tmp_path, broker.port, TOPICS.sync(HOLDER, VICTIM), _junk(run_id, signed))
        with flood:
            wait_until(lambda: _junk_counted(holder) > 0, timeout=60,
                       what="the junk to reach n0")  # fmt: skip
            t0 = time.monotonic()
            victim.start()
            victim.wait_ready(timeout=180)
            expect = {HOLDER: STEPS, VICTIM: VICTIM_STEPS}
            wait_until(lambda: converged([holder, victim], expect), timeout=300,
                       what="v1 to fill its log from n0 under the flood")  # fmt: skip
            caught_up = time.monotonic() - t0
            assert flood.alive(), "the flood stopped before v1 caught up"
        sts = [holder.status(fresh=True), victim.status(fresh=True)]
        print(
            f"flood: {flood.published} junk messages in {flood.seconds:.1f} s "
            f"= {flood.rate:.0f}/s; v1 caught up {caught_up:.1f} s after it started"
        )
        assert flood.rate >= MIN_RATE, f"the flood achieved {flood.rate:.0f}/s only"
        assert len({st["fingerprint"] for st in sts}) == 1
        assert sts[0]["version_vector"] == sts[1]["version_vector"] == expect
        dropped: dict[str, dict[str, int]] = sts[0]["dropped"]
        junk = {r: by[VICTIM] for r, by in dropped.items() if VICTIM in by}
        print(f"n0 counted under {VICTIM}: {junk}")
        assert not any(r in junk for r in SPENT_ON), junk
        # what n0 read of the flood, every message counted as the junk it is (or, where it
        # came faster than n0 reads, as overload: never read, so never charged either)
        assert sum(junk.values()) >= flood.published // 2, (junk, flood.published)
        assert sts[0]["sync"]["wants_answered"] >= 1
        for n in (holder, victim):
            assert n.alive(), n.tail()
