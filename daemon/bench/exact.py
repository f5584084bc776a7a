"""``seedswarm bench exact``: millions of records, two orders and two batchings, one state.

For each ``MODEL:RECORDS`` run, record value kind (realistic, worst) and direction (dense,
lowrank), two replicas of the same base apply the same synthetic log of ``RECORDS`` records
(eight authors, contiguous seqs, each record's direction from its own seed):

  A   in log order, in batches of 256
  B   in a seeded random permutation, in batches of 1 .. 512 records (seeded)

and the bench prints, every ``--exact-every`` records, A's headroom (the guaranteed bound and
the state's largest |n| measured, docs/PROTOCOL.md §5) and, at the end, both fingerprints and
whether every weight agrees bit for bit. Record values:

  realistic   q ~ round(N(0, 43.9)) clipped to +-127: mean |q| 35, as the log of a MiniLM run
              (FZOO K = 8, lr 1e-2, u = 2^-15) has them; or, with ``--exact-q-from DIR``, drawn
              from that data directory's own log
  worst       q = 127 for every record: every tensor moves one way as fast as the byte allows

With protocol 2's fp32 weights the state left its exact range once any element passed 2^24
grid steps; the bench reports the record count at which A's measured state first did
(``crossed_2_24``), and that A and B still agree far beyond it.

The records are not stored: a record's author, seq and seed follow from its index, so 10^7
records cost 80 MB of seeds and 10 MB of values. The cost is the kernels': about one pass
over the trainable weights per 256 records for each replica.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from seedswarm.daemon.console import table
from seedswarm.daemon.errors import ConfigError

from .settings import BenchSettings

AUTHORS = 8
BATCH_A = 256
MAX_BATCH_B = 512
SIGMA = 43.9  # round(N(0, 43.9)) clipped to 127: mean |q| = 35.0
# the first layer's attention query and value matrices, by architecture (GPT-2's fused c_attn,
# BERT, OPT): what a low-rank row trains beside a preset that trains no matrix
FIRST_LAYER_MATRICES = (
    r"h[.]0[.]attn[.]c_attn[.]weight|layer[.]0[.]attention[.]self[.](query|value)[.]weight"
    r"|layers[.]0[.]self_attn[.](q|v)_proj[.]weight"
)


def _task(model: str) -> Any:
    """The task a model is run with: sentence classification by label descriptions for an
    encoder (the scorer of the MiniLM/SST-2 runs), a causal LM for the rest."""
    from seedswarm.model.loading import detect_kind
    from seedswarm.protocol.manifest import TaskSpec

    if detect_kind(model) == "embed":
        return TaskSpec(
            kind="classify", seq_len=16, scorer="embed", labels=("negative", "positive"),
            label_words=("a negative review", "a positive review"), temperature=0.05,
        )  # fmt: skip
    return TaskSpec(kind="causal_lm", seq_len=16)


def _preset(model: str, direction: str, trainable: str) -> tuple[int, str]:
    """(unit_exp, trainable) of a row: the node's defaults for ``model`` (daemon/node/startup)."""
    from seedswarm.daemon.node.startup import FZOO, PRESETS
    from seedswarm.model.loading import TINY

    if model == TINY:
        unit, preset = int(PRESETS["tiny"]["unit_exp"]), ""  # tiny trains every weight
    else:
        unit, preset = int(FZOO["unit_exp"]), str(FZOO["trainable"])
    if trainable != "preset":
        return unit, trainable
    if direction == "lowrank" and preset:
        preset += "|" + FIRST_LAYER_MATRICES
    return unit, preset


@dataclass(frozen=True, slots=True)
class Checkpoint:
    records: int
    bound_bits: float
    bound_records: int  # worst-case records left, from the bound
    measured_bits: float
    max_steps: int  # the largest |n| of any element, measured
    coarse: int  # tensors whose |n| reached 2^24


@dataclass(frozen=True, slots=True)
class ExactRow:
    model: str
    trainable: str
    direction: str
    q: str
    records: int
    elements: int  # trainable
    mean_abs_q: float
    fingerprint_a: str
    fingerprint_b: str
    weights_equal: bool
    crossed_2_24: int | None  # first checkpoint at which some |n| reached 2^24
    checkpoints: tuple[Checkpoint, ...]
    seconds: float

    @property
    def agree(self) -> bool:
        return self.fingerprint_a == self.fingerprint_b and self.weights_equal


