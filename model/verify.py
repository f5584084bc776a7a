"""Provenance anyone can check: are an export's weights exactly what the base and the log make?

An export (export.py) says in ``seedswarm.json`` which run it is of, which records its weights
hold (a version vector) and the fingerprint of that state. A checker opens the run from the
manifest in that file (loading the base and checking its hash), replays the log up to that
version vector -- records are one byte each, applied in any order with the same result -- and
hands the engine to ``verify_export``, which compares every tensor of the export's weight files
with the engine's, bit for bit:

  * trained tensors must be the replay's weights, fp32(n) * 2^e_t of its state (§5);
  * frozen tensors must be the base's (an adapter's base, in ``base/``, is checked too);
  * every tensor of the model must be in the export, and nothing else may be;
  * the export's claims must hold: its run id, and the fingerprint (and version vector) it
    names are the replay's.

The first tensor (in name order) that differs is named, with how many of its elements differ.
Tensors are compared as the files hold them, which is what the Hugging Face loaders load.

    info = provenance.read(directory)                 # manifest, vv, fingerprint, kind
    engine = Engine.open(info.manifest)               # base checked against its hash
    replica.catch_up(log)  (up to info.vv)            # the daemon's part
    verdict = verify_export(directory, engine, vv=replica.vv)
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from seedswarm.protocol import vv as vvs

from . import provenance
from .adapters import ADAPTER_FILE, PEFT_PREFIX
from .engine import Engine
from .errors import ModelError
from .export import BASE_DIR, ST_DENSE, base_state

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether an export is exactly what the log makes; if not, the first reason why."""

    ok: bool
    kind: str
    tensors: int  # tensors compared bit for bit
    mismatch: str | None  # the first tensor that differs (by the export's name), if one does
    reason: str  # one line for people
    fingerprint: str  # the replayed state's
    claimed_fingerprint: str  # what the export says


def verify_export(path: Path, engine: Engine, *, vv: Mapping[str, int] | None = None) -> Verdict:
    """Compare the export in ``path`` with ``engine`` (replayed from the base and the log);
    ``vv``: what the engine holds, checked against the export's version vector."""
    info = provenance.read(path)
    fingerprint = engine.fingerprint()

    def verdict(ok: bool, tensors: int, mismatch: str | None, reason: str) -> Verdict:
        return Verdict(ok, info.kind, tensors, mismatch, reason, fingerprint, info.fingerprint)

    run = engine.manifest.run_id().hex()
    if info.manifest.run_id().hex() != run:
        return verdict(
            False,
            0,
            None,
            f"the export is of run {info.manifest.run_id().hex()}, the replay of run {run}",
        )
    if vv is not None and vvs.digest(vv) != info.vv_digest:
        return verdict(
            False,
            0,
            None,
            f"the export holds the records of version vector {info.vv_digest}, the replay "
            f"those of {vvs.digest(vv)}: replay the log up to the export's version vector",
        )
    count = 0
    for name, got, want in _pairs(path, info.kind, engine):
        problem = _compare(got, want)
        if problem:
            return verdict(False, count, name, f"tensor {name} {problem}")
        count += 1
    if info.fingerprint != fingerprint:
        return verdict(
            False,
            count,
            None,
            f"the weights match, but the export claims fingerprint {info.fingerprint[:16]}… "
            f"and the replay's state is {fingerprint[:16]}…",
        )
    return verdict(
        True,
        count,
        None,
        f"exactly what the log makes: {count} tensors equal bit for bit, "
        f"{info.records} records, fingerprint {fingerprint[:16]}…",
    )


# -- what is compared with what ----------------------------------------------------------------

_Pair = tuple[str, torch.Tensor | None, torch.Tensor | None]


def _pairs(path: Path, kind: str, engine: Engine) -> Iterator[_Pair]:
    """(name, the export's tensor, the replay's tensor) in name order; None where one side
    has no such tensor."""
    tm = engine.task_model
    if kind in ("causal_lm", "masked_lm", "sentence_transformers"):
        if tm.adapter is not None:
            raise ModelError(f"a {kind} export is not of an adapter run")
        yield from _model_pairs(path, "", base_state(engine), engine)
        if kind == "sentence_transformers" and tm.head is not None:
            head = {"linear.weight": tm.head.weight, "linear.bias": tm.head.bias}
            yield from _match(_read(path / ST_DENSE / WEIGHTS), head, f"{ST_DENSE}/")
    elif kind == "peft_adapter":
        if tm.adapter is None:
            raise ModelError("a PEFT adapter export is of an adapter run; this run has none")
        want = {PEFT_PREFIX + n: p for n, p in tm.adapter_weights()}
        yield from _match(_read(path / ADAPTER_FILE), want, "")
        if (path / BASE_DIR).is_dir():
            yield from _model_pairs(path / BASE_DIR, f"{BASE_DIR}/", base_state(engine), engine)
    elif kind == "base":
        yield from _model_pairs(path, "", base_state(engine), engine)
    else:
        raise ModelError(f"{path}: unknown export kind {kind!r}")


def _model_pairs(
    path: Path, prefix: str, state: Mapping[str, torch.Tensor], engine: Engine
) -> Iterator[_Pair]:
    """A transformers weight directory against the model's state dict, in name order: every
    file tensor must be the model's, and every parameter of the base must be in the file (a
    tied parameter under any one of its names)."""
    got = _read_dir(path)
    pairs: list[_Pair] = [(prefix + k, t, state.get(k)) for k, t in got.items()]
    stored = {_ptr(state[k]) for k in got if k in state}
    for name, p in engine.task_model.base_weights():
        if not name.startswith("head.") and _ptr(p) not in stored:
            pairs.append((prefix + name, None, p))
    yield from sorted(pairs, key=lambda pair: pair[0])


def _match(
    got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor], prefix: str
) -> Iterator[_Pair]:
    for key in sorted(got.keys() | want.keys()):
        yield prefix + key, got.get(key), want.get(key)


def _compare(got: torch.Tensor | None, want: torch.Tensor | None) -> str:
    """ "" when equal bit for bit, else what is wrong."""
    if got is None:
        return "is missing from the export"
    if want is None:
        return "is in the export but not in the model"
    want = want.detach().to("cpu")
    if got.shape != want.shape or got.dtype != want.dtype:
        return (
            f"is {tuple(got.shape)} {got.dtype} in the export, {tuple(want.shape)} "
            f"{want.dtype} in the replay"
        )
    a, b = _bits(got), _bits(want)
    differ = int((a != b).sum())
    if differ:
        return f"differs from the replay in {differ} of {got.numel()} elements"
    return ""


def _bits(t: torch.Tensor) -> torch.Tensor:
    """Raw bits, so that -0.0 and +0.0 (or two NaNs) are told apart."""
    t = t.contiguous()
    views = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
    return t.view(views[t.dtype]) if t.dtype in views else t


def _ptr(t: torch.Tensor) -> tuple[int, tuple[int, ...]]:
    return (t.data_ptr(), tuple(t.shape))


def _read_dir(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a transformers directory's safetensors weights (one file or shards)."""
    index = path / WEIGHTS_INDEX
    if index.is_file():
        try:
            files = sorted(
                set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            )
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise ModelError(f"{index} is not a readable weight index: {exc}") from exc
        out: dict[str, torch.Tensor] = {}
        for f in files:
            out.update(_read(path / f))
        return out
    return _read(path / WEIGHTS)


def _read(file: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except (OSError, SafetensorError) as exc:
        raise ModelError(f"cannot read the weights {file}: {exc}") from exc
