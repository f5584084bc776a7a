"""Relays, sans-IO: when a node listens to a relay's bundles instead of to every node, what
such a bundle may carry, when the node listens to every node again, and what a relay that
drops or alters what it forwards costs (docs/PROTOCOL.md §9): it is caught, named, no longer
followed, and what it altered is given back and asked for again from its author."""

from __future__ import annotations

from typing import Any

from seedswarm.protocol.codec import encode_bundle, encode_frame
from seedswarm.protocol.events import FrameAccepted, PeerSeen, Retracted
from seedswarm.protocol.messages import Presence, Vv, decode_control, encode_presence, encode_vv
from seedswarm.protocol.session import Session, SessionConfig
from seedswarm.protocol.topics import Subscription

from .test_session import OPEN, T, drops, frame

MANIFEST = OPEN.replace(relays=("r0", "r1"))  # the run names two relays
RUN = MANIFEST.run_id()
CONFIG = SessionConfig(peer_timeout=30.0, relay_timeout=10.0, relay_echo=5.0, distrust_for=60.0)


def presence(node: str, *, alive: bool = True, own: int = 0, **kw: Any) -> bytes:
    return encode_presence(Presence(node, RUN, alive, own=own, **kw))


def node(me: str = "me", **kw: Any) -> Session:
    return Session(MANIFEST, me, config=CONFIG, **kw)


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


def test_a_client_the_run_does_not_name_is_no_relay_whatever_it_says() -> None:
    """Its bundles are a third party's copies: refused while their authors are here (open
    run), and it is never followed, even when it says it relays and its bundles come."""
    s = node()
    s.receive(T.presence("a"), presence("a"), 0.0)
    f = frame("a", 0, [1, 2])
    for stranger in ("mallory", "evil"):
        s.receive(T.presence(stranger), presence(stranger, relay=stranger == "evil"), 0.0)
        events = s.receive(T.bundles(stranger), encode_bundle([("a", encode_frame(f))]), 0.0)
        assert drops(events) == [("untrusted", stranger)]
        s.receive(T.bundles(stranger), heartbeat(stranger), 0.0)
        assert s.relays(0.0) == []
        assert topics(s.subscriptions(0.0)) == DIRECT
    # its forwarded presence of another node is nobody's word but its own
    assert drops(s.receive(T.bundles("evil"), encode_bundle([("b", presence("b"))]), 0.0)) == [
        ("untrusted", "evil")
    ]
    # nor does a node the run names that says it relays but sends no bundles
    s.receive(T.presence("r1"), presence("r1", relay=True), 0.0)
    assert topics(s.subscriptions(0.0)) == DIRECT
    # an absent author's records from a stranger: provisional, as from any third party
    s.receive(T.presence("a"), presence("a", alive=False), 1.0)
    events = s.receive(T.bundles("evil"), encode_bundle([("a", encode_frame(f))]), 1.0)
    assert [e.provisional for e in events if isinstance(e, FrameAccepted)] == [True]


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
    ) == [("impersonation", "r0"), ("tampered", "r0")]  # and the relay is no longer followed


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
    s = Session(MANIFEST, "me", config=SessionConfig(use_relays=False))
    relay_up(s)
    assert topics(s.subscriptions(0.0)) == DIRECT


def _publish_own(s: Session, qs: list[int], now: float) -> bytes:
    (sealed,) = s.seal(qs)
    s.stored([sealed])
    s.tick(now)  # the node's tick notes when its own records became durable (and published)
    return sealed.body