@dataclass(frozen=True, slots=True)
class ExactResult:
    rows: tuple[ExactRow, ...]

    @property
    def all_agree(self) -> bool:
        return all(r.agree for r in self.rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "all_agree": self.all_agree,
            "rows": [
                {
                    "model": r.model,
                    "trainable": r.trainable,
                    "direction": r.direction,
                    "q": r.q,
                    "records": r.records,
                    "elements": r.elements,
                    "mean_abs_q": r.mean_abs_q,
                    "fingerprint_a": r.fingerprint_a,
                    "fingerprint_b": r.fingerprint_b,
                    "weights_equal": r.weights_equal,
                    "agree": r.agree,
                    "crossed_2_24": r.crossed_2_24,
                    "seconds": r.seconds,
                    "checkpoints": [
                        {
                            "records": c.records,
                            "bound_bits": c.bound_bits,
                            "bound_records": c.bound_records,
                            "measured_bits": c.measured_bits,
                            "max_steps": c.max_steps,
                            "coarse": c.coarse,
                        }
                        for c in r.checkpoints
                    ],
                }
                for r in self.rows
            ],
        }


def _runs(text: str) -> list[tuple[str, int]]:
    out = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        model, sep, count = item.rpartition(":")
        if not sep or not model or not count.isdigit() or int(count) < 1:
            raise ConfigError(f"--exact-runs: {item!r} is not MODEL:RECORDS (e.g. tiny:1000000)")
        out.append((model, int(count)))
    if not out:
        raise ConfigError("--exact-runs: name at least one MODEL:RECORDS")
    return out


def _choices(text: str, flag: str, allowed: tuple[str, ...]) -> list[str]:
    got = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in got if x not in allowed]
    if bad or not got:
        raise ConfigError(f"--{flag}: one or more of {', '.join(allowed)}, separated by commas")
    return got


def _values(kind: str, n: int, source: npt.NDArray[np.int8] | None) -> npt.NDArray[np.int8]:
    rng = np.random.default_rng(20261206)
    if kind == "worst":
        return np.full(n, 127, dtype=np.int8)
    if source is not None and len(source):
        return rng.choice(source, size=n).astype(np.int8)
    return np.clip(np.rint(rng.normal(0.0, SIGMA, size=n)), -127, 127).astype(np.int8)


def _log_values(directory: str) -> npt.NDArray[np.int8]:
    """Every record value a data directory's log holds (the realistic rows draw from them)."""
    from pathlib import Path

    from seedswarm.daemon.store.datadir import DataDir

    _, log, _ = DataDir(Path(directory).expanduser()).load()
    values = [r.q for node, end in log.held().items() for r in log.records(node, 0, end)]
    if not values:
        raise ConfigError(f"--exact-q-from {directory}: its log holds no records")
    return np.array(values, dtype=np.int8)


