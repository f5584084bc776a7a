"""``seedswarm verify DIR --log RUN_OR_LOG``: are an export's weights exactly what a log makes?

DIR is an export (``seedswarm export``). Its ``seedswarm.json`` names the run (the whole
manifest), the records its weights hold (a version vector) and the fingerprint of that state.
``--log`` is the log to check it against: a run's data directory, or a log file written by
``seedswarm log export`` (docs/PROTOCOL.md §11), so that anyone with the base and the log can
check a model they were handed, without the data directory that trained it.

The command opens the run from the export's manifest (loading the base and checking its hash),
replays the log up to the export's version vector, and compares every tensor of the export with
the replay's, bit for bit (model/verify.py). It answers

    yes: ...                     exit 0
    no: tensor X differs ...     exit 1   (or: the log is of another run, holds too few records)

and exits 2 when it cannot check at all (no export there, no log, a base it cannot load).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seedswarm.daemon.errors import ConfigError
from seedswarm.daemon.options import KERNELS, positive
from seedswarm.daemon.settings import check_device, setting


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifySettings:
    export_dir: str = ""  # positional: the export to check
    log: str = setting(
        "",
        "the log to check it against: a run's data directory, or a log file (seedswarm log "
        "export) (required)",
    )
    model: str = setting(
        "",
        "load the base from here instead of the manifest's reference (its hash is checked); "
        "an adapter export with its base in DIR/base uses that when the reference does not load",
    )
    batch: int = setting(256, "records applied per pass over the weights", check=positive)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    kernel: str = setting("auto", "sign/apply kernel: " + ", ".join(KERNELS), choices=KERNELS)
    json: bool = setting(False, "print one JSON object instead of text")

    def __post_init__(self) -> None:
        check_device(self.device)
        if not self.log:
            raise ConfigError(
                "verify needs --log RUN_OR_LOG: the run's data directory or a log file to "
                "check the export against"
            )


def verify_run(s: VerifySettings) -> int:
    from seedswarm.daemon.console import emit_json
    from seedswarm.daemon.node.startup import resolve_device
    from seedswarm.model import provenance
    from seedswarm.model.errors import ModelError
    from seedswarm.model.verify import verify_export
    from seedswarm.protocol.vv import digest

    from .runs import held_upto, open_base, open_log, replay

    export_dir = Path(s.export_dir).expanduser()
    if not export_dir.is_dir():
        raise ConfigError(f"{s.export_dir or '(none)'} is not a directory (give an export)")
    info = provenance.read(export_dir)  # ModelError: not an export
    run = open_log(s.log, "--log")
    summary: dict[str, Any] = {
        "command": "verify",
        "export": str(export_dir),
        "kind": info.kind,
        "log": str(run.path),
        "run_id": info.manifest.run_id().hex(),
        "vv_digest": info.vv_digest,
        "claimed_fingerprint": info.fingerprint,
    }

    def answer(ok: bool, reason: str, **more: Any) -> int:
        summary.update(ok=ok, reason=reason, **more)
        if s.json:
            emit_json(summary)
        else:
            print(f"{'yes' if ok else 'no'}: {reason}")
        return 0 if ok else 1

    run_id = run.manifest.run_id().hex()
    if run_id != summary["run_id"]:
        return answer(
            False,
            f"the {run.what} is of run {run.manifest.name} ({run_id}), the export of run "
            f"{info.manifest.name} ({summary['run_id']})",
            mismatch=None,
        )
    have = held_upto(run.log, info.vv)
    short = sorted(n for n, e in info.vv.items() if e and have.get(n, 0) < e)
    if short:
        counts = ", ".join(f"{n}: {have.get(n, 0)} of {info.vv[n]}" for n in short)
        return answer(
            False,
            f"the {run.what} holds fewer records than the export's weights ({counts}): it "
            "cannot make them",
            mismatch=None,
        )
    device = resolve_device(s.device)
    base_dir = export_dir / "base"
    try:
        engine = open_base(info.manifest, s.model, device=device, kernel=s.kernel)
        base_from = s.model or info.manifest.model
    except ConfigError:
        if s.model or not (base_dir / "config.json").is_file():
            raise
        # the export's own copy of the base: trusted only because its hash is the manifest's
        engine = open_base(info.manifest, str(base_dir), device=device, kernel=s.kernel)
        base_from = str(base_dir)
    records = replay(engine, run.log, have, batch=s.batch)
    summary.update(records=records, base=base_from, vv=dict(sorted(have.items())))
    try:
        verdict = verify_export(export_dir, engine, vv=have)
    except ModelError as exc:  # weights it cannot read, or of a kind this run does not make
        return answer(False, str(exc), mismatch=None)
    summary["replayed_vv_digest"] = digest(have)
    return answer(
        verdict.ok,
        verdict.reason,
        mismatch=verdict.mismatch,
        tensors=verdict.tensors,
        fingerprint=verdict.fingerprint,
    )
