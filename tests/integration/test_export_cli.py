"""``seedswarm train`` on prompt -> completion and chat data, ``seedswarm export`` and
``seedswarm verify``, as a user runs them (real processes, the CLI's own output).

What this shows (issue 21): ``--task auto`` picks the completion task for prompt/completion
rows and for chats; its evaluations carry exact match and F1 (the answers are short); the run's
curves are TensorBoard event files that TensorBoard's own reader reads back, in a process that
never imports seedswarm; ``export`` writes what applies (an adapter and its base for a LoRA
run, a causal LM otherwise) with one-line errors for what it cannot do; ``verify`` says yes for
a true export, against a data directory or a log file, and no -- naming the tensor -- for one
with a single weight changed, for another run's log, and for a log too short to make it.
"""

from __future__ import annotations

import concurrent.futures
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from seedswarm.daemon.store.datadir import DataDir
from seedswarm.protocol.logfile import LogWriter

from ..helpers import cli, cli_json, cli_json_all
from ..qa_data import save_chat_model, write_qa
from ..unit.model.helpers import run_outside

pytestmark = pytest.mark.slow


def read_curves(directory: Path, cwd: Path) -> dict[str, list[list[float]]]:
    """Every scalar curve of the event files in ``directory`` as [[step, value], ...], read by
    TensorBoard's own reader in a process that never imports seedswarm."""
    script = (
        "from tensorboard.backend.event_processing import event_accumulator as ea\n"
        f"acc = ea.EventAccumulator({str(directory)!r}, size_guidance={{ea.SCALARS: 0}})\n"
        "acc.Reload()\n"
        "result['curves'] = {t: [[e.step, e.value] for e in acc.Scalars(t)]\n"
        "                    for t in acc.Tags()['scalars']}\n"
    )
    curves: dict[str, list[list[float]]] = run_outside(script, cwd)["curves"]
    return curves


def write_log_file(run_dir: Path, out: Path, *, upto: int | None = None) -> Path:
    """A log export (docs/PROTOCOL.md §11) of ``run_dir``'s log, only its first ``upto``
    frames when given. (``seedswarm log export`` writes such files; this
    writes one with the protocol's own writer.)"""
    d = DataDir(run_dir)
    manifest, log, _ = d.load()
    store = d.open_store(manifest)
    try:
        frames = [
            (node, body)
            for node, end in log.held().items()
            for body in store.frames_for(node, 0, end, limit_records=end)
        ]
    finally:
        store.close()
    writer = LogWriter(manifest)  # its digest covers what it wrote: write only what is kept
    parts = [writer.header()]
    parts += [writer.entry(node, body) for node, body in frames[:upto]]
    parts.append(writer.end())
    out.write_bytes(b"".join(parts))
    return out


def change_one_weight(file: Path, key: str) -> None:
    tensors = load_file(str(file))
    t = tensors[key].clone()
    t.view(-1)[0] = torch.nextafter(t.view(-1)[0], torch.tensor(float("inf")))  # one ulp
    tensors[key] = t
    save_file(tensors, str(file), metadata={"format": "pt"})


def test_train_on_prompt_completion_rows_evaluates_answers_and_writes_curves(
    tmp_path: Path,
) -> None:
    data = write_qa(tmp_path / "qa.jsonl", 200, chat=False, seed=0)
    held = write_qa(tmp_path / "held.jsonl", 6, chat=False, seed=1)
    run = tmp_path / "run"
    out = cli_json(
        "train", "--data", str(data), "--eval", str(held), "--steps", "40", "--eval-every",
        "20", "--out", str(run),
    )  # fmt: skip
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["task"]["kind"] == "completion"  # --task auto, from the rows
    assert [e["step"] for e in out["eval"]] == [0, 20, 40]
    for e in out["eval"]:
        assert {"loss", "tokens", "exact_match", "f1"} <= set(e), e  # short answers
    points = [json.loads(line) for line in (run / "evals.jsonl").read_text().splitlines()]
    assert [p["records"] for p in points] == [0, 20, 40]
    assert [p["loss"] for p in points] == [e["loss"] for e in out["eval"]]
    assert all(p["exact_match"] is not None and p["f1"] is not None for p in points)

    curves = read_curves(run / "tensorboard", tmp_path)
    assert set(curves) == {"train/loss", "eval/loss", "eval/exact_match", "eval/f1"}
    assert [s for s, _ in curves["train/loss"]] == list(range(1, 41))
    first20 = sum(v for _, v in curves["train/loss"][:20]) / 20
    assert first20 == pytest.approx(out["loss_first"], rel=1e-5)
    assert [s for s, _ in curves["eval/loss"]] == [0, 20, 40]
    assert [v for _, v in curves["eval/loss"]] == pytest.approx(
        [e["loss"] for e in out["eval"]], rel=1e-6
    )
    assert [v for _, v in curves["eval/f1"]] == pytest.approx([e["f1"] for e in out["eval"]])


