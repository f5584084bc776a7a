"""The sans-IO session: every kind of input becomes the right events, without a network.

The stateful test runs 3-5 sessions (and late joiners) that exchange their messages through a
simulated bus that reorders, duplicates and drops them, with restarts from a durable store and
partitions; once the bus heals and delivers everything, every session must hold the same
records: every record any node wrote, with the same bytes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import msgpack
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from seedswarm.protocol.codec import decode_frame, encode_frame, sign_frame
from seedswarm.protocol.log import MAX_CLOCK_JUMP
from seedswarm.protocol.manifest import Manifest, TaskSpec
from seedswarm.protocol.messages import Presence, Want, encode_presence, encode_want
from seedswarm.protocol.records import Frame
from seedswarm.protocol.session import (
    INVALID,
    Dropped,
    Event,
    ForeignRun,
    FrameAccepted,
    PeerGone,
    PeerSeen,
    Session,
    SessionConfig,
    WantReceived,
)

from .strategies import KEY_A, KEY_B

OPEN = Manifest(name="t", model="tiny", base_hash="0" * 64, task=TaskSpec(kind="causal_lm"))
SIGNED = OPEN.replace(keys=(("a", KEY_A.public_hex()), ("b", KEY_B.public_hex())))
CONFIG = SessionConfig(frame_records=4, peer_timeout=5.0, retry_after=2.0, want_repeat=1.0)


def session(me: str = "me", manifest: Manifest = OPEN, **kw: object) -> Session:
    return Session(manifest, me, config=CONFIG, **kw)  # type: ignore[arg-type]


def frame(
    node: str, first: int, qs: list[int], clock: int = 1, run: bytes = OPEN.run_id()
) -> Frame:
    return Frame(run, node, first, clock, bytes(q & 0xFF for q in qs))


def body(f: Frame) -> bytes:
    return encode_frame(f)


def drops(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.reason, e.sender) for e in events if isinstance(e, Dropped)]


T = session().topics


# == events for each kind of input ==================================================================


def test_a_new_frame_is_accepted_with_its_bytes_and_a_duplicate_is_not() -> None:
    s = session()
    f = frame("a", 0, [1, 2, 3])
    events = s.receive(T.records("a"), body(f), now=0.0)
    assert events == [FrameAccepted(f, body(f), "a", 3, via_sync=False)]
    assert s.receive(T.records("a"), body(f), now=0.1) == []
    assert s.statistics().duplicates == 3
    assert s.log.held() == {"a": 3}


def test_a_frame_answering_a_want_is_marked_and_blamed_on_its_publisher() -> None:
    s = session()
    f = frame("a", 0, [1])
    (event,) = s.receive(T.sync("me", "b"), body(f), now=0.0)
    assert isinstance(event, FrameAccepted)
    assert event.via_sync
    assert event.sender == "b"
    # a bad answer counts against the node that published it, not against the receiver
    assert drops(s.receive(T.sync("me", "b"), b"\xc1", now=0.0)) == [("malformed", "b")]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "truncated"),
        (b"\x97\x01", "truncated"),
        (b"\xc1", "malformed"),
        (b"\x01" * 5000, "oversized"),
        (msgpack.packb("a frame?"), "bad_type"),
        (msgpack.packb([1, 2, 3]), "malformed"),
        (msgpack.packb([2, OPEN.run_id(), "a", 0, 1, b"\x01", None]), "bad_version"),
        (msgpack.packb([1, OPEN.run_id(), "a", 0, 1, b"", None]), "bad_range"),
        (msgpack.packb([1, OPEN.run_id(), "a", 0, 1, b"\x80", None]), "bad_range"),
        (msgpack.packb([1, b"\x00" * 8, "a", 0, 1, b"\x01", None]), "wrong_run"),
        (msgpack.packb([1, OPEN.run_id(), "a", 0, 1, b"\x01", b"\x00" * 64]), "bad_signature"),
        (msgpack.packb({"v": 1, "t": "want"}), "bad_type"),
    ],
)
def test_a_bad_frame_is_dropped_under_its_publisher(payload: bytes, reason: str) -> None:
    s = session()
    assert drops(s.receive(T.records("a"), payload, now=0.0)) == [(reason, "a")]
    assert s.statistics().dropped == {reason: {"a": 1}}
    assert s.log.held() == {}


def test_topics_that_name_no_valid_node_are_dropped_under_invalid() -> None:
    s = session()
    for topic in (
        T.base + "/records/no!good",
        T.base + "/records/a/b",
        T.base + "/other/a",
        T.base + "/sync/me",
        "elsewhere/t/records/a",
    ):
        assert drops(s.receive(topic, body(frame("a", 0, [1])), now=0.0)) == [
            ("bad_topic", INVALID)
        ]
    assert s.statistics().dropped == {"bad_topic": {INVALID: 5}}
    # a sync message addressed to someone else names its sender: blame that one
    assert drops(s.receive(T.sync("other", "b"), b"x", now=0.0)) == [("bad_topic", "b")]


def test_a_frame_on_another_nodes_topic_is_a_topic_mismatch() -> None:
    s = session()
    assert drops(s.receive(T.records("b"), body(frame("a", 0, [1])), now=0.0)) == [
        ("topic_mismatch", "b")
    ]


def test_equivocation_clock_regression_jump_and_future_seq_are_dropped_loudly_or_not() -> None:
    s = session()
    s.receive(T.records("a"), body(frame("a", 0, [1, 2], clock=5)), now=0.0)
    (eq,) = s.receive(T.sync("me", "c"), body(frame("a", 1, [3], clock=5)), now=0.0)
    assert isinstance(eq, Dropped)
    assert (eq.reason, eq.sender, eq.loud) == (
        "equivocation",
        "c",
        True,
    )
    (reg,) = s.receive(T.records("a"), body(frame("a", 2, [1], clock=4)), now=0.0)
    assert isinstance(reg, Dropped)
    assert reg.reason == "clock_regression"
    jump = frame("a", 2, [1], clock=5 + MAX_CLOCK_JUMP + 1)
    assert drops(s.receive(T.records("a"), body(jump), now=0.0)) == [("clock_jump", "a")]
    far = frame("a", 2 + (1 << 20) + 1, [1], clock=6)
    assert drops(s.receive(T.records("a"), body(far), now=0.0)) == [("future_seq", "a")]
    assert s.log.held() == {"a": 2}


def test_a_node_never_takes_a_frame_in_its_own_name() -> None:
    s = session("me")
    (own,) = s.seal([1, 2])
    # its own frame back from the broker: an echo, ignored and not counted as a drop
    assert s.receive(T.records("me"), own.body, now=0.0) == []
    assert s.statistics().echoes == 1
    # anything else in its name is impersonation, loudly, and never enters the log
    forged = [frame("me", 0, [1, 3], clock=own.frame.clock), frame("me", 2, [7], clock=9)]
    for f in forged:
        (ev,) = s.receive(T.records("me"), body(f), now=0.0)
        assert isinstance(ev, Dropped)
        assert (ev.reason, ev.sender, ev.loud) == (
            "impersonation",
            "me",
            True,
        )
    (ev,) = s.receive(T.sync("me", "x"), body(frame("me", 2, [7], clock=9)), now=0.0)
    assert isinstance(ev, Dropped)
    assert (ev.reason, ev.sender) == ("impersonation", "x")
    assert s.log.held() == {"me": 2}
    (nxt,) = s.seal([5])  # and its own next seq is untouched
    assert nxt.frame.first_seq == 2


def test_signed_runs_check_every_frame() -> None:
    s = session("me", SIGNED)
    good = sign_frame(frame("a", 0, [1], run=SIGNED.run_id()), KEY_A)
    assert len(s.receive(T.records("a"), body(good), now=0.0)) == 1
    unsigned = frame("b", 0, [1], run=SIGNED.run_id())
    assert drops(s.receive(T.records("b"), body(unsigned), now=0.0)) == [("unsigned", "b")]
    wrong_key = sign_frame(frame("b", 0, [1], run=SIGNED.run_id()), KEY_A)
    assert drops(s.receive(T.records("b"), body(wrong_key), now=0.0)) == [("bad_signature", "b")]
    stranger = sign_frame(frame("z", 0, [1], run=SIGNED.run_id()), KEY_A)
    assert drops(s.receive(T.records("z"), body(stranger), now=0.0)) == [("unknown_signer", "z")]


def test_seal_numbers_frames_from_the_own_prefix_and_signs_them() -> None:
    s = session("a", SIGNED, key=KEY_A)
    s.receive(T.records("b"), body(sign_frame(frame("b", 0, [1], 7, SIGNED.run_id()), KEY_B)), 0.0)
    sealed = s.seal([1, 2, 3, 4, 5, 6])
    assert [(x.frame.first_seq, x.frame.count, x.frame.clock) for x in sealed] == [
        (0, 4, 8),
        (4, 2, 8),
    ]
    for x in sealed:
        assert x.message.topic == T.records("a")
        assert x.message.records == x.frame.count
        assert decode_frame(x.body, run_id=SIGNED.run_id(), keys=SIGNED.public_keys()) == x.frame
    assert s.log.held() == {"a": 6, "b": 1}
    with pytest.raises(ValueError, match="no key"):
        session("b", SIGNED).seal([1])


def test_wants_are_answered_once_per_repeat_window_and_checked_against_their_topic() -> None:
    s = session("me")
    w = Want("b", OPEN.run_id(), "me", 0, 10)
    assert s.receive(T.sync("me", "b"), encode_want(w), now=0.0) == [WantReceived(w)]
    assert s.receive(T.sync("me", "b"), encode_want(w), now=0.5) == []  # already on its way
    assert s.receive(T.sync("me", "b"), encode_want(w), now=1.5) == [WantReceived(w)]
    assert drops(s.receive(T.sync("me", "c"), encode_want(w), now=2.0)) == [("topic_mismatch", "c")]
    assert drops(s.receive(T.records("b"), encode_want(w), now=2.0)) == [("bad_type", "b")]
    out = s.answer(w, [b"f1", b"f2"])
    assert [(m.topic, m.payload, m.kind) for m in out] == [
        (T.sync("b", "me"), b"f1", "answer"),
        (T.sync("b", "me"), b"f2", "answer"),
    ]


def _presence(
    node: str, held: dict[str, int], alive: bool = True, run: bytes = OPEN.run_id()
) -> bytes:
    return encode_presence(Presence(node, run, alive, held, steps=1, manifest=OPEN.to_dict()))


def test_presence_makes_peers_seen_and_gone_and_plans_wants() -> None:
    s = session("me")
    assert s.receive(T.presence("a"), _presence("a", {"a": 10}), now=0.0) == [
        PeerSeen("a", first=True)
    ]
    assert s.receive(T.presence("a"), _presence("a", {"a": 12}), now=1.0) == []
    (w,) = s.wants(now=1.0)
    assert w.topic == T.sync("a", "me")
    assert msgpack.unpackb(w.payload)["count"] == 12
    assert s.receive(T.presence("a"), _presence("a", {"a": 12}, alive=False), now=2.0) == [
        PeerGone("a", silent=False)
    ]
    assert s.receive(T.presence("a"), _presence("a", {"a": 12}), now=3.0) == [
        PeerSeen("a", first=False)
    ]
    assert s.tick(now=7.9) == []
    assert s.tick(now=8.0) == [PeerGone("a", silent=True)]
    assert s.tick(now=9.0) == []
    assert [p.alive for p in s.peers(now=9.0)] == [False]
    assert s.receive(T.presence("me"), _presence("me", {}), now=9.0) == []  # our own
    assert s.receive(T.presence("a"), b"", now=9.0) == []  # a cleared retained message
    assert drops(s.receive(T.presence("b"), _presence("a", {}), now=9.0)) == [
        ("topic_mismatch", "b")
    ]


def test_a_presence_of_another_run_is_a_foreign_run_event() -> None:
    s = session("me")
    other = OPEN.replace(lr=0.5).run_id()
    events = s.receive(T.presence("a"), _presence("a", {}, run=other), now=0.0)
    assert drops(events) == [("wrong_run", "a")]
    assert [e for e in events if isinstance(e, ForeignRun)] == [
        ForeignRun("a", other, OPEN.to_dict())
    ]
    # a goodbye of another run is only counted
    gone = s.receive(T.presence("a"), _presence("a", {}, alive=False, run=other), now=0.0)
    assert drops(gone) == [("wrong_run", "a")]
    assert len(gone) == 1


def test_a_frame_hint_lets_the_planner_ask_before_the_next_presence() -> None:
    s = session("me")
    s.receive(T.presence("a"), _presence("a", {"a": 1}), now=0.0)
    s.receive(T.records("a"), body(frame("a", 0, [1])), now=0.0)
    s.receive(T.records("a"), body(frame("a", 5, [1, 2])), now=0.0)  # beyond a gap
    (w,) = s.wants(now=0.1)
    assert msgpack.unpackb(w.payload)["first"] == 1
    assert msgpack.unpackb(w.payload)["count"] == 6  # up to the end of the newest frame


# == the stateful test ==============================================================================


def frames_for(
    store: dict[tuple[str, int, int], bytes], node: str, first: int, count: int
) -> list[bytes]:
    """What SqliteLogStore.frames_for answers, over a dict (the same covering rule)."""
    end, covered, out = first + count, first, []
    for (n, f_first, f_count), b in sorted(store.items(), key=lambda kv: (kv[0][1], -kv[0][2])):
        if n != node or f_first >= end or f_first + f_count <= covered:
            continue
        out.append(b)
        covered = f_first + f_count
        if covered >= end:
            break
    return out


@dataclass
class Host:
    """One node: its session and its durable store (which survives restarts)."""

    session: Session
    store: dict[tuple[str, int, int], bytes] = field(default_factory=dict)
    up: bool = True


class SwarmOverALossyBus(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.hosts: dict[str, Host] = {}
        self.wire: list[tuple[str, str, bytes]] = []  # (to, topic, payload), in any order
        self.retained: dict[str, bytes] = {}
        self.written: dict[str, list[int]] = {}  # every record each node sealed, in seq order
        self.drops: Counter[str] = Counter()

    # -- the bus ----------------------------------------------------------------------------

    def _boot(self, name: str) -> None:
        host = self.hosts.get(name) or Host(session(name))
        host.session = session(name)
        for b in host.store.values():  # what was durable comes back, as SqliteLogStore does
            host.session.log.offer(decode_frame(b, run_id=OPEN.run_id(), keys=None))
        host.up = True
        self.hosts[name] = host
        self.written.setdefault(name, [])
        for topic, payload in self.retained.items():
            self.wire.append((name, topic, payload))

    def _publish(self, sender: str, topic: str, payload: bytes, retain: bool = False) -> None:
        if not self.hosts[sender].up:
            return  # a node cut off from the broker publishes into the void
        if retain:
            self.retained[topic] = payload
        levels = topic.split("/")
        # sync/<to>/<from> reaches <to>; records/+ and presence/+ everyone, the author too
        targets = [levels[3]] if levels[2] == "sync" else list(self.hosts)
        self.wire.extend((t, topic, payload) for t in targets if t in self.hosts)

    def _deliver(self, i: int) -> None:
        to, topic, payload = self.wire.pop(i)
        host = self.hosts[to]
        if not host.up:
            return
        for event in host.session.receive(topic, payload, self.now):
            if isinstance(event, FrameAccepted):
                f = event.frame
                host.store[(f.node, f.first_seq, f.count)] = event.body
            elif isinstance(event, WantReceived):
                w = event.want
                bodies = frames_for(host.store, w.node, w.first, w.count)
                for m in host.session.answer(w, bodies):
                    self._publish(to, m.topic, m.payload)
            elif isinstance(event, Dropped):
                self.drops[event.reason] += 1

    def _heartbeat(self, name: str) -> None:
        s = self.hosts[name].session
        p = s.presence(steps=s.log.next_seq(name), loss=None)
        self._publish(name, p.topic, p.payload, retain=True)
        for m in s.wants(self.now):
            self._publish(name, m.topic, m.payload)

    # -- rules ------------------------------------------------------------------------------

    @initialize(n=st.integers(min_value=3, max_value=5))
    def start(self, n: int) -> None:
        for i in range(n):
            self._boot(f"n{i}")

    @rule(data=st.data(), qs=st.lists(st.integers(-127, 127), min_size=1, max_size=9))
    def step(self, data: st.DataObject, qs: list[int]) -> None:
        name = data.draw(st.sampled_from(sorted(self.hosts)))
        host = self.hosts[name]
        for sealed in host.session.seal(qs):  # durable first, then published
            f = sealed.frame
            host.store[(f.node, f.first_seq, f.count)] = sealed.body
            self._publish(name, sealed.message.topic, sealed.message.payload)
        self.written[name].extend(qs)

    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        self._heartbeat(data.draw(st.sampled_from(sorted(self.hosts))))

    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        if self.wire:
            self._deliver(data.draw(st.integers(0, len(self.wire) - 1)))

    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        if self.wire:
            self.wire.append(self.wire[data.draw(st.integers(0, len(self.wire) - 1))])

    @rule(data=st.data())
    def lose(self, data: st.DataObject) -> None:
        if self.wire:
            self.wire.pop(data.draw(st.integers(0, len(self.wire) - 1)))

    @rule(dt=st.floats(0.1, 4.0))
    def wait(self, dt: float) -> None:
        self.now += dt

    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        self._boot(data.draw(st.sampled_from(sorted(self.hosts))))

    @rule(data=st.data())
    def partition(self, data: st.DataObject) -> None:
        self.hosts[data.draw(st.sampled_from(sorted(self.hosts)))].up = False

    @rule(data=st.data())
    def heal(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.hosts)))
        if not self.hosts[name].up:
            self._boot(name)  # reconnects: the retained presence of every peer arrives again

    @rule()
    def join(self) -> None:
        if len(self.hosts) < 7:
            self._boot(f"n{len(self.hosts)}")

    # -- what must hold ---------------------------------------------------------------------

    @invariant()
    def nothing_false_is_ever_held(self) -> None:
        for host in self.hosts.values():
            log = host.session.log
            for node, end in log.held().items():
                assert end <= len(self.written[node])
                assert [r.q for r in log.records(node, 0, end)] == self.written[node][:end]

    def teardown(self) -> None:
        for name, host in self.hosts.items():
            if not host.up:
                self._boot(name)
        want = {n: len(qs) for n, qs in self.written.items() if qs}
        for _ in range(60):  # rounds of heartbeats and deliveries until nothing is missing
            if all(h.session.log.held() == want for h in self.hosts.values()):
                break
            self.now += CONFIG.retry_after + 0.5
            for name in sorted(self.hosts):
                self._heartbeat(name)
            while self.wire:
                self._deliver(0)
        for name, host in self.hosts.items():
            assert host.session.log.held() == want, name
        # an honest swarm over a lossy bus drops nothing for a protocol reason
        assert not self.drops, self.drops


SwarmOverALossyBus.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None
)
test_a_lossy_bus_converges = SwarmOverALossyBus.TestCase
