"""Relays, sans-IO: when a node listens to a relay's bundles instead of to every node, what
such a bundle may carry, and when the node listens to every node again."""

from __future__ import annotations

from seedswarm.protocol.codec import encode_bundle, encode_frame
from seedswarm.protocol.messages import Presence, decode_control
from seedswarm.protocol.session import FrameAccepted, PeerSeen, Session, SessionConfig
from seedswarm.protocol.topics import Subscription

from .test_session import OPEN, RUN, T, drops, frame, presence

CONFIG = SessionConfig(peer_timeout=30.0, relay_timeout=10.0)


def node(me: str = "me", **kw: object) -> Session:
    return Session(OPEN, me, config=CONFIG, **kw)  # type: ignore[arg-type]


def topics(subs: list[Subscription]) -> list[str]:
    return sorted(s.topic.split("/", 2)[2] for s in subs)


DIRECT = ["bundles/+", "presence/+", "records/+", "sync/me/+"]
RELAYED = ["bundles/+", "sync/me/+"]


def heartbeat(relay: str = "r0") -> bytes:
    """What a relay publishes when nothing came: a bundle of its own presence."""
    return encode_bundle([(relay, presence(relay, relay=True))])


def relay_up(s: Session, relay: str = "r0", now: float = 0.0) -> None:
    s.receive(T.presence(relay), presence(relay, relay=True), now)
    s.receive(T.bundles(relay), heartbeat(relay), now)


def test_a_node_listens_to_every_node_until_a_relay_is_up() -> None:
    s = node()
    assert topics(s.subscriptions(0.0)) == DIRECT
    relay_up(s)
    assert s.relays(0.5) == ["r0"]
    assert topics(s.subscriptions(0.5)) == RELAYED


def test_without_bundles_for_the_relay_timeout_it_listens_directly_again() -> None:
    s = node()
    relay_up(s)
    assert topics(s.subscriptions(9.9)) == RELAYED
    assert topics(s.subscriptions(10.0)) == DIRECT
    s.receive(T.bundles("r0"), heartbeat(), 12.0)  # the relay is back
    assert topics(s.subscriptions(12.0)) == RELAYED


def test_a_relays_goodbye_or_will_ends_listening_to_it() -> None:
    s = node()
    relay_up(s)
    s.receive(T.presence("r0"), presence("r0", alive=False, relay=True), 1.0)
    assert s.relays(1.0) == []
    assert topics(s.subscriptions(1.0)) == DIRECT


def test_bundles_of_a_client_that_never_said_it_relays_are_read_but_not_listened_to() -> None:
    s = node()
    s.receive(T.presence("a"), presence("a"), 0.0)
    f = frame("a", 0, [1, 2])
    events = s.receive(T.bundles("mallory"), encode_bundle([("a", encode_frame(f))]), 0.0)
    assert [e.frame for e in events if isinstance(e, FrameAccepted)] == [f]
    assert s.relays(0.0) == []
    assert topics(s.subscriptions(0.0)) == DIRECT
    # nor does a node that says it relays but sends no bundles
    s.receive(T.presence("r1"), presence("r1", relay=True), 0.0)
    assert topics(s.subscriptions(0.0)) == DIRECT


def test_a_relay_bundle_carries_presence_and_frames_and_each_bad_entry_is_dropped_alone() -> None:
    s = node()
    relay_up(s)
    fa = frame("a", 0, [3])
    entries = [
        ("a", presence("a")),  # a's presence, then its first frame: taken in this order
        ("a", encode_frame(fa)),
        ("b", b"\x02\x80"),  # a cut frame
        ("c", b"\xc1"),  # neither a frame nor a message
        ("b", presence("b")),
        ("b", encode_frame(frame("b", 0, [4]))),
    ]
    events = s.receive(T.bundles("r0"), encode_bundle(entries), 1.0)
    assert [e.node for e in events if isinstance(e, PeerSeen)] == ["a", "b"]
    assert [e.frame.node for e in events if isinstance(e, FrameAccepted)] == ["a", "b"]
    assert drops(events) == [("truncated", "r0"), ("malformed", "r0")]
    assert s.log.held() == {"a": 1, "b": 1}


def test_frames_through_a_relay_keep_their_authors_alive() -> None:
    s = node()
    relay_up(s)
    s.receive(T.bundles("r0"), encode_bundle([("a", presence("a"))]), 0.0)
    s.receive(T.bundles("r0"), encode_bundle([("a", encode_frame(frame("a", 0, [1])))]), 25.0)
    assert [p.alive for p in s.peers(40.0) if p.node == "a"] == [True]  # 15 s after its frame


def test_own_frames_back_from_a_relay_are_no_echoes_of_the_broker() -> None:
    s = node("a")
    relay_up(s)
    (sealed,) = s.seal([5])
    s.receive(T.bundles("r0"), encode_bundle([("a", sealed.body)]), 1.0)
    assert s.statistics().echoes == 0
    assert drops(
        s.receive(T.bundles("r0"), encode_bundle([("a", encode_frame(frame("a", 0, [6])))]), 1.0)
    ) == [("impersonation", "r0")]


def test_a_relay_listens_directly_and_never_to_bundles_and_says_it_relays() -> None:
    r = node("r0", relay=True)
    relay_up(r, "r1")  # another relay is up: a relay still listens to every node
    assert topics(r.subscriptions(0.0)) == ["presence/+", "records/+", "sync/r0/+"]
    msg = r.presence(steps=0, loss=None)
    assert msg.retain
    got = decode_control(msg.payload, sender="r0", run_id=RUN, keys=None)
    assert isinstance(got, Presence)
    assert got.relay
    assert got.alive


def test_use_relays_off_keeps_a_node_listening_to_every_node() -> None:
    s = Session(OPEN, "me", config=SessionConfig(use_relays=False))
    relay_up(s)
    assert topics(s.subscriptions(0.0)) == DIRECT
