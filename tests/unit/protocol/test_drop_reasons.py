"""docs/PROTOCOL.md §9's table of checks, row by row: one reason per check.

Every row of the table has cases here (and every case a row): input that fails that check and
no earlier one, fed to the real decoder, session or joiner, which must drop it for the reason
the document's row gives. The reasons are read from the document, so the table and the code
cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from seedswarm.protocol import canonical, varint
from seedswarm.protocol.codec import decode_frame, encode_bundle, encode_frame, sign_frame
from seedswarm.protocol.errors import ProtocolError
from seedswarm.protocol.events import Dropped, Event
from seedswarm.protocol.log import MAX_CLOCK_JUMP
from seedswarm.protocol.manifest import RUN_DOMAIN, Manifest, TaskSpec
from seedswarm.protocol.messages import (
    MAX_VV_NODES,
    Presence,
    Vv,
    VvRequest,
    Want,
    encode_presence,
    encode_vv,
    encode_vv_request,
    encode_want,
)
from seedswarm.protocol.records import Frame
from seedswarm.protocol.retained import read_retained_manifest
from seedswarm.protocol.session import Session, SessionConfig
from seedswarm.protocol.signing import NodeKey

from .strategies import KEY_A, KEY_B

DOC = Path(__file__).resolve().parents[3] / "docs" / "PROTOCOL.md"

OPEN = Manifest(name="t", model="tiny", base_hash="0" * 64, task=TaskSpec(kind="causal_lm"))
SIGNED = OPEN.replace(keys=(("a", KEY_A.public_hex()), ("b", KEY_B.public_hex())))
KEY_C = NodeKey.from_hex("03" * 32)
CONFIG = SessionConfig(peer_timeout=5.0)
MIB = 1 << 20


def doc_rows() -> dict[int, str]:
    """Row number -> reason, from the table under "Checks, in order" in §9."""
    text = DOC.read_text()
    table = text[text.index("**Checks, in order, and the drop reasons they give.**") :]
    table = table[: table.index("\n\n", table.index("| # |"))]
    rows = {}
    for line in table.splitlines():
        m = re.fullmatch(r"\| (\d+) \| [^|]+ \| .+ \| `([a-z_]+)` \|", line)
        if m:
            rows[int(m.group(1))] = m.group(2)
    assert rows, "no table rows found"
    assert list(rows) == list(range(1, len(rows) + 1)), "rows are numbered 1, 2, 3, ..."
    return rows


# == feeding the real code ==========================================================================


def session(manifest: Manifest = OPEN) -> Session:
    return Session(manifest, "me", config=CONFIG)


T = session().topics


def presence(
    node: str, *, run: bytes | None = None, key: NodeKey | None = None, **kw: Any
) -> bytes:
    p = Presence(node, run or OPEN.run_id(), True, **kw)
    return encode_presence(p, key)


def frame(node: str, first: int, qs: list[int], clock: int = 1, m: Manifest = OPEN) -> Frame:
    return Frame(m.run_id(), node, first, clock, bytes(q & 0xFF for q in qs))


def signed(f: Frame, key: NodeKey) -> bytes:
    return encode_frame(sign_frame(f, key))


def the_drop(events: list[Event]) -> str:
    drops = [e for e in events if isinstance(e, Dropped)]
    assert len(drops) == 1, events
    return drops[0].reason


def feed(
    topic: str, payload: bytes, *, manifest: Manifest = OPEN, announce: tuple[str, ...] = ()
) -> str:
    s = session(manifest)
    for n in announce:
        key = {"a": KEY_A, "b": KEY_B}.get(n) if manifest.keys else None
        s.receive(T.presence(n), presence(n, run=manifest.run_id(), key=key), now=0.0)
    return the_drop(s.receive(topic, payload, now=0.0))


def packed(value: Any) -> bytes:
    out: bytes = msgpack.packb(value, use_bin_type=True)
    return out


RUN = OPEN.run_id()
PRESENCE = msgpack.unpackb(presence("a"), raw=False)  # [2, "p", run, 9 fields]


def presence_with(index: int, value: Any, *more: tuple[int, Any]) -> bytes:
    fields = list(PRESENCE)
    for i, v in ((index, value), *more):
        fields[3 + i] = v
    return packed(fields)


def manifest_reason(topic: str, payload: bytes, run_id: bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        read_retained_manifest(topic, payload, prefix="seedswarm", run_id=run_id)
    return info.value.reason


def certified(value: Any, cut: int = 0) -> tuple[str, bytes, bytes]:
    """A manifest topic, payload and run id where the payload hashes to the run id."""
    payload = packed(value)
    payload = payload[: len(payload) - cut]
    rid = canonical.sha256(RUN_DOMAIN, payload)[:8]
    return f"seedswarm/t/manifest/{rid.hex()}", payload, rid


MANIFEST_TOPIC = f"seedswarm/t/manifest/{RUN.hex()}"


def over_budget() -> str:
    s = session()
    # junk on b's topic is dropped for what it is and costs b no token (row 48 comes last) ...
    junk = [the_drop(s.receive(T.sync("me", "b"), b"\xc1", now=0.0)) for _ in range(500)]
    assert junk == ["malformed"] * 500
    # ... b's own messages do: a burst of 100 is answered, the 101st is over budget
    req = encode_vv_request(VvRequest("b", RUN))
    events = [s.receive(T.sync("me", "b"), req, now=0.0) for _ in range(101)]
    assert all(not any(isinstance(e, Dropped) for e in ev) for ev in events[:100])
    return the_drop(events[100])


def vv_of(n: int) -> bytes:
    held = {f"n{i}": 1 for i in range(n)}
    return encode_vv(Vv("b", RUN, held, dict.fromkeys(held, bytes(16))))


RELAYED = OPEN.replace(relays=("r",))  # a run that names the relay "r"


def relay_feed(entries: list[tuple[str, bytes]]) -> str:
    """What a relay of the run forwards (the run RELAYED)."""
    s = session(RELAYED)
    s.receive(T.presence("r"), presence("r", run=RELAYED.run_id(), relay=True), now=0.0)
    return the_drop(s.receive(T.bundles("r"), encode_bundle(entries), now=0.0))


def own_echo_differs() -> str:
    s = session()
    (sealed,) = s.seal([1, 2])
    s.stored([sealed])
    assert s.receive(T.records("me"), sealed.body, now=0.0) == []  # its echo: no drop
    return the_drop(s.receive(T.records("me"), encode_frame(frame("me", 0, [1, 3])), now=0.0))


def third_party_copy() -> str:
    s = session()
    for n in ("a", "b"):
        s.receive(T.presence(n), presence(n), now=0.0)
    bundle = encode_bundle([("a", encode_frame(frame("a", 0, [1])))])
    return the_drop(s.receive(T.sync("me", "b"), bundle, now=0.0))


def stranger_bundle(entry: tuple[str, bytes]) -> str:
    """A bundle on bundles/x of a client that says it relays but that the run does not name."""
    s = session()
    for n in ("a", "x"):
        s.receive(T.presence(n), presence(n, relay=n == "x"), now=0.0)
    return the_drop(s.receive(T.bundles("x"), encode_bundle([entry]), now=0.0))


def log_case(first: Frame, second: Frame) -> str:
    s = session()
    s.receive(T.presence("a"), presence("a"), now=0.0)
    assert s.receive(T.records("a"), encode_frame(first), now=0.0)
    return the_drop(s.receive(T.records("a"), encode_frame(second), now=0.0))


Case = Callable[[], str]

CASES: dict[int, list[Case]] = {
    1: [lambda: session().overloaded(T.records("a"), "inbox full").reason],
    2: [
        lambda: feed(T.base + "/records/no!good", b"\x02\x00\x00\x01"),
        lambda: feed(T.base + "/other/a", b"\x02\x00\x00\x01"),
        lambda: feed("elsewhere/t/records/a", b"\x02\x00\x00\x01"),
        lambda: manifest_reason(f"seedswarm/t/manifests/{RUN.hex()}", OPEN.canonical_bytes(), RUN),
        lambda: manifest_reason(MANIFEST_TOPIC.upper(), OPEN.canonical_bytes(), RUN),
    ],
    3: [
        lambda: feed(T.sync("other", "b"), encode_want(Want("b", RUN, "a", 0, 1))),
        lambda: manifest_reason(
            f"seedswarm/t/manifest/{bytes(8).hex()}", OPEN.canonical_bytes(), RUN
        ),
    ],
    48: [over_budget],
    4: [lambda: feed(T.records("a"), b"\x02\x00\x00" + b"\x01" * 4177)],
    5: [
        lambda: feed(T.bundles("r"), b"\x03" + b"\x00" * MIB),
        lambda: feed(T.presence("a"), packed([2, "p", RUN, "x" * MIB])),
        lambda: manifest_reason(MANIFEST_TOPIC, b"\x80" * (MIB + 1), RUN),
    ],
    6: [
        lambda: feed(T.records("a"), b""),
        lambda: feed(T.bundles("r"), b""),
        lambda: feed(T.sync("me", "b"), b""),
        lambda: relay_feed([("a", b"")]),  # a relay forwards no cleared presence
    ],
    7: [lambda: manifest_reason(MANIFEST_TOPIC, OPEN.replace(lr=1.0).canonical_bytes(), RUN)],
    8: [
        lambda: feed(T.records("a"), b"\x01\x00\x00\x01"),
        lambda: feed(T.records("a"), b"\x97\x01"),  # a frame of protocol 1 (msgpack)
    ],
    9: [lambda: feed(T.records("a"), encode_frame(frame("a", 0, [1], m=SIGNED)), manifest=SIGNED)],
    10: [
        lambda: feed(T.records("a"), b"\x02\x80"),
        lambda: feed(T.records("a"), b"\x02\x00"),
        lambda: feed(T.records("a"), b"\x02\x00\x80"),
    ],
    11: [
        lambda: feed(T.records("a"), b"\x02\x80\x00\x00\x01"),
        lambda: feed(T.records("a"), b"\x02" + b"\x80" * 10 + b"\x00\x01"),
    ],
    12: [
        lambda: feed(T.records("a"), b"\x02" + varint.encode(2**63) + b"\x00\x01"),
        lambda: feed(T.records("a"), b"\x02\x00" + varint.encode(2**63) + b"\x01"),
    ],
    13: [lambda: feed(T.records("a"), b"\x02\x00\x00")],
    14: [
        lambda: feed(T.records("a"), b"\x02\x00\x00" + b"\x01" * 4097),
        # a signed frame of 4096 records in an open run: its signature read as 64 more
        lambda: feed(T.records("a"), signed(frame("a", 0, [1] * 4096), KEY_A)),
    ],
    15: [lambda: feed(T.records("a"), b"\x02" + varint.encode(2**63 - 1) + b"\x00\x01\x01")],
    16: [lambda: feed(T.records("a"), b"\x02\x00\x00\x01\x80")],
    17: [
        lambda: feed(T.records("c"), signed(frame("c", 0, [1], m=SIGNED), KEY_C), manifest=SIGNED)
    ],
    18: [
        lambda: feed(T.records("a"), signed(frame("a", 0, [1], m=SIGNED), KEY_B), manifest=SIGNED)
    ],
    19: [
        lambda: feed(T.bundles("r"), b"\x02\x00\x00\x01"),
        lambda: feed(T.bundles("r"), presence("r")),  # a message is no bundle
    ],
    20: [lambda: feed(T.bundles("r"), b"\x03"), lambda: feed(T.sync("me", "b"), b"\x03")],
    21: [
        lambda: feed(T.bundles("r"), b"\x03\x00"),
        lambda: feed(T.bundles("r"), b"\x03\x21" + b"a" * 33 + b"\x01\x02"),
    ],
    22: [lambda: feed(T.bundles("r"), b"\x03\x05ab")],
    23: [
        lambda: feed(T.bundles("r"), b"\x03\x03a/b\x01\x02"),
        lambda: feed(T.bundles("r"), b"\x03\x01\xff\x01\x02"),
    ],
    24: [
        lambda: feed(T.bundles("r"), b"\x03\x01a"),
        lambda: feed(T.bundles("r"), b"\x03\x01a\x80"),
    ],
    25: [lambda: feed(T.bundles("r"), b"\x03\x01a\x80\x00\x02")],
    26: [lambda: feed(T.bundles("r"), b"\x03\x01a" + b"\xff" * 9 + b"\x7f")],
    27: [lambda: feed(T.bundles("r"), b"\x03\x01a" + varint.encode(4180) + b"\x02" * 4180)],
    28: [lambda: feed(T.bundles("r"), b"\x03\x01a\x05\x02\x00")],
    29: [
        lambda: feed(T.presence("a"), presence("a")[:-1]),
        lambda: feed(T.presence("a"), b"\xdb\xff\xff\xff\xff"),  # a str of 4 GiB
        lambda: manifest_reason(*certified(OPEN.to_dict(), cut=1)),
    ],
    30: [
        lambda: feed(T.presence("a"), b"\xc1"),
        lambda: feed(T.presence("a"), b"\x91" * 1025 + b"\x00"),
        lambda: feed(
            T.sync("me", "b"),
            packed([2, "v", RUN, {"a": 1}]).replace(b"\x81", b"\x82") + b"\xa1a\x02",
        ),
    ],
    31: [
        lambda: feed(T.presence("a"), b"\xd4\x05\x00"),  # an extension type
        lambda: feed(T.presence("a"), b"\xd6\xff\x00\x00\x00\x00"),  # a timestamp
        lambda: feed(T.sync("me", "b"), packed([2, "v", RUN, {1: 1}])),  # a key not str
        lambda: manifest_reason(*certified({1: 2})),
    ],
    32: [
        lambda: feed(T.presence("a"), presence("a") + b"\x00"),
        lambda: feed(T.presence("a"), presence("a") + b"\x00" * 63),
        lambda: feed(T.sync("me", "b"), b"\x02\x00\x00\x01"),  # a frame on sync/: 2, then 3 bytes
    ],
    33: [
        lambda: feed(T.presence("a"), packed([2, "p"])),
        lambda: feed(T.presence("a"), packed({"v": 2})),
        lambda: feed(T.sync("me", "b"), b"\x02"),  # the msgpack int 2
    ],
    34: [lambda: feed(T.presence("a"), packed(["2", "p", RUN]))],
    35: [lambda: feed(T.presence("a"), packed([3, "p", RUN]))],
    36: [
        lambda: feed(T.presence("a"), packed([2, b"p", RUN])),
        lambda: feed(T.presence("a"), packed([2, "p", RUN[:7]])),
    ],
    37: [
        lambda: feed(T.presence("a"), presence("a", run=SIGNED.run_id())),
        lambda: feed(T.sync("me", "b"), encode_want(Want("b", SIGNED.run_id(), "a", 0, 1))),
    ],
    38: [lambda: feed(T.presence("a"), presence("a", key=KEY_A))],
    39: [lambda: feed(T.presence("a"), presence("a", run=SIGNED.run_id()), manifest=SIGNED)],
    40: [
        lambda: feed(
            T.presence("c"), presence("c", run=SIGNED.run_id(), key=KEY_C), manifest=SIGNED
        )
    ],
    41: [
        lambda: feed(
            T.presence("a"), presence("a", run=SIGNED.run_id(), key=KEY_B), manifest=SIGNED
        )
    ],
    42: [lambda: feed(T.presence("a"), packed([2, "x", RUN]))],
    43: [
        lambda: feed(T.presence("a"), packed(PRESENCE[:-1])),
        lambda: feed(T.sync("me", "b"), packed([2, "w", RUN, "a", 1])),
    ],
    44: [
        lambda: feed(T.sync("me", "b"), packed([2, "w", RUN, "a", 0, "7"])),
        lambda: feed(T.presence("a"), presence_with(8, 1)),
        # of two bad fields the first on the wire decides: loss (bad type) before http (range)
        lambda: feed(T.presence("a"), presence_with(5, "x", (6, "h" * 257))),
    ],
    45: [lambda: feed(T.sync("me", "b"), vv_of(MAX_VV_NODES + 1))],
    46: [
        lambda: feed(T.presence("a"), presence_with(6, "h" * 257)),
        lambda: feed(
            T.sync("me", "b"),
            encode_want(Want("b", RUN, "a", 0, 1)).replace(b"\x00\x01", b"\x00\x00"),
        ),
        lambda: feed(T.sync("me", "b"), packed([2, "w", RUN, "a/b", 0, 1])),
        # own (out of range) comes before relay (wrong type) on the wire
        lambda: feed(T.presence("a"), presence_with(1, -1, (8, 1))),
    ],
    47: [
        lambda: feed(T.presence("a"), encode_want(Want("a", RUN, "b", 0, 1))),
        lambda: feed(T.sync("me", "b"), presence("b")),
        lambda: relay_feed([("a", encode_want(Want("a", RELAYED.run_id(), "b", 0, 1)))]),
    ],
    49: [lambda: manifest_reason(*certified([OPEN.to_dict()]))],
    50: [lambda: manifest_reason(*certified(dict(reversed(OPEN.to_dict().items()))))],
    51: [
        lambda: manifest_reason(
            f"seedswarm/other/manifest/{RUN.hex()}", OPEN.canonical_bytes(), RUN
        )
    ],
    52: [own_echo_differs],
    53: [lambda: feed(T.records("a"), encode_frame(frame("a", 0, [1])))],
    54: [
        third_party_copy,
        lambda: stranger_bundle(("a", encode_frame(frame("a", 0, [1])))),
        lambda: stranger_bundle(("a", presence("a"))),
    ],
    55: [lambda: log_case(frame("a", 0, [1], clock=5), frame("a", 1, [1], 6 + MAX_CLOCK_JUMP))],
    56: [
        lambda: log_case(frame("a", 0, [1, 2], clock=5), frame("a", 1, [3], clock=5)),
        lambda: log_case(frame("a", 0, [1, 2], clock=5), frame("a", 1, [2], clock=6)),
    ],
    57: [lambda: log_case(frame("a", 0, [1], clock=5), frame("a", 1, [2], clock=4))],
}

ROWS = doc_rows()


def test_every_row_of_the_table_has_cases_and_every_case_a_row() -> None:
    assert sorted(CASES) == sorted(ROWS)


@pytest.mark.parametrize("row", sorted(CASES), ids=[f"row{r}" for r in sorted(CASES)])
def test_each_check_gives_the_reason_its_row_names(row: int) -> None:
    for i, case in enumerate(CASES[row]):
        assert case() == ROWS[row], f"row {row}, case {i}"


# == what the table's notes say is no drop ==========================================================


def test_cleared_retained_messages_and_echoes_are_no_drops() -> None:
    s = session()
    assert s.receive(T.presence("a"), b"", now=0.0) == []
    assert read_retained_manifest(MANIFEST_TOPIC, b"", prefix="seedswarm", run_id=RUN) is None
    assert s.statistics().dropped == {}


def test_a_signed_frame_in_an_open_run_is_read_as_64_more_records() -> None:
    f = frame("a", 0, [1, 2, 3])
    data = signed(f, KEY_A)
    if 0x80 in data[-64:]:  # pragma: no cover (this key's signature has none)
        pytest.fail("pick a frame whose signature has no 0x80 byte")
    read = decode_frame(data, run_id=RUN, node="a", keys=None)
    assert read.count == 3 + 64
    assert read.qs[:3] == f.qs
    # a node of a signed run announces another run id: its frames reach no open node's log
    assert feed(T.records("a"), data) == "unannounced"
    s = session()
    s.receive(T.presence("a"), presence("a", run=SIGNED.run_id(), key=KEY_A), now=0.0)
    assert the_drop(s.receive(T.records("a"), data, now=0.0)) == "unannounced"


def test_a_frame_beyond_the_prefix_is_no_drop() -> None:
    s = session()
    s.receive(T.presence("a"), presence("a"), now=0.0)
    assert s.receive(T.records("a"), encode_frame(frame("a", 5, [1])), now=0.0) == []
    assert s.statistics().beyond_gap == 1
    assert s.statistics().dropped == {}