def test_a_relay_that_does_not_carry_own_frames_back_is_no_longer_followed() -> None:
    s = node("a")
    relay_up(s)
    assert s.relays(0.0) == ["r0"]
    body = _publish_own(s, [1], 1.0)
    s.receive(T.bundles("r0"), encode_bundle([("a", body)]), 1.5)  # carried back: fine
    assert drops(s.tick(7.0)) == []
    _publish_own(s, [2], 8.0)
    for t in (9.0, 10.0, 12.0):  # the relay's heartbeats keep coming, but not the frame
        s.receive(T.bundles("r0"), heartbeat(), t)
        assert drops(s.tick(t)) == []
    s.receive(T.bundles("r0"), heartbeat(), 13.0)
    assert drops(s.tick(13.1)) == [("relay_dropped", "r0")]
    assert s.relays(13.1) == []  # every node's frames again, at once
    assert "records/+" in topics(s.subscriptions(13.1))
    assert s.statistics().distrusted == {"r0": "relay_dropped"}
    # its bundles are now a third party's: read, never followed, for distrust_for seconds
    s.receive(T.bundles("r0"), heartbeat(), 20.0)
    assert s.relays(20.0) == []
    s.receive(T.bundles("r0"), heartbeat(), 74.0)  # then a second chance, checked as before
    assert s.relays(74.0) == ["r0"]
    assert s.statistics().distrusted == {}


def test_a_relay_that_alters_an_own_frame_is_caught_at_once() -> None:
    s = node("a")
    relay_up(s)
    _publish_own(s, [5], 1.0)
    altered = encode_frame(frame("a", 0, [-5], run=RUN))
    events = s.receive(T.bundles("r0"), encode_bundle([("a", altered)]), 1.2)
    assert drops(events) == [("impersonation", "r0"), ("tampered", "r0")]
    assert s.relays(1.2) == []
    assert s.log.held() == {"a": 1}  # its own log is never in doubt


def _vv_of(sender: str, held: dict[str, tuple[int, bytes]]) -> bytes:
    vv = Vv(sender, RUN, {n: c for n, (c, _) in held.items()}, {n: d for n, (_, d) in held.items()})
    return encode_vv(vv)


def test_records_a_relay_altered_are_given_back_once_their_author_says_otherwise() -> None:
    """The split a hostile relay made: equal version vectors, other bytes. The digest in
    presence differs, a vv says which node's bytes, its author's word decides, the altered
    copy is given back and asked for again from the author, and the relay is named."""
    honest = Session(MANIFEST, "a", config=CONFIG)
    (sealed,) = honest.seal([7, -3, 12])
    honest.stored([sealed])
    me = node()
    relay_up(me)
    me.receive(T.presence("a"), presence("a", own=3), 0.0)
    negated = encode_frame(frame("a", 0, [-7, 3, -12], run=RUN))
    events = me.receive(T.bundles("r0"), encode_bundle([("a", negated)]), 1.0)
    assert [e.new_records for e in events if isinstance(e, FrameAccepted)] == [3]
    # the same version vector, other bytes: the presence digests differ
    mine = me.presence(steps=0, loss=None)
    theirs = honest.presence(steps=1, loss=None)
    p_mine = decode_control(mine.payload, sender="me", run_id=RUN, keys=None)
    p_theirs = decode_control(theirs.payload, sender="a", run_id=RUN, keys=None)
    assert isinstance(p_mine, Presence)
    assert isinstance(p_theirs, Presence)
    assert p_mine.held_total == p_theirs.held_total == 3
    assert p_mine.held_digest != p_theirs.held_digest
    # so the node asks its peer (here the author) for its vv ...
    me.receive(T.presence("a"), theirs.payload, 2.0)
    asks = [o for o in me.wants(2.0) if o.kind == "vvreq"]
    assert [o.topic for o in asks] == [T.sync("a", "me")]
    # ... whose answer shows a's bytes differ: a's own word wins
    answer = honest.vv("me")
    events = me.receive(T.sync("me", "a"), answer.payload, 2.5)
    gone = [e for e in events if isinstance(e, Retracted)]
    assert [(g.node, [r.q for r in g.records]) for g in gone] == [("a", [-7, 3, -12])]
    assert drops(events) == [("tampered", "r0")]
    assert me.log.held() == {}
    st = me.statistics()
    assert (st.repairs, st.content_mismatches, st.distrusted) == (1, 1, {"r0": "tampered"})
    assert topics(me.subscriptions(2.5)) == DIRECT
    # and asks the author for its records again; the author's copy is taken
    wants = [o for o in me.wants(2.6) if o.kind == "want"]
    assert [o.topic for o in wants] == [T.sync("a", "me")]
    reply = honest.answer(
        decode_control(wants[0].payload, sender="me", run_id=RUN, keys=None),  # type: ignore[arg-type]
        [sealed.body],
    )
    me.receive(T.sync("me", "a"), reply[0].payload, 3.0)
    assert me.log.content("a") == honest.log.content("a")
    assert me.presence(steps=0, loss=None).payload != mine.payload