def test_a_lora_run_exports_its_adapter_and_verify_checks_it(tmp_path: Path) -> None:
    data = write_qa(tmp_path / "qa.jsonl", 200, chat=False, seed=0)
    common = ("--data", str(data), "--adapter", "lora", "--lora-rank", "4", "--frame-records", "8")
    run, other = tmp_path / "run", tmp_path / "other"
    trained, _ = cli_json_all(
        ("train", *common, "--steps", "30", "--out", str(run)),
        ("train", *common, "--steps", "5", "--name", "another", "--out", str(other)),
    )
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["adapter"] == {"kind": "lora", "rank": 4, "alpha": 16.0, "targets": ["c_attn"]}
    assert manifest["lr"] == 3e-2  # the adapter preset of the tiny model

    exp = tmp_path / "exp"
    out = cli_json("export", str(run), "--out", str(exp))
    assert [(w["kind"], w["path"]) for w in out["written"]] == [
        ("peft_adapter", str(exp)),
        ("base", str(exp / "base")),
    ]
    assert out["fingerprint"] == trained["fingerprint"]
    assert out["records"] == 30
    assert (
        "PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("
        in (out["written"][0]["load"])
    )
    assert out["verify"] == f"seedswarm verify {exp} --log {run}"
    text = cli("export", str(run), "--out", str(exp))  # not empty now
    assert text.returncode == 2
    assert text.stderr.strip() == (
        f"seedswarm export: error: --out {exp} is not empty: an export goes into a new or "
        "empty directory"
    )

    # copies with one weight changed by one ulp: of the adapter, and of the base beside it
    key = "base_model.model.transformer.h.1.attn.c_attn.lora_B.weight"
    bad_adapter, bad_base = tmp_path / "bad-adapter", tmp_path / "bad-base"
    shutil.copytree(exp, bad_adapter)
    shutil.copytree(exp, bad_base)
    change_one_weight(bad_adapter / "adapter_model.safetensors", key)
    change_one_weight(bad_base / "base" / "model.safetensors", "transformer.wte.weight")
    log_file = write_log_file(run, tmp_path / "run.swlog")
    short = write_log_file(run, tmp_path / "short.swlog", upto=2)  # 16 of 30 records
    checks = [
        (exp, run, 0, "yes: exactly what the log makes: "),
        (exp, log_file, 0, "yes: exactly what the log makes: "),
        (bad_adapter, log_file, 1, f"no: tensor {key} differs from the replay in 1 of "),
        (bad_base, run, 1, "no: tensor base/transformer.wte.weight differs from the replay"),
        (exp, other, 1, f"no: the data directory {other} is of run another"),
        (exp, short, 1, (f"no: the log file {short} holds fewer records than the export's "
                        "weights (n0: 16 of 30)")),
    ]  # fmt: skip
    with concurrent.futures.ThreadPoolExecutor(3) as pool:  # each loads torch: use both cores
        done = list(pool.map(lambda c: cli("verify", str(c[0]), "--log", str(c[1])), checks))
    for (_, _, code, says), proc in zip(checks, done, strict=True):
        assert proc.returncode == code, proc.stdout + proc.stderr
        assert proc.stdout.startswith(says), proc.stdout
    proc = cli("verify", str(bad_adapter), "--log", str(run), "--json")  # the same, for programs
    assert proc.returncode == 1
    v = json.loads(proc.stdout)
    assert (v["ok"], v["mismatch"]) == (False, key)
    size = load_file(str(exp / "adapter_model.safetensors"))[key].numel()
    assert v["reason"] == f"tensor {key} differs from the replay in 1 of {size} elements"


def test_a_chat_run_on_a_model_directory_exports_a_causal_lm(tmp_path: Path) -> None:
    data = write_qa(tmp_path / "chat.jsonl", 200, chat=True, seed=0)
    model = save_chat_model(tmp_path / "tiny-chat")
    run = tmp_path / "run"
    trained = cli_json(
        "train", "--data", str(data), "--model", str(model), "--estimator", "spsa",
        "--lr", "3e-3", "--unit-exp", "-12", "--seq-len", "64", "--steps", "20",
        "--out", str(run),
    )  # fmt: skip
    manifest = json.loads((run / "manifest.json").read_text())
    assert (manifest["task"]["kind"], manifest["task"]["chat"]) == ("completion", True)
    assert manifest["model"] == "tiny-chat"  # only the directory's name: export needs --model
    failed = cli("export", str(run), "--out", str(tmp_path / "x"))
    assert failed.returncode == 2
    said = failed.stderr.strip()  # the hub's part of it is transformers' own words
    assert said.startswith("seedswarm export: error: cannot load the run's base model 'tiny-chat'")
    assert said.endswith("; give the base model's directory with --model")
    assert not (tmp_path / "x").exists()
    out = cli_json("export", str(run), "--out", str(tmp_path / "x"), "--model", str(model))
    assert [w["kind"] for w in out["written"]] == ["causal_lm"]
    assert out["fingerprint"] == trained["fingerprint"]
    tokenizer = json.loads((tmp_path / "x" / "tokenizer_config.json").read_text())
    assert "chat_template" in tokenizer or (tmp_path / "x" / "chat_template.jinja").exists()
    v = cli("verify", str(tmp_path / "x"), "--log", str(run), "--model", str(model))
    assert v.returncode == 0, v.stdout + v.stderr
    assert v.stdout.startswith("yes: ")


def test_export_says_what_it_cannot_do_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for args, says in (
        (
            ("export", str(tmp_path / "empty"), "--out", str(tmp_path / "o")),
            f"seedswarm export: error: {tmp_path / 'empty'} has no log.sqlite: not a run directory",
        ),
        (
            ("export", str(tmp_path / "none"), "--out", str(tmp_path / "o")),
            (
                f"seedswarm export: error: {tmp_path / 'none'} is not a run's data directory (a "
                "node's --data-dir, or train --out)"
            ),
        ),
        (
            ("export", str(tmp_path / "empty")),
            (
                "seedswarm export: error: export needs --out DIR (a new or empty directory to write "
                "into)"
            ),
        ),
        (
            ("verify", str(tmp_path / "empty"), "--log", str(tmp_path / "empty")),
            (
                f"seedswarm verify: error: {tmp_path / 'empty'} has no seedswarm.json: not a "
                "seedswarm export"
            ),
        ),
    ):
        proc = cli(*args)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == says
