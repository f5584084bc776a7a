"""The test vectors printed in docs/PROTOCOL.md §10: the document and the code must agree."""

from __future__ import annotations

import re
from pathlib import Path

from seedswarm.protocol.codec import encode_frame, sign_frame
from seedswarm.protocol.philox import signs, stream_word
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


def test_frames_match_the_document() -> None:
    frame = Frame(RUN_ID, "n0", 7, 42, bytes([5, 0xFB, 0]))
    assert encode_frame(frame).hex() == _doc_hex_after(
        "(n0, first_seq 7, clock 42, q = 5, −5, 0), open:"
    )
    key = NodeKey.from_hex("00" * 31 + "01")
    assert key.public_hex().startswith("4cb5abf6")
    assert key.public_hex().endswith("f0a5ba29")
    signed = encode_frame(sign_frame(frame, key)).hex()
    assert signed == _doc_hex_after("(public 4cb5abf6…f0a5ba29):")


def test_vv_digest_matches_the_document() -> None:
    assert digest({"n0": 3, "n1": 5}) == _doc_value('vv_digest({"n0": 3, "n1": 5})')