def test_a_third_partys_other_bytes_are_checked_with_the_author_first() -> None:
    """A peer that holds other bytes for a's records than we do: a's own vv decides, and when
    it agrees with us, nothing of ours is given back."""
    me = node()
    for n in ("a", "p"):
        me.receive(T.presence(n), presence(n, own=3 if n == "a" else 0), 0.0)
    me.receive(T.records("a"), encode_frame(frame("a", 0, [1, 2, 3], run=RUN)), 0.0)
    held = me.log.held_content()
    events = me.receive(T.sync("me", "p"), _vv_of("p", {"a": (3, b"\x01" * 16)}), 1.0)
    assert drops(events) == []
    assert not any(isinstance(e, Retracted) for e in events)
    asks = [o.topic for o in me.wants(1.0) if o.kind == "vvreq"]
    assert T.sync("a", "me") in asks
    events = me.receive(T.sync("me", "a"), _vv_of("a", held), 1.5)
    assert not any(isinstance(e, Retracted) for e in events)
    assert me.log.held() == {"a": 3}
    assert [o.topic for o in me.wants(9.0) if o.kind == "vvreq"] == []  # a is no suspect now


def test_an_authors_word_on_more_records_than_held_is_taken_once_they_are_held() -> None:
    """An author that steps on holds more of its records than a node that gets them through a
    relay, so its vv rarely shows the same count: its word is kept, and checked as soon as the
    node holds that many (tick). Agreement keeps the copy; other bytes give it back."""
    honest = Session(MANIFEST, "a", config=CONFIG)
    sealed = honest.seal([7, -3, 12, 5, 1])
    honest.stored(sealed)
    me = node()
    relay_up(me)
    me.receive(T.presence("a"), presence("a", own=5), 0.0)
    me.receive(
        T.bundles("r0"), encode_bundle([("a", encode_frame(frame("a", 0, [7, -3], run=RUN)))]), 1.0
    )
    events = me.receive(T.sync("me", "a"), honest.vv("me").payload, 1.5)  # a holds 5, me 2
    assert events == []
    assert me.tick(1.6) == []  # not held yet: nothing to compare
    negated = encode_frame(frame("a", 2, [-12, -5, -1], run=RUN))
    me.receive(T.bundles("r0"), encode_bundle([("a", negated)]), 2.0)
    events = me.tick(2.1)  # now it holds a's 5 records: a's word on them decides
    gone = [e for e in events if isinstance(e, Retracted)]
    assert [(g.node, [r.q for r in g.records]) for g in gone] == [("a", [7, -3, -12, -5, -1])]
    assert drops(events) == [("tampered", "r0")]
    assert me.statistics().repairs == 1
    assert me.tick(3.0) == []  # said once

    agreeing = node()
    relay_up(agreeing)
    agreeing.receive(T.presence("a"), presence("a", own=5), 0.0)
    agreeing.receive(T.sync("me", "a"), honest.vv("me").payload, 1.0)  # before any record
    agreeing.receive(T.records("a"), encode_frame(frame("a", 0, [7, -3, 12, 5, 1], run=RUN)), 2.0)
    assert agreeing.tick(2.1) == []
    assert agreeing.log.held() == {"a": 5}
    assert agreeing.statistics().content_mismatches == 0


