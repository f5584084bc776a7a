"""The test vectors printed in docs/PROTOCOL.md §10: the document and the code must agree."""

from __future__ import annotations

import re
from pathlib import Path

from seedswarm.model.estimators import fzoo_gradients
from seedswarm.protocol import varint
from seedswarm.protocol.codec import decode_frame, encode_bundle, encode_frame, sign_frame
from seedswarm.protocol.messages import (
    Presence,
    Vv,
    VvRequest,
    Want,
    decode_control,
    encode_presence,
    encode_vv,
    encode_vv_request,
    encode_want,
)
from seedswarm.protocol.philox import lowrank_factors, signs, stream_word
from seedswarm.protocol.quantize import quantize_gradient
from seedswarm.protocol.records import Frame
from seedswarm.protocol.seeds import derive_seed
from seedswarm.protocol.signing import NodeKey
from seedswarm.protocol.vv import digest

DOC = Path(__file__).resolve().parents[3] / "docs" / "PROTOCOL.md"
RUN_ID = bytes.fromhex("0123456789abcdef")


def _doc_value(label: str) -> str:
    text = DOC.read_text()
    m = re.search(re.escape(label) + r"\s*=\s*(\S+)", text)
    assert m is not None, f"{label} not in {DOC}"
    return m.group(1)


def _doc_hex_after(label: str) -> str:
    """A hex block that follows ``label`` in the document, joined across lines."""
    text = DOC.read_text()
    start = text.index(label) + len(label)
    out = []
    for line in text[start:].splitlines()[1:]:
        token = line.strip()
        if not re.fullmatch(r"[0-9a-f]+", token):
            break
        out.append(token)
    return "".join(out)


def test_seed_signs_and_quantiser_match_the_document() -> None:
    seed = derive_seed(RUN_ID, "n0", 7)
    assert hex(seed) == _doc_value('seed(run_id, "n0", 7)')
    z = "".join("+" if v > 0 else "-" for v in signs(seed, 3, 40))
    assert z == _doc_value("signs of tensor 3, elements 0..39")
    assert str(stream_word(seed, 1)) == _doc_value("quantiser word")
    assert quantize_gradient(2.5, lr=1e-3, unit_exp=-12, seed=seed) == 10
    a, b = lowrank_factors(seed, 3, 40, 40)
    assert "".join("+" if v > 0 else "-" for v in a) == _doc_value(
        "low-rank a of tensor 3, rows 0..39"
    )
    assert "".join("+" if v > 0 else "-" for v in b) == _doc_value(
        "low-rank b of tensor 3, columns 0..39"
    )


def test_fzoo_step_matches_the_document() -> None:
    text = DOC.read_text()
    seeds = [derive_seed(RUN_ID, "n0", seq) for seq in range(7, 11)]
    assert ", ".join(hex(x) for x in seeds) in " ".join(text.split())
    g = fzoo_gradients(0.6931471805599453, (0.6940, 0.6925, 0.6933, 0.6921))
    assert "g = " + ", ".join(x.hex() for x in g) in text
    q = [quantize_gradient(x, lr=1e-3, unit_exp=-17, seed=s) for x, s in zip(g, seeds, strict=True)]
    assert "q = " + ", ".join(str(v) for v in q) in text
    flat = fzoo_gradients(0.5, (0.7, 0.7, 0.7))
    assert [quantize_gradient(x, lr=1e-3, unit_exp=-17, seed=1) for x in flat] == [0, 0, 0]
    assert "l = (0.7, 0.7, 0.7)   → q = 0, 0, 0" in text


KEY = NodeKey.from_hex("00" * 31 + "01")


def test_frames_and_bundles_match_the_document() -> None:
    frame = Frame(RUN_ID, "n0", 7, 42, bytes([5, 0xFB, 0]))
    assert encode_frame(frame).hex() == _doc_hex_after(
        "(n0, first_seq 7, clock 42, q = 5, −5, 0), open:"
    )
    assert KEY.public_hex().startswith("4cb5abf6")
    assert KEY.public_hex().endswith("f0a5ba29")
    signed = encode_frame(sign_frame(frame, KEY)).hex()
    assert signed == _doc_hex_after("(public 4cb5abf6…f0a5ba29):")
    keys = {"n0": KEY.public_bytes()}
    assert decode_frame(bytes.fromhex(signed), run_id=RUN_ID, node="n0", keys=keys) == sign_frame(
        frame, KEY
    )
    big = Frame(RUN_ID, "n0", 300, 70000, bytes([1]))
    assert encode_frame(big).hex() == _doc_hex_after(
        "(n0, first_seq 300, clock 70000, q = 1), open:"
    )
    assert varint.encode(300).hex() == _doc_value("varint(300)")
    other = Frame(RUN_ID, "n1", 0, 1, bytes([127]))
    b = encode_bundle([("n0", encode_frame(frame)), ("n1", encode_frame(other))])
    assert b.hex() == _doc_hex_after("(n1, first_seq 0, clock 1, q = 127):")


def test_control_messages_match_the_document() -> None:
    p = Presence(
        "n0",
        RUN_ID,
        True,
        own=10,
        held_digest=bytes.fromhex("f05c5d4c223b71a1"),
        held_total=12,
        steps=10,
        loss=2.5,
        http="http://h:1",
    )
    assert encode_presence(p).hex() == _doc_hex_after("no snapshot, not a relay), open:")
    signed = _doc_hex_after("the same presence signed by n0 with the private key 00…01:")
    assert encode_presence(p, KEY).hex() == signed
    keys = {"n0": KEY.public_bytes()}
    got = decode_control(bytes.fromhex(signed), sender="n0", run_id=RUN_ID, keys=keys)
    assert got == p
    want = Want("n1", RUN_ID, "n0", 3, 5)
    assert encode_want(want).hex() == _doc_hex_after("want of 5 records of n0 from seq 3, open:")
    assert encode_vv_request(VvRequest("n1", RUN_ID)).hex() == _doc_hex_after("vv request, open:")
    assert encode_vv(Vv("n0", RUN_ID, {"n0": 3, "n1": 5})).hex() == _doc_hex_after(
        'vv {"n0": 3, "n1": 5}, open:'
    )


def test_vv_digest_matches_the_document() -> None:
    assert digest({"n0": 3, "n1": 5}) == _doc_value('vv_digest({"n0": 3, "n1": 5})')
