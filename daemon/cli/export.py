"""``seedswarm export RUN --out DIR``: take the fine-tuned model home.

RUN is a run's data directory (a node's, or ``train --out``). The command builds the engine
from the run's manifest and base (the base checked against the manifest's hash), replays the
whole log, and writes every kind of directory that applies to what the run trained
(model/export.py): a transformers model, a sentence-transformers model, or a PEFT adapter (with
its frozen base when the base is not on the Hugging Face hub). Each comes with a model card and
``seedswarm.json``, the provenance ``seedswarm verify`` checks.

The eval figures on the card are those of ``--eval FILE`` (evaluated on the exported weights),
else the run's last in-node evaluation if it was taken at exactly these weights (the same
version vector), else none: a card never shows figures of other weights.

The settings are light (no torch): the command line and its one-line errors stay quick.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seedswarm.daemon.errors import ConfigError
from seedswarm.daemon.options import KERNELS, non_negative, positive
from seedswarm.daemon.settings import check_device, setting


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportSettings:
    run: str = ""  # positional: the run's data directory
    out: str = setting("", "directory to write the export into: new or empty (required)")
    model: str = setting(
        "",
        "load the base from here instead of the manifest's reference (needed when the base was "
        "a local directory: the manifest keeps only its name)",
    )
    include_base: str = setting(
        "auto",
        "adapter runs: also write the frozen base into OUT/base: auto (when the base is not on "
        "the Hugging Face hub), yes or no",
        choices=("auto", "yes", "no"),
    )
    eval: str = setting(
        "",
        "held-out data to evaluate the exported weights on, for the model card (default: the "
        "run's last in-node evaluation, if it was of these weights)",
    )
    eval_limit: int = setting(
        0, "evaluate on the first N examples only (0: all)", check=non_negative
    )
    batch_size: int = setting(64, "examples per forward pass (--eval)", check=positive)
    batch: int = setting(256, "records applied per pass over the weights", check=positive)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    kernel: str = setting("auto", "sign/apply kernel: " + ", ".join(KERNELS), choices=KERNELS)
    json: bool = setting(False, "print one JSON object instead of text")

    def __post_init__(self) -> None:
        check_device(self.device)
        if not self.out:
            raise ConfigError("export needs --out DIR (a new or empty directory to write into)")


def export_run(s: ExportSettings) -> int:
    from seedswarm.daemon.console import emit_json, say
    from seedswarm.daemon.node.startup import resolve_device
    from seedswarm.model.export import export
    from seedswarm.protocol.vv import digest

    from .runs import held_upto, open_base, open_log, replay

    # absolute: an adapter's config and the cards name the base and the export by path, and
    # their snippets should load from any working directory
    out = Path(s.out).expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(
            f"--out {s.out} is not empty: an export goes into a new or empty directory"
        )
    if not Path(s.run).expanduser().is_dir():
        raise ConfigError(
            f"{s.run or '(none)'} is not a run's data directory (a node's --data-dir, or "
            "train --out)"
        )
    run = open_log(s.run, "RUN")
    device = resolve_device(s.device)
    engine = open_base(run.manifest, s.model, device=device, kernel=s.kernel)
    vv = held_upto(run.log, None)
    t0 = time.monotonic()
    records = replay(engine, run.log, vv, batch=s.batch)
    apply_s = time.monotonic() - t0
    fingerprint = engine.fingerprint()
    _check_snapshot(run.path, run.manifest.run_id(), vv, fingerprint)
    evals, evals_from = _evals(s, engine, run.path, digest(vv))
    include = {"auto": None, "yes": True, "no": False}[s.include_base]
    written = export(
        engine, out, vv=vv, evals=evals, run_ref=s.run, log_ref=s.run, include_base=include
    )
    summary: dict[str, Any] = {
        "command": "export",
        "run_id": run.manifest.run_id().hex(),
        "records": records,
        "version_vector": dict(sorted(vv.items())),
        "vv_digest": digest(vv),
        "fingerprint": fingerprint,
        "apply_s": apply_s,
        "evals": evals,
        "evals_from": evals_from,
        "written": [
            {
                "kind": w.kind,
                "path": str(w.path),
                "loads_with": w.loads_with,
                "load": load_line(w.kind, w.loads_with, w.path),
                "notes": list(w.notes),
            }
            for w in written
        ],
        "verify": f"seedswarm verify {out} --log {s.run}",
    }
    if s.json:
        emit_json(summary)
        return 0
    say(f"replayed {records} records of run {run.manifest.name} in {apply_s:.2f}s")
    for w in written:
        print(f"{w.kind:<22} {w.path}")
        print(f"{'':<22} {load_line(w.kind, w.loads_with, w.path)}")
        for note in w.notes:
            say(f"note: {note}")
    if evals_from:
        figures = ", ".join(f"{k} {v:.4f}" for k, v in evals.items() if k != "examples")
        print(f"evaluation ({evals_from}): {figures}")
    print(f"fingerprint {fingerprint}  records {records}")
    print(f"the card and a full snippet: {out / 'README.md'}")
    print(f"check it: {summary['verify']}")
    return 0


def load_line(kind: str, loads_with: str, path: Path) -> str:
    """One line of Python that loads the directory ``path`` of an export of ``kind``."""
    where = repr(str(path))
    if kind == "sentence_transformers":
        return f"SentenceTransformer({where})"
    if kind == "peft_adapter":
        import json

        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        auto = _PEFT_AUTO.get(config.get("task_type"), "AutoModelForMaskedLM")
        base = repr(str(config.get("base_model_name_or_path", "BASE")))
        return f"PeftModel.from_pretrained({auto}.from_pretrained({base}), {where})"
    return f"{loads_with.rsplit('.', 1)[-1]}.from_pretrained({where})"


_PEFT_AUTO = {"CAUSAL_LM": "AutoModelForCausalLM", "FEATURE_EXTRACTION": "AutoModel"}


def _check_snapshot(path: Path, run_id: bytes, vv: dict[str, int], fingerprint: str) -> None:
    """A snapshot of the run at the same version vector must have the replay's fingerprint:
    if not, the directory contradicts itself, and nothing is exported."""
    from seedswarm.daemon.store.datadir import DataDir

    snap = DataDir(path).latest_snapshot(run_id)
    if snap is not None and snap.version_vector == vv and snap.fingerprint != fingerprint:
        raise ConfigError(
            f"the replay of the log gives fingerprint {fingerprint[:16]}…, but the run's "
            f"snapshot at the same records says {snap.fingerprint[:16]}…: the data directory "
            "contradicts itself; nothing was exported"
        )


def _evals(
    s: ExportSettings, engine: Any, run_dir: Path, vv_digest: str
) -> tuple[dict[str, float], str]:
    """The eval figures for the card, and where they come from ("" when there are none)."""
    from seedswarm.daemon.node.evaluation import EVALS, EvalHistory
    from seedswarm.model.data import read
    from seedswarm.model.tasks import prepare

    if s.eval:
        examples = prepare(read(s.eval), engine.manifest.task, engine.task_model.tokenizer)
        if s.eval_limit:
            examples = examples.subset(range(min(s.eval_limit, len(examples))))
        figures: dict[str, float] = dict(engine.evaluate(examples, batch_size=s.batch_size))
        return figures, f"--eval {s.eval}"
    path = run_dir / EVALS
    if not path.is_file():
        return {}, ""
    last = EvalHistory(path, 1).latest
    if last is None or last.vv_digest != vv_digest:
        return {}, ""
    return {**last.figures(), "examples": float(last.examples)}, f"the run's {EVALS}"