def test_a_peer_that_holds_fewer_records_is_compared_over_its_prefix() -> None:
    """A peer's vv that covers fewer of a's records than the node holds is compared with the
    digest of as many of them: other bytes there make a a suspect, asked for its own word."""
    me = node()
    for n in ("a", "p"):
        me.receive(T.presence(n), presence(n, own=3 if n == "a" else 0), 0.0)
    me.receive(T.records("a"), encode_frame(frame("a", 0, [1, 2, 3], run=RUN)), 0.0)
    same = me.log.content_at("a", 2)
    assert me.receive(T.sync("me", "p"), _vv_of("p", {"a": (2, same)}), 1.0) == []
    assert me.statistics().content_mismatches == 0
    other = encode_frame(frame("a", 0, [1, -2], run=RUN))
    p = Session(MANIFEST, "p", config=CONFIG)
    p.receive(T.presence("a"), presence("a", own=2), 0.0)
    p.receive(T.records("a"), other, 0.0)
    assert p.log.held() == {"a": 2}
    me.receive(T.sync("me", "p"), p.vv("me").payload, 7.0)
    assert me.statistics().content_mismatches == 1
    assert T.sync("a", "me") in [o.topic for o in me.wants(7.0) if o.kind == "vvreq"]


def test_while_the_swarm_steps_peers_holding_fewer_records_are_asked_in_turn() -> None:
    """No presence shows as many records as the node holds while everyone steps: peers with
    another digest are asked for their vv all the same, one every 5 s, the one asked longest
    ago first (the node's own order of its peers first among those never asked); never one
    with the node's own digest or without records."""
    me = node()
    for q in ([1, 2, 3], [4]):
        (sealed,) = me.seal(q)
        me.stored([sealed])
    mine = me.presence(steps=0, loss=None)
    p_mine = decode_control(mine.payload, sender="me", run_id=RUN, keys=None)
    assert isinstance(p_mine, Presence)
    held = p_mine.held_digest
    for n, digest in (("p", b"\x01" * 8), ("q", b"\x02" * 8), ("s", held)):
        me.receive(T.presence(n), presence(n, held_digest=digest, held_total=3), 0.0)
    me.receive(T.presence("z"), presence("z"), 0.0)  # holds nothing

    def asked(now: float) -> list[str]:
        return [o.topic for o in me.wants(now) if o.kind == "vvreq"]

    first = asked(0.0)
    assert first in ([T.sync("p", "me")], [T.sync("q", "me")])
    assert asked(1.0) == []  # one every 5 s
    second = asked(5.0)
    assert second in ([T.sync("p", "me")], [T.sync("q", "me")])
    assert second != first
    assert asked(10.0) == first


def test_peers_that_hold_more_are_asked_one_every_5_s_in_all_and_nodes_spread_over_them() -> None:
    """Twenty peers hold more records than a node with none (a joiner): it asks one of them
    for its vv every 5 s, not one a second. And when a peer's presence changes, not every other
    node asks that one peer at once: forty nodes that have asked none of their peers yet pick
    their first over the twenty (each would answer with a vv of the whole swarm)."""
    holders = [f"h{i:02d}" for i in range(20)]

    def joiner(me: str) -> Session:
        s = node(me)
        for h in holders:
            s.receive(
                T.presence(h), presence(h, own=5, held_digest=b"\x01" * 8, held_total=100), 0.0
            )
        return s

    def asked(s: Session, now: float) -> list[str]:
        return [o.topic.split("/")[-2] for o in s.wants(now) if o.kind == "vvreq"]

    one = joiner("me")
    per_second = [asked(one, float(t)) for t in range(15)]
    assert [len(a) for a in per_second] == [1, 0, 0, 0, 0] * 3
    assert len({a[0] for a in per_second if a}) == 3  # another peer each time
    firsts = {asked(joiner(f"n{i:02d}"), 0.0)[0] for i in range(40)}
    assert len(firsts) >= 10, firsts  # with the largest total first: all forty asked one peer
