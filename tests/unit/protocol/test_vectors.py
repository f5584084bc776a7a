"""The test vectors printed in docs/PROTOCOL.md §10: the document and the code must agree."""

from __future__ import annotations

import re
from pathlib import Path

from seedswarm.model.estimators import fzoo_gradients
from seedswarm.protocol import varint
from seedswarm.protocol.adapter import lora_a_init
from seedswarm.protocol.codec import decode_frame, encode_bundle, encode_frame, sign_frame
from seedswarm.protocol.log import content_digest
from seedswarm.protocol.manifest import AdapterSpec, Manifest
from seedswarm.protocol.messages import (
    Control,
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
from seedswarm.protocol.vv import digest, held_digest

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
# §10's vv: n0's records 5, -5, 0 and n1's 127, 1, 2, 3, 4, with their content digests (§8)
VV = Vv(
    "n0",
    RUN_ID,
    {"n0": 3, "n1": 5},
    {
        "n0": content_digest("n0", bytes([5, 0xFB, 0])),
        "n1": content_digest("n1", bytes([127, 1, 2, 3, 4])),
    },
)


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
    assert encode_vv(VV).hex() == _doc_hex_after(
        'vv {"n0": 3, "n1": 5} with those content digests, open:'
    )
    c0, c1 = VV.content["n0"], VV.content["n1"]
    assert c0.hex() == _doc_value("content digest (§8) of n0's records q = 5, −5, 0 ")
    assert c1.hex() == _doc_value("content digest of n1's records q = 127, 1, 2, 3, 4")
    held = held_digest({"n0": (3, c0), "n1": (5, c1)})
    assert held.hex() == _doc_value("held digest of those 3 + 5 records (presence `held`)")


def test_vv_digest_matches_the_document() -> None:
    assert digest({"n0": 3, "n1": 5}) == _doc_value('vv_digest({"n0": 3, "n1": 5})')


def test_grid_and_state_match_the_document() -> None:
    """§10's grid example: e_t, ε_t, du_t, the snapped state, a record, the weights, the
    fingerprint of a state and the rounding of huge states, from protocol/grid.py and the
    engine's hash."""
    import torch

    from seedswarm.model.hashing import STATE_DOMAIN, hash_tensors
    from seedswarm.protocol import grid

    text = " ".join(DOC.read_text().split())
    theta = [float(torch.tensor(v, dtype=torch.float32)) for v in (0.7, -0.1, 0.0, 0.25)]
    e = grid.grid_exponent(max(abs(v) for v in theta), headroom_exp=3, grid_min_exp=-28)
    eps = grid.eps_steps(1e-3, e)
    shift = -15 - e
    du = grid.update_steps(35, shift)
    assert (
        f"e_t = {e}, ε_t = {eps}, du_t(35) = {du}, du_t(-127) = {grid.update_steps(-127, shift)}"
        in text
    )
    halves = [grid.update_steps(q, -4) for q in (35, 40, 24, -40)]
    assert "du(35) = {}, du(40) = {}, du(24) = {}, du(-40) = {}".format(*halves) in text
    n0 = [grid.snap_steps(v, e) for v in theta]
    assert "n0 = " + ", ".join(map(str, n0)) in text
    z = signs(derive_seed(RUN_ID, "n0", 7), 0, 4)
    assert "(z of tensor 0 = " + "".join("+" if v > 0 else "-" for v in z) + ")" in text
    n1 = [grid.wrap(a - du * int(b)) for a, b in zip(n0, z, strict=True)]
    assert "n = " + ", ".join(map(str, n1)) in text
    ws = [re.sub(r"\.?0+p", "p", float.hex(grid.weight(v, e))) for v in n1]
    assert "w = " + ", ".join(ws) in text
    fp = hash_tensors(
        STATE_DOMAIN, [("w", torch.tensor(n1, dtype=torch.int64))], bytes([0x11]) * 32, torch.int64
    )
    assert fp in text
    top = max(abs(v) for v in n1)
    bits = grid.headroom_bits(top, eps)
    assert f"bits = {bits:.4f}…, records = {grid.records_left(top, eps, shift)}" in text
    assert grid.fp32_of_int(2**24 + 1) == 2.0**24
    assert grid.fp32_of_int(2**24 + 3) == 2.0**24 + 4
    assert grid.fp32_of_int(2**62 + 2**38 + 1) == 2.0**62 + 2**39
    assert float(2**62 + 2**38 + 1) == 2.0**62 + 2**38  # binary64 first: a tie...
    assert "fp32(2^62 + 2^38 + 1) = 2^62 + 2^39" in text
    assert grid.wrap(2**63 - 1 + 1) == -(2**63)


# == vectors added with the spec's silent points (issue 24) =========================================

KEY_2 = NodeKey.from_hex("00" * 31 + "02")


def _doc_hex_block(label: str) -> str:
    """The hex lines after ``label`` (blank lines before them skipped), joined."""
    text = DOC.read_text()
    lines = text[text.index(label) + len(label) :].splitlines()[1:]
    while lines and not lines[0].strip():
        lines.pop(0)
    out = []
    for line in lines:
        token = line.strip()
        if not re.fullmatch(r"[0-9a-f]+", token):
            break
        out.append(token)
    assert out, f"no hex after {label!r}"
    return "".join(out)


def _signs(values: object) -> str:
    return "".join("+" if v > 0 else "-" for v in values)  # type: ignore[attr-defined]


def test_spsa_gradient_and_a_whole_low_rank_z_match_the_document() -> None:
    import math

    from seedswarm.model.estimators import spsa_gradient

    text = " ".join(DOC.read_text().split())
    seed = derive_seed(RUN_ID, "n0", 7)
    g = spsa_gradient(0.6940, 0.6925, 1e-3)
    assert f"ε = 1e-3 → g = {g.hex()}" in text
    x = 1e-3 * g * 2.0**12
    q = quantize_gradient(g, lr=1e-3, unit_exp=-12, seed=seed)
    assert f"(x = {str(x)[:6]}…): q = {q}" in text
    nan = spsa_gradient(float("inf"), 0.5, 1e-3)
    assert math.isnan(nan)
    assert quantize_gradient(nan, lr=1e-3, unit_exp=-12, seed=seed) == 0
    assert "L+ = inf, L− = 0.5 → g = NaN, q = 0" in text
    a, b = lowrank_factors(seed, 0, 3, 5)
    assert f"(a = {_signs(a)}, b = {_signs(b)}):" in text
    rows = [_signs(a[i] * b) for i in range(3)]
    # the whole matrix, row-major: entry (i, j) is element i*5 + j of z (§4)
    assert " ".join(rows) in text.split("(a = ++-, b = +-+-+):")[1][:20]
    flat = [int(a[e // 5]) * int(b[e % 5]) for e in range(15)]
    assert _signs(flat) == "".join(rows)


def test_grid_exponent_snapping_and_eps_ties_match_the_document() -> None:
    import math

    from seedswarm.protocol import grid

    text = " ".join(DOC.read_text().split())

    def e(m: float) -> int:
        return grid.grid_exponent(m, headroom_exp=3, grid_min_exp=-28)

    assert (
        f"e_t when max|θ0_t| is 0: {e(0.0)}, 0.5: {e(0.5)}, 1.0: {e(1.0)}, "
        f"2^-40: {e(2.0**-40)}" in text
    )
    snaps = [grid.snap_steps(math.ldexp(f, -21), -21) for f in (2.5, 3.5, -2.5, -0.5)]
    assert (
        "θ0 = 2.5·2^e_t → n0 = {}, 3.5·2^e_t → {}, -2.5·2^e_t → {}, -0.5·2^e_t → {}".format(*snaps)
        in text
    )
    assert snaps == [2, 4, -2, 0]  # half to even, and -0.5 rounds to zero
    eps = [grid.eps_steps(math.ldexp(f, -21), -21) for f in (2.5, 3.5, 0.25)]
    assert "ε = 2.5·2^e_t → {}, 3.5·2^e_t → {}, 0.25·2^e_t → {}".format(*eps) in text


def test_tensor_bytes_base_hash_and_fingerprint_match_the_document() -> None:
    """§8 written out for a base of two parameters, by struct and hashlib (the document's
    definition) and by the engine's hash (the code)."""
    import hashlib
    import struct

    import torch

    from seedswarm.model.hashing import BASE_DOMAIN, STATE_DOMAIN, hash_tensors
    from seedswarm.protocol import grid

    def tensor_bytes(name: str, shape: tuple[int, ...], values: list[float] | list[int]) -> bytes:
        raw = name.encode()
        fmt = "q" if isinstance(values[0], int) else "f"
        return (
            struct.pack("<H", len(raw))
            + raw
            + struct.pack(f"<B{len(shape)}Q", len(shape), *shape)
            + struct.pack(f"<{len(values)}{fmt}", *values)
        )

    text = " ".join(DOC.read_text().split())
    n0 = [1468006, -209715, 0, 524288]
    w = [grid.weight(n, -21) for n in n0]
    ws = ", ".join(re.sub(r"\.?0+p", "p", float.hex(v)) for v in w)
    assert f"snapped: fp32(n0)·2^-21 = {ws}" in text
    emb = tensor_bytes("emb", (1, 2), [1.0, -2.0])
    wb = tensor_bytes("w", (4,), w)
    assert f'tensor_bytes("emb") = {emb.hex()}' in text
    assert f'tensor_bytes("w") = {wb.hex()}' in text
    base = hashlib.sha256(b"seedswarm/base/v1" + emb + wb).hexdigest()
    params = [("emb", torch.tensor([[1.0, -2.0]])), ("w", torch.tensor(w, dtype=torch.float32))]
    assert hash_tensors(BASE_DOMAIN, params) == base
    assert f"base_hash = {base}" in text
    state = tensor_bytes("w", (4,), n0)
    assert _doc_hex_block('state_bytes("w", n0):') == state.hex()
    fp = hashlib.sha256(b"seedswarm/state/v1" + bytes.fromhex(base) + state).hexdigest()
    named = [("w", torch.tensor(n0, dtype=torch.int64))]
    assert hash_tensors(STATE_DOMAIN, named, bytes.fromhex(base), torch.int64) == fp
    assert _doc_hex_block("fingerprint of its base state (n0), under that base_hash:") == fp


def test_signed_control_messages_match_the_document() -> None:
    keys = {"n0": KEY.public_bytes(), "n1": KEY_2.public_bytes()}
    assert KEY_2.public_hex().startswith("7422b988")
    assert KEY_2.public_hex().endswith("00fe2674")
    cases: list[tuple[str, bytes, Control, str]] = [
        (
            "the want above, signed by its sender n1",
            encode_want(Want("n1", RUN_ID, "n0", 3, 5), KEY_2),
            Want("n1", RUN_ID, "n0", 3, 5),
            "n1",
        ),
        (
            "the vv request above, signed by its sender n1",
            encode_vv_request(VvRequest("n1", RUN_ID), KEY_2),
            VvRequest("n1", RUN_ID),
            "n1",
        ),
        (
            "the vv above, signed by its sender n0",
            encode_vv(VV, KEY),
            VV,
            "n0",
        ),
    ]
    for label, encoded, msg, sender in cases:
        assert encoded.hex() == _doc_hex_block(label), label
        assert decode_control(encoded, sender=sender, run_id=RUN_ID, keys=keys) == msg


def test_signed_and_relay_bundles_match_the_document() -> None:
    from seedswarm.protocol.codec import decode_bundle

    f0 = Frame(RUN_ID, "n0", 7, 42, bytes([5, 0xFB, 0]))
    f1 = Frame(RUN_ID, "n1", 0, 1, bytes([127]))
    signed = encode_bundle(
        [("n0", encode_frame(sign_frame(f0, KEY))), ("n1", encode_frame(sign_frame(f1, KEY_2)))]
    )
    assert signed.hex() == _doc_hex_block("signed by n1 with the private key 00…02:")
    presence = Presence(
        "n0", RUN_ID, True, own=10, held_digest=bytes.fromhex("f05c5d4c223b71a1"),
        held_total=12, steps=10, loss=2.5, http="http://h:1",
    )  # fmt: skip
    relay = encode_bundle([("n0", encode_frame(f0)), ("n0", encode_presence(presence))])
    assert relay.hex() == _doc_hex_block("above, in that order:")
    (n_a, frame_bytes), (n_b, presence_bytes) = decode_bundle(relay)
    assert decode_frame(frame_bytes, run_id=RUN_ID, node=n_a, keys=None) == f0
    assert decode_control(presence_bytes, sender=n_b, run_id=RUN_ID, keys=None) == presence


def _doc_manifests() -> tuple[Manifest, Manifest]:
    import json

    from seedswarm.protocol.manifest import Manifest

    text = DOC.read_text()
    label = "a manifest (manifest.json, as a node writes it):"
    after = text[text.index(label) + len(label) :]
    data, _ = json.JSONDecoder().raw_decode(after[after.index("{") :])
    full = Manifest.from_dict(data)
    open_ = full.replace(
        keys=(), trainable="", task=full.task.__class__("causal_lm", 64),
        estimator="spsa", directions=1, direction="dense",
    )  # fmt: skip
    return full, open_


def test_a_manifest_its_canonical_msgpack_and_its_run_id_match_the_document() -> None:
    full, open_ = _doc_manifests()
    assert full.canonical_bytes().hex() == _doc_hex_block(
        "the payload retained on manifest/<run id>:"
    )
    assert f"({len(full.canonical_bytes())} bytes)" in DOC.read_text()
    assert full.run_id().hex() == _doc_value("run_id of that manifest")
    assert open_.run_id().hex() == _doc_value("run_id of the open manifest")
    # the JSON as printed is what a node writes (indented by 6 spaces in the document)
    text = DOC.read_text()
    printed = "\n".join("      " + line for line in full.to_json().rstrip("\n").split("\n"))
    assert printed in text


def test_a_log_export_matches_the_document() -> None:
    from seedswarm.protocol.logfile import encode_log, read_log

    _, open_ = _doc_manifests()
    run = open_.run_id()
    n0 = Frame(run, "n0", 0, 1, bytes([5, 0xFB, 0]))
    n1 = Frame(run, "n1", 0, 2, bytes([127]))
    data = encode_log(open_, [("n0", encode_frame(n0), False), ("n1", encode_frame(n1), True)])
    assert data.hex() == _doc_hex_block("provisional (297 bytes):")
    assert len(data) == 297
    got = read_log([data], run_id=run)
    assert got.manifest == open_
    assert got.log.held() == {"n0": 3, "n1": 1}
    assert got.log.provisional("n1") == 1


def test_adapter_manifest_and_initial_values_match_the_document() -> None:
    import json

    text = DOC.read_text()
    line = next(t.strip() for t in text.splitlines() if t.strip().startswith('{"adapter"'))
    m = Manifest.from_json(line)
    assert m.adapter == AdapterSpec(kind="lora", rank=4, alpha=8.0, targets=("c_attn",))
    assert m.task.kind == "completion"
    assert json.loads(line) == m.to_dict()
    assert f"has run id `{m.run_id().hex()}`" in " ".join(text.split())
    for index in (0, 2):
        label = f"LoRA A, init_seed 7, tensor {index}, in 64, elements 0..3"
        start = text.index(label) + len(label)
        values = text[start:].split("\n", 1)[0].lstrip(" =").split(", ")
        want = lora_a_init(7, index, 4, 64).reshape(-1)[:4]
        assert [float.fromhex(v) for v in values] == [float(x) for x in want]


def test_the_rate_schedule_matches_the_document() -> None:
    from seedswarm.protocol.schedule import lr_at

    text = " ".join(DOC.read_text().split())
    a, b = lr_at(1e-2, "decay", 10_000, 2500), lr_at(1e-2, "decay", 10_000, 7777)
    assert f"r = 2500 → lr_t = {a.hex()}, r = 7777 → lr_t = {b.hex()}" in text
    assert lr_at(1e-2, "decay", 10_000, 10_000) == lr_at(1e-2, "decay", 10_000, 10**9) == 0.0