def _seeds(engine: Any, n: int) -> npt.NDArray[np.uint64]:
    """The seed of record i: author ``i % 8``, seq ``i // 8`` (docs/PROTOCOL.md §3)."""
    from seedswarm.protocol.seeds import derive_seed

    rid = engine.run_id
    names = [f"n{a}" for a in range(AUTHORS)]
    return np.array(
        [derive_seed(rid, names[i % AUTHORS], i // AUTHORS) for i in range(n)], dtype=np.uint64
    )


def _apply(
    engine: Any, seeds: npt.NDArray[np.uint64], qs: npt.NDArray[np.int8], idx: npt.NDArray[np.int64]
) -> None:
    """Records ``idx`` as one batch: (seed, 0, q) terms of Engine.accumulate."""
    s = seeds[idx].tolist()
    q = qs[idx].tolist()
    engine.accumulate([(a, 0, b) for a, b in zip(s, q, strict=True) if b])


def _checkpoint(engine: Any, records: int) -> Checkpoint:
    bound = engine.headroom()
    measured = engine.headroom(measure=True)
    return Checkpoint(
        records, bound.bits, bound.records, measured.bits, measured.max_steps, measured.coarse
    )


def _row(
    s: BenchSettings, model: str, records: int, direction: str, q_kind: str,
    source: npt.NDArray[np.int8] | None,
) -> ExactRow:  # fmt: skip
    from seedswarm.daemon.node.startup import resolve_device
    from seedswarm.model.engine import Engine
    from seedswarm.model.hyper import Hyper

    unit_exp, trainable = _preset(model, direction, s.exact_trainable)
    hyper = Hyper(unit_exp=unit_exp, trainable=trainable, direction=direction)
    device = resolve_device(s.device)
    task = _task(model)
    a = Engine.build("exact", model, task, hyper, device=device, kernel=s.kernel)
    b = Engine.open(a.manifest, device=device, kernel=s.kernel)
    t0 = time.monotonic()
    seeds = _seeds(a, records)
    qs = _values(q_kind, records, source)
    every = s.exact_every
    checkpoints = [_checkpoint(a, 0)]
    label = f"{model} {direction} {q_kind}"
    for lo in range(0, records, BATCH_A):  # A: log order, batches of 256
        hi = min(lo + BATCH_A, records)
        _apply(a, seeds, qs, np.arange(lo, hi))
        if hi // every > lo // every or hi == records:
            c = _checkpoint(a, hi)
            checkpoints.append(c)
            print(
                f"  {label}: A at {hi:,} records: headroom {c.bound_bits:.1f} bits bound "
                f"({c.bound_records:.2e} worst-case records left), {c.measured_bits:.1f} "
                f"measured, max |n| 2^{math.log2(max(c.max_steps, 1)):.1f}",
                file=sys.stderr, flush=True,
            )  # fmt: skip
    rng = np.random.default_rng(7)
    order = rng.permutation(records)
    at = 0
    while at < records:  # B: a permutation, batches of 1 .. 512
        size = int(rng.integers(1, MAX_BATCH_B + 1))
        _apply(b, seeds, qs, order[at : at + size])
        at += size
    weights_equal = all(  # bit for bit: -0.0 and 0.0, or two NaNs, would be told apart
        torch.equal(pa.detach().view(torch.int32), pb.detach().view(torch.int32))
        for (_, pa), (_, pb) in zip(a.trainable, b.trainable, strict=True)
    )
    crossed = next((c.records for c in checkpoints if c.coarse), None)
    fp_a, fp_b = a.fingerprint(), b.fingerprint()
    print(  # each row's verdict as it comes: a long run is worth something if cut short
        f"  {label}: B (a permutation, batches of 1..{MAX_BATCH_B}) done: fingerprints "
        f"{fp_a[:16]} / {fp_b[:16]}, weights {'equal' if weights_equal else 'DIFFERENT'} "
        f"bit for bit",
        file=sys.stderr, flush=True,
    )  # fmt: skip
    return ExactRow(
        model=model,
        trainable=trainable,
        direction=direction,
        q=q_kind,
        records=records,
        elements=a.numel,
        mean_abs_q=float(np.abs(qs.astype(np.int64)).mean()),
        fingerprint_a=fp_a,
        fingerprint_b=fp_b,
        weights_equal=weights_equal,
        crossed_2_24=crossed,
        checkpoints=tuple(checkpoints),
        seconds=time.monotonic() - t0,
    )


def bench_exact(s: BenchSettings) -> ExactResult:
    runs = _runs(s.exact_runs)
    q_kinds = _choices(s.exact_q, "exact-q", ("realistic", "worst"))
    directions = _choices(s.exact_direction, "exact-direction", ("dense", "lowrank"))
    source = _log_values(s.exact_q_from) if s.exact_q_from else None
    rows = [
        _row(s, model, records, direction, q, source)
        for model, records in runs
        for direction in directions
        for q in q_kinds
    ]
    return ExactResult(tuple(rows))


def print_exact(r: ExactResult) -> str:
    headers = [
        "model", "direction", "q", "records", "trainable", "mean|q|", "max |n| (end)",
        "crossed 2^24 by", "headroom bits", "worst-case records left", "A = B",
    ]  # fmt: skip
    rows = []
    for row in r.rows:
        end = row.checkpoints[-1]
        crossed = "-" if row.crossed_2_24 is None else f"{row.crossed_2_24:,}"
        rows.append(
            [
                row.model, row.direction, row.q, f"{row.records:,}", f"{row.elements:,}",
                f"{row.mean_abs_q:.1f}", f"2^{math.log2(max(end.max_steps, 1)):.1f}", crossed,
                f"{end.measured_bits:.1f}", f"{end.bound_records:.2e}",
                "yes" if row.agree else "NO",
            ]
        )  # fmt: skip
    lines = [
        table(headers, rows),
        (
            "A: log order, batches of 256; B: a random permutation, batches of 1..512; A = B: "
            "the same fingerprint (of the int64 state) and the same bits in every weight"
        ),
    ]
    lines += [
        f"  {row.model} {row.direction} {row.q}: {row.fingerprint_a[:16]} / "
        f"{row.fingerprint_b[:16]} in {row.seconds:.0f} s"
        for row in r.rows
    ]
    lines.append("every row agrees" if r.all_agree else "SOME ROWS DISAGREE")
    return "\n".join(lines)
