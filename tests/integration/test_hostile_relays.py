"""A hostile relay cannot split the replicas (issue 20, must-show 2).

Real ``seedswarm node`` processes (n0, n1, n2, stepping at 5 steps a second until told to stop),
a real Mosquitto, and a relay written by hand in a process of its own (``python -m
tests.hostile_clients relay``: paho and the bundle format of tests/hostile.py, not ``seedswarm
relay``). It says ``relay: true``, bundles every node's frames and presence every 0.1 s, and
negates every record byte of n1's frames (their headers and signatures as they came).

  * open run, the relay named in the manifest (``--relays r0``): the nodes follow it. n1 gets its
    own frames back altered and stops following it at once (``tampered``); n0 and n2 hold n1's
    records with other bytes than n1 does, which the content digest in presence shows: they ask
    n1 for its word, give the records back, fetch them again from n1 and catch the relay
    (``tampered``, repairs counted in /status ``trust``).
  * signed run, the relay named (and keyed): the negated frames fail n1's signature at every node
    (``bad_signature`` under r0) and never enter a log; n1 does not get its own frames back, so
    it catches the relay as ``relay_dropped``; the others fetch n1's records from n1.
  * open run, a relay the manifest does not name (r9, while the manifest names r0): no node ever
    follows it, its copies of n1's records are a third party's while n1 is here (``untrusted``)
    and n1's own frames in its bundles are ``impersonation``; nothing needs repair.

The nodes step for 12 s with the relay up (past the 5 s in which a followed relay must carry own
frames back), and in the open run with the relay named, until every node caught it (40 s at
most): n0 and n2 must catch it while the swarm steps, when n1's version vector always shows
more of n1's records than they hold (measured: 3 to 10 s after the relay started). Told to stop
stepping (SIGUSR2), the relay still up, the nodes end with equal version vectors and one
fingerprint, and each /status shows what it caught.
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from seedswarm.protocol.signing import NodeKey
from seedswarm.protocol.topics import Topics

from ..helpers import Broker, HostileClient, NodeProc, running, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.broker]

NAMES = ("n0", "n1", "n2")
NAMED = "r0"  # the relay the manifest names
VICTIM = "n1"  # whose records the relay negates
STEP_INTERVAL = 0.2
RELAY_UP = 12.0  # seconds the nodes step with the relay up, before they are told to stop ...
REPAIR_UP = 40.0  # ... or, open and named, until every node caught it (at most this long)
TOPICS = Topics("seedswarm", "default")


@dataclass(frozen=True)
class Case:
    signed: bool
    relay: str  # the hostile relay's id: NAMED, or one the manifest does not name


CASES = {
    "open-named": Case(signed=False, relay=NAMED),
    "signed-named": Case(signed=True, relay=NAMED),
    "open-unnamed": Case(signed=False, relay="r9"),
}


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[str(request.param)]


class HostileRelay(HostileClient):
    """``python -m tests.hostile_clients relay``: bundles every node's frames and presence,
    negating the victim's records."""

    def __init__(self, tmp: Path, port: int, me: str, run_id: bytes, key: NodeKey | None) -> None:
        super().__init__(
            "relay", tmp / f"{me}.json", "--port", str(port), "--base", TOPICS.base, "--me", me,
            "--run-id", run_id.hex(), "--negate", VICTIM,
            *(["--key", key.private_hex()] if key else []),
        )  # fmt: skip


@dataclass
class Swarm:
    nodes: list[NodeProc]

    def statuses(self, fresh: bool = False) -> list[dict[str, Any]]:
        return [n.status(fresh=fresh) for n in self.nodes]

    def steps(self) -> list[int]:
        return [st["steps"]["taken"] for st in self.statuses()]


def _nodes(tmp: Path, broker: Broker, case: Case, keys: dict[str, NodeKey]) -> list[NodeProc]:
    common = ["--step-interval", str(STEP_INTERVAL), "--max-latency", "0.3", "--relays", NAMED]
    if case.signed:
        for n, k in keys.items():
            (tmp / f"{n}.key").write_text(k.private_hex())
        common += ["--keys", ",".join(f"{n}={k.public_hex()}" for n, k in keys.items())]
    return [
        NodeProc(name, tmp, broker.url, *common,
                 *(["--key-file", str(tmp / f"{name}.key")] if case.signed else []), steps=-1)
        for name in NAMES
    ]  # fmt: skip


def _agreed(s: Swarm) -> bool:
    sts = s.statuses(fresh=True)
    return (
        all(st["steps"]["done"] and not st["records"]["pending"] for st in sts)
        and len({json.dumps(st["version_vector"], sort_keys=True) for st in sts}) == 1
        and len({st["fingerprint"] for st in sts}) == 1
    )


