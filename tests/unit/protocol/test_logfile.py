"""The portable log (docs/PROTOCOL.md §11): an export round-trips in chunks of any size, every
fault of the file is a ProtocolError with the documented reason, and the log it denotes does
not depend on the order of its entries."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seedswarm.protocol import varint
from seedswarm.protocol.codec import decode_frame, encode_frame, sign_frame
from seedswarm.protocol.errors import ConflictError, DecodeError, ProtocolError, WrongRunError
from seedswarm.protocol.log import MAX_CLOCK_JUMP, OrderedLog
from seedswarm.protocol.logfile import (
    DIGEST_BYTES,
    MAGIC,
    LogEntry,
    LogReader,
    LogWriter,
    encode_log,
    read_log,
)
from seedswarm.protocol.manifest import Manifest, TaskSpec
from seedswarm.protocol.records import Frame

from .strategies import KEY_A, KEY_B

OPEN = Manifest(name="t", model="tiny", base_hash="0" * 64, task=TaskSpec(kind="causal_lm"))
SIGNED = OPEN.replace(keys=(("a", KEY_A.public_hex()), ("b", KEY_B.public_hex())))
KEYS = {"a": KEY_A, "b": KEY_B}


def frame(node: str, first: int, qs: list[int], clock: int = 1, m: Manifest = OPEN) -> Frame:
    f = Frame(m.run_id(), node, first, clock, bytes(q & 0xFF for q in qs))
    return sign_frame(f, KEYS[node]) if m.keys else f


def entry(f: Frame, provisional: bool = False) -> tuple[str, bytes, bool]:
    return (f.node, encode_frame(f), provisional)


def chunks(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    pos, i = 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)] if sizes else len(data)
        yield data[pos : pos + n]
        pos += n
        i += 1


def read_all(
    data: bytes, sizes: list[int] | None = None, *, run_id: bytes | None = None
) -> list[LogEntry]:
    reader = LogReader(run_id=run_id)
    out: list[LogEntry] = []
    for c in chunks(data, sizes or []):
        out += reader.feed(c)
    reader.close()
    assert reader.done
    return out


def reason(data: bytes, sizes: list[int] | None = None) -> str:
    with pytest.raises(ProtocolError) as info:
        read_all(data, sizes)
    return info.value.reason


SAMPLE = [
    entry(frame("a", 0, [1, 2, 3], clock=1)),
    entry(frame("a", 3, [-4], clock=2)),
    entry(frame("b", 0, [127, -127], clock=2), provisional=True),
]


# == round trips ====================================================================================


@st.composite
def logs(draw: st.DrawFn, m: Manifest = OPEN) -> list[tuple[str, bytes, bool]]:
    """Entries of a consistent log: per node, frames cutting a prefix, some repeated."""
    out = []
    for node in draw(st.lists(st.sampled_from(["a", "b"]), unique=True)):
        qs = draw(st.lists(st.integers(-127, 127), min_size=1, max_size=40))
        cuts = sorted(set(draw(st.lists(st.integers(1, len(qs)), max_size=5))) | {len(qs)})
        first, clock = 0, draw(st.integers(0, 5))
        for end in cuts:
            clock += draw(st.integers(0, 3))
            f = frame(node, first, qs[first:end], clock, m)
            prov = not m.keys and draw(st.booleans())
            out += [entry(f, prov)] * draw(st.integers(1, 2))
            first = end
    return out


@settings(max_examples=150, deadline=None)
@given(logs(), st.lists(st.integers(1, 50), max_size=6))
def test_an_open_export_round_trips_in_chunks_of_any_size(
    entries: list[tuple[str, bytes, bool]], sizes: list[int]
) -> None:
    data = encode_log(OPEN, entries)
    got = read_all(data, sizes)
    assert [(e.frame.node, e.body, e.provisional) for e in got] == entries


@settings(max_examples=40, deadline=None)
@given(logs(SIGNED), st.lists(st.integers(1, 200), max_size=3))
def test_a_signed_export_round_trips_and_its_frames_still_verify(
    entries: list[tuple[str, bytes, bool]], sizes: list[int]
) -> None:
    data = encode_log(SIGNED, entries)
    got = read_all(data, sizes, run_id=SIGNED.run_id())
    assert [(e.frame.node, e.body) for e in got] == [(n, b) for n, b, _ in entries]
    assert all(e.frame.signature is not None for e in got)


def test_one_byte_at_a_time() -> None:
    data = encode_log(OPEN, SAMPLE)
    assert read_all(data, [1]) == read_all(data)


def test_an_empty_log_is_a_manifest_and_an_end() -> None:
    data = encode_log(OPEN, [])
    got = read_log([data])
    assert got.manifest == OPEN
    assert got.log.held() == {}
    assert got.entries == 0
    assert (
        len(data)
        == len(MAGIC)
        + 1
        + len(varint.encode(len(OPEN.canonical_bytes())))
        + len(OPEN.canonical_bytes())
        + 1
        + DIGEST_BYTES
    )


def test_the_writer_keeps_to_the_format() -> None:
    w = LogWriter(OPEN)
    with pytest.raises(ValueError, match="after the header"):
        w.entry("a", encode_frame(frame("a", 0, [1])))
    w.header()
    with pytest.raises(ValueError, match="once"):
        w.header()
    with pytest.raises(ProtocolError):
        w.entry("a", b"\x02\x00\x00")  # not a frame: never written
    with pytest.raises(ProtocolError):
        w.entry("a/b", encode_frame(frame("a", 0, [1])))
    w.end()
    with pytest.raises(ValueError, match="once"):
        w.end()
    s = LogWriter(SIGNED)
    s.header()
    with pytest.raises(ValueError, match="provisional"):
        s.entry("a", encode_frame(frame("a", 0, [1], m=SIGNED)), provisional=True)
    with pytest.raises(ProtocolError):  # an unsigned frame in a signed run
        s.entry("a", encode_frame(frame("a", 0, [1])))


# == the log it denotes =============================================================================


def _reference(entries: list[tuple[str, bytes, bool]]) -> OrderedLog:
    """The frames offered per node in seq order: the log the set denotes."""
    log = OrderedLog()
    frames = [decode_frame(b, run_id=OPEN.run_id(), node=n, keys=None) for n, b, _ in entries]
    for f in sorted(frames, key=lambda f: (f.node, f.first_seq)):
        log.offer(f)
    return log


@settings(max_examples=150, deadline=None)
@given(logs(), st.randoms(use_true_random=False))
def test_any_order_of_the_entries_denotes_the_same_log(
    entries: list[tuple[str, bytes, bool]], rnd: random.Random
) -> None:
    want = _reference(entries)
    shuffled = list(entries)
    rnd.shuffle(shuffled)
    got = read_log([encode_log(OPEN, shuffled)])
    assert got.log.held() == want.held()
    assert list(got.log.ordered()) == list(want.ordered())
    assert got.beyond_gaps == 0


def test_entries_beyond_a_gap_are_not_part_of_the_log() -> None:
    data = encode_log(OPEN, [entry(frame("a", 0, [1])), entry(frame("a", 5, [2]))])
    got = read_log([data])
    assert got.log.held() == {"a": 1}
    assert got.beyond_gaps == 1
    assert got.entries == 2


def test_the_clock_jump_rule_is_for_live_input_not_for_a_log_read_back() -> None:
    far = 1 + 2 * MAX_CLOCK_JUMP
    data = encode_log(OPEN, [entry(frame("a", 0, [1], clock=1)), entry(frame("b", 0, [2], far))])
    assert read_log([data]).log.held() == {"a": 1, "b": 1}


@pytest.mark.parametrize("order", [0, 1])
def test_a_file_that_contradicts_itself_is_refused_in_any_order(order: int) -> None:
    pair = [entry(frame("a", 0, [1, 2])), entry(frame("a", 1, [3]))]
    with pytest.raises(ConflictError) as info:
        read_log([encode_log(OPEN, pair[order:] + pair[:order])])
    assert info.value.reason == "equivocation"
    regress = [entry(frame("a", 0, [1], clock=5)), entry(frame("a", 1, [2], clock=4))]
    with pytest.raises(ConflictError) as info:
        read_log([encode_log(OPEN, regress[order:] + regress[:order])])
    assert info.value.reason == "clock_regression"


def test_provisional_entries_are_provisional_in_the_log() -> None:
    got = read_log([encode_log(OPEN, SAMPLE)])
    assert got.log.held() == {"a": 4, "b": 2}
    assert got.log.provisional("b") == 2
    assert got.log.provisional("a") == 0


# == faults =========================================================================================


def _header(m: Manifest = OPEN) -> bytes:
    payload = m.canonical_bytes()
    return MAGIC + b"\x01" + varint.encode(len(payload)) + payload


def _with_end(body: bytes) -> bytes:
    return body + b"\x00" + hashlib.sha256(body + b"\x00").digest()


GOOD_FRAME = encode_frame(frame("a", 0, [1]))

FAULTS: list[tuple[str, bytes, str]] = [
    ("not an export", b"SQLite format 3\x00", "bad_version"),
    ("a text-mode copy", MAGIC.replace(b"\r\n", b"\n") + b"\x01", "bad_version"),
    ("format 2", MAGIC + b"\x02", "bad_version"),
    ("a manifest of 1 MiB + 1", MAGIC + b"\x01" + varint.encode((1 << 20) + 1), "oversized"),
    ("a manifest not in msgpack", _with_end(MAGIC + b"\x01\x01\xc1"), "malformed"),
    ("a manifest that is no map", _with_end(MAGIC + b"\x01\x01\x90"), "bad_type"),
    ("an entry of kind 3", _with_end(_header() + b"\x03\x01a\x01\x02"), "malformed"),
    ("a node id of 0 bytes", _with_end(_header() + b"\x01\x00"), "bad_range"),
    (
        "a node id of 33 bytes",
        _with_end(_header() + b"\x01\x21" + b"a" * 33 + b"\x00"),
        "bad_range",
    ),
    ("a node id with '/'", _with_end(_header() + b"\x01\x03a/b\x01\x02"), "bad_range"),
    ("a node id not UTF-8", _with_end(_header() + b"\x01\x01\xff\x01\x02"), "bad_range"),
    (
        "an entry of 4180 bytes",
        _with_end(_header() + b"\x01\x01a" + varint.encode(4180) + b"\x02" * 4180),
        "oversized",
    ),
    ("a length not in its shortest form", _with_end(_header() + b"\x01\x01a\x80\x00"), "malformed"),
    ("a frame with a bad version", _with_end(_header() + b"\x01\x01a\x01\x03"), "bad_version"),
    ("a frame without records", _with_end(_header() + b"\x01\x01a\x03\x02\x00\x00"), "truncated"),
    ("a record -128", _with_end(_header() + b"\x01\x01a\x04\x02\x00\x00\x80"), "bad_range"),
    (
        "a wrong digest",
        _header()
        + b"\x01\x01a"
        + varint.encode(len(GOOD_FRAME))
        + GOOD_FRAME
        + b"\x00"
        + bytes(32),
        "malformed",
    ),
    ("bytes after the end", encode_log(OPEN, SAMPLE) + b"\x00", "malformed"),
    ("no end", _header() + b"\x01\x01a" + varint.encode(len(GOOD_FRAME)) + GOOD_FRAME, "truncated"),
    ("an end cut short", encode_log(OPEN, SAMPLE)[:-1], "truncated"),
    ("nothing", b"", "truncated"),
]


@pytest.mark.parametrize(("data", "why"), [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_a_bad_file_gives_the_documented_reason(data: bytes, why: str) -> None:
    assert reason(data) == why
    assert reason(data, sizes=[1]) == why  # the same fault, however the bytes come


def test_signed_runs_check_every_frame_of_the_file() -> None:
    good = entry(frame("a", 0, [1, 2], m=SIGNED))
    body = bytearray(good[1])
    body[-1] ^= 1  # a byte of the signature
    forged = _with_end(_header(SIGNED) + b"\x01\x01a" + varint.encode(len(body)) + body)
    assert reason(forged) == "bad_signature"
    unsigned = encode_frame(frame("a", 0, [1]))
    data = _with_end(_header(SIGNED) + b"\x01\x01a" + varint.encode(len(unsigned)) + unsigned)
    assert reason(data) == "unsigned"
    prov = _with_end(_header(SIGNED) + b"\x02\x01a" + varint.encode(len(good[1])) + good[1])
    assert reason(prov) == "malformed"
    stranger = _with_end(_header(SIGNED) + b"\x01\x01c" + varint.encode(len(good[1])) + good[1])
    assert reason(stranger) == "unknown_signer"


def test_a_file_of_another_run() -> None:
    data = encode_log(OPEN, SAMPLE)
    with pytest.raises(WrongRunError) as info:
        read_all(data, run_id=SIGNED.run_id())
    assert info.value.run_id == OPEN.run_id()
    assert read_all(data, run_id=OPEN.run_id())


def test_errors_name_the_byte_where_the_file_goes_wrong() -> None:
    data = encode_log(OPEN, SAMPLE)
    at = len(_header())
    bad = data[:at] + b"\x07" + data[at + 1 :]
    with pytest.raises(DecodeError, match=f"log byte {at}:"):
        read_all(bad, [3])


def test_every_cut_of_an_export_is_truncated() -> None:
    data = encode_log(OPEN, SAMPLE)
    for n in range(len(data)):
        reader = LogReader()
        reader.feed(data[:n])  # a prefix is never a fault, only unfinished
        with pytest.raises(DecodeError) as info:
            reader.close()
        assert info.value.reason == "truncated"


def test_every_flipped_byte_is_found() -> None:
    data = encode_log(OPEN, SAMPLE)
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x40
        with pytest.raises(ProtocolError):
            read_log([bytes(bad)])


def test_a_reader_that_failed_stays_failed() -> None:
    reader = LogReader()
    with pytest.raises(DecodeError):
        reader.feed(b"nope")
    with pytest.raises(DecodeError):
        reader.feed(encode_log(OPEN, []))
    with pytest.raises(DecodeError):
        reader.close()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_after_a_good_header_are_entries_or_a_protocol_error(tail: bytes) -> None:
    reader = LogReader()
    try:
        reader.feed(_header() + tail)
        reader.close()
    except ProtocolError:
        return
    raise AssertionError("random bytes made a valid log (a 256-bit digest matched)")