def _detected(s: Swarm, case: Case) -> bool:
    """What each node's /status shows of the relay, once it has seen enough of it."""
    sts = s.statuses()
    r = case.relay
    if case.relay != NAMED:
        return all(st["dropped"].get("untrusted", {}).get(r, 0) >= 1 for st in sts) and (
            sts[1]["dropped"].get("impersonation", {}).get(r, 0) >= 1
        )
    if case.signed:
        return sts[1]["trust"]["distrusted"].get(r) == "relay_dropped" and all(
            st["dropped"].get("bad_signature", {}).get(r, 0) >= 1 for st in sts
        )
    return all(st["trust"]["distrusted"].get(r) == "tampered" for st in sts)


def test_a_relay_that_negates_one_nodes_records_splits_no_replicas(
    tmp_path: Path, mosquitto: Broker, case: Case
) -> None:
    keys = {n: NodeKey.generate() for n in (*NAMES, NAMED)}
    s = Swarm(_nodes(tmp_path, mosquitto, case, keys))
    with running(*s.nodes):
        for node in s.nodes:
            node.start()
        for node in s.nodes:
            node.wait_ready()
        wait_until(lambda: min(s.steps()) >= 10, timeout=120, what="the swarm to step")
        run_id = bytes.fromhex(s.nodes[0].status()["run_id"])
        followed: set[str] = set()  # nodes seen following the relay, polled
        caught: dict[str, float] = {}  # node -> seconds after the relay started it was caught
        relay = HostileRelay(tmp_path, mosquitto.port, case.relay, run_id,
                             keys[NAMED] if case.signed else None)  # fmt: skip
        with relay:
            t0 = time.monotonic()

            def watch() -> None:
                assert relay.alive(), "the hostile relay exited"
                for name, st in zip(NAMES, s.statuses(), strict=True):
                    if case.relay in st["relays"]:
                        followed.add(name)
                    if case.relay in st["trust"]["distrusted"]:
                        caught.setdefault(name, round(time.monotonic() - t0, 1))

            # the swarm steps on with the relay up: past the 5 s in which a followed relay must
            # carry own frames back, and the 10 s after which a silent one is no longer up
            def stepping() -> bool:
                elapsed = time.monotonic() - t0
                if elapsed < RELAY_UP:
                    return True
                # open and named: every node catches it while the swarm steps on
                return case == CASES["open-named"] and len(caught) < 3 and elapsed < REPAIR_UP

            while stepping():
                watch()
                time.sleep(0.1)
            stopped = time.monotonic() - t0
            for node in s.nodes:
                assert node.proc is not None
                node.proc.send_signal(signal.SIGUSR2)
            t1 = time.monotonic()

            def settled() -> bool:
                watch()
                return _agreed(s) and _detected(s, case)

            wait_until(settled, timeout=180, what=f"one fingerprint, {case.relay} in every /status",
                       interval=0.1)  # fmt: skip
            agreed = time.monotonic() - t1
            sts = s.statuses(fresh=True)
        print(
            f"{case}: one fingerprint and {case.relay} in every /status {agreed:.1f} s after the "
            f"nodes stopped stepping ({RELAY_UP:g} s after the relay started); {relay.figures}; "
            f"caught (s after it started): {caught}"
        )
        for name, st in zip(NAMES, sts, strict=True):
            print(name, st["version_vector"], st["relays"], st["inbox"]["listening_changes"],
                  st["trust"],
                  {k: v for k, v in st["dropped"].items() if case.relay in v})  # fmt: skip
        assert relay.figures["altered"] >= 1
        for node in s.nodes:
            assert node.alive(), node.tail()
        trust = [st["trust"] for st in sts]
        assert len({t["held_digest"] for t in trust}) == 1
        if case.relay != NAMED:
            assert not followed, f"{followed} followed {case.relay}, which the run does not name"
            assert all(t["distrusted"] == {} and t["repairs"] == 0 for t in trust), trust
            assert all(st["relays"] == [] for st in sts)
            assert all(st["inbox"]["listening_changes"] == 0 for st in sts), sts
        elif case.signed:
            assert trust[1]["distrusted"] == {NAMED: "relay_dropped"}
            # the negated frames never entered a log: nothing to repair
            assert all(t["records_given_back"] == 0 for t in trust), trust
        else:
            assert all(t["distrusted"] == {NAMED: "tampered"} for t in trust), trust
            assert sorted(caught) == list(NAMES), f"caught while stepping: {caught}"
            assert max(caught.values()) < stopped
            assert all(st["dropped"]["tampered"].get(NAMED, 0) >= 1 for st in sts)
            # n0 and n2 held n1's records with other bytes, saw it by the content digest,
            # gave them back and took n1's
            for t in (trust[0], trust[2]):
                assert t["content_mismatches"] >= 1, t
                assert t["repairs"] >= 1, t
                assert t["records_given_back"] >= 1, t
            # n0 and n2 followed r0 (listened to its bundles only) and left it: two changes at
            # least (n1 may catch it on its first bundle, before it follows it)
            assert all(st["inbox"]["listening_changes"] >= 2 for st in (sts[0], sts[2])), sts
