"""The single-node CLI as a user runs it: real subprocesses, real files.

train -> replay exactness (log order, shuffled, any batch), determinism of train, resume,
eval, settings from flags / environment / config file, and one-line errors.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from seedswarm.daemon.store.datadir import DataDir, read_manifest_file
from seedswarm.daemon.store.log_store import Stored
from seedswarm.protocol.codec import encode_frame
from seedswarm.protocol.records import Frame

from ..helpers import cli, cli_json, cli_json_all, env, signalled_cli

pytestmark = [pytest.mark.slow]


def _records(run_dir: Path) -> list[tuple[str, int, int, int]]:
    """The run directory's log, read back from its SQLite file as replay reads it."""
    _, log, _ = DataDir(run_dir).load()
    return [(r.node, r.seq, r.q, r.clock) for r in log.ordered()]


def test_train_is_deterministic_and_replay_rebuilds_it(tmp_path: Path) -> None:
    a, b = cli_json_all(
        *(("train", "--steps", "40", "--out", str(tmp_path / d), "--frame-records", "16")
          for d in "ab")
    )  # fmt: skip
    assert a["fingerprint"] == b["fingerprint"]
    assert _records(tmp_path / "a") == _records(tmp_path / "b")
    assert len(_records(tmp_path / "a")) == 40
    assert any(q != 0 for _, _, q, _ in _records(tmp_path / "a"))
    ways = (("log", "256"), ("shuffled", "1"), ("shuffled", "7"))
    replays = cli_json_all(
        *(("replay", str(tmp_path / "a"), "--order", order, "--batch", batch)
          for order, batch in ways),
        # the torch reference kernel and the C kernel agree bit for bit
        ("replay", str(tmp_path / "a"), "--kernel", "torch"),
    )  # fmt: skip
    for way, out in zip([*ways, "torch kernel"], replays, strict=True):
        assert out["fingerprint"] == a["fingerprint"], way
        assert out["matches_snapshot"] is True


def test_replay_applies_only_contiguous_prefixes(tmp_path: Path) -> None:
    """Records stored beyond a gap (a swarm node got seq 5.. of a peer but not 0..4) are
    left out of the replay: the weights must match the version vector the replay reports."""
    run = cli_json("train", "--steps", "20", "--out", str(tmp_path / "run"))
    manifest = read_manifest_file(tmp_path / "run" / "manifest.json")
    store = DataDir(tmp_path / "run").open_store(manifest)
    beyond = Frame(manifest.run_id(), "peer", 5, 1, bytes([100] * 3))
    store.append([Stored(beyond, encode_frame(beyond))])
    store.close()
    out = cli_json("replay", str(tmp_path / "run"), "--order", "shuffled")
    assert out["fingerprint"] == run["fingerprint"]
    assert out["records"] == 20
    assert out["beyond_gaps"] == 1  # one stored frame, of three records
    assert "peer" not in out["version_vector"]
    assert out["matches_snapshot"] is True


def test_the_task_follows_the_data(tmp_path: Path) -> None:
    """--task defaults from the data: a table with a label column is classification, plain
    text is causal-LM; eval on a labelled file reports accuracy."""
    table = tmp_path / "reviews.csv"
    table.write_text("text,label\na great film,1\nan awful film,0\ngreat fun,1\nboring and bad,0\n")
    out = cli_json("train", "--data", str(table), "--steps", "3", "--out", str(tmp_path / "c"))
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["task"]["kind"] == "classify"
    assert manifest["task"]["labels"] == ["negative", "positive"]
    assert out["records"] == 3
    ev = cli_json("eval", str(tmp_path / "c"), "--data", str(table))
    assert ev["examples"] == 4
    assert 0.0 <= ev["accuracy"] <= 1.0

    text = tmp_path / "story.txt"
    text.write_text("the cat sees the ball.\n" * 20)
    cli_json("train", "--data", str(text), "--steps", "3", "--out", str(tmp_path / "t"))
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["task"]["kind"] == "causal_lm"
    ev_text = cli_json("eval", str(tmp_path / "t"), "--data", str(text))
    assert ev_text["loss"] > 0  # text is cut into sequences: no per-line example count
    assert "accuracy" not in ev_text  # a language model's eval has a loss, not an accuracy


def test_replay_saves_a_transformers_model(tmp_path: Path) -> None:
    run = cli_json("train", "--steps", "10", "--out", str(tmp_path / "run"))
    out = cli_json("replay", str(tmp_path / "run"), "--out", str(tmp_path / "model"))
    assert out["fingerprint"] == run["fingerprint"]
    check = (
        "import sys, torch, transformers\n"
        "m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "t = transformers.AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "ids = torch.tensor([t('hello')['input_ids']])\n"
        "print(float(m(input_ids=ids, labels=ids).loss))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", check, str(tmp_path / "model")],
        capture_output=True, text=True, env=env(), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.strip().splitlines()[-1]) > 0


def test_resume_continues_the_same_run(tmp_path: Path) -> None:
    straight = cli_json("train", "--steps", "30", "--out", str(tmp_path / "straight"))
    cli_json("train", "--steps", "12", "--out", str(tmp_path / "resumed"))
    resumed = cli_json("train", "--steps", "30", "--out", str(tmp_path / "resumed"))
    assert resumed["steps"] == 18
    assert resumed["fingerprint"] == straight["fingerprint"]

    # the same bytes; only the Lamport clocks differ, since the frames were cut differently
    def strip(rows: list[tuple[str, int, int, int]]) -> list[tuple[str, int, int]]:
        return [(node, seq, q) for node, seq, q, _ in rows]

    assert strip(_records(tmp_path / "resumed")) == strip(_records(tmp_path / "straight"))


def test_learning_through_the_cli_and_eval(tmp_path: Path) -> None:
    text = tmp_path / "held_out.txt"
    text.write_text("the cat sees the ball.\na dog likes the river.\n" * 40)
    out = cli_json("train", "--steps", "300", "--out", str(tmp_path / "run"), "--eval", str(text))
    first, last = out["eval"][0], out["eval"][-1]
    assert first["step"] == 0
    assert last["step"] == 300
    assert last["loss"] < first["loss"] - 0.5, out["eval"]
    ev = cli_json("eval", str(tmp_path / "run"), "--data", str(text), "--compare-base")
    assert ev["loss"] == pytest.approx(last["loss"], rel=1e-5)
    assert ev["fingerprint"] == out["fingerprint"]
    # --compare-base: the base model on the same examples, i.e. the trainer's step-0 eval
    assert ev["base"]["loss"] == pytest.approx(first["loss"], rel=1e-5)
    assert ev["base"]["examples"] == ev["examples"]
    shown = cli("eval", str(tmp_path / "run"), "--data", str(text), "--compare-base", check=True)
    lines = shown.stdout.strip().splitlines()
    assert lines[0].startswith(f"loss {ev['loss']:.4f}")
    assert "after 300 records" in lines[0]
    assert lines[1] == f"loss {ev['base']['loss']:.4f}  base model, same examples"


def test_settings_from_the_environment(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "seedswarm.daemon.cli", "train", "--out", str(tmp_path / "r"), "--json"],
        capture_output=True, text=True, timeout=300, env=dict(env(), SEEDSWARM_STEPS="3"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["steps"] == 3
    bad = subprocess.run(
        [sys.executable, "-m", "seedswarm.daemon.cli", "train", "--out", str(tmp_path / "r2")],
        capture_output=True, text=True, timeout=300, env=dict(env(), SEEDSWARM_STEPS="many"),
    )  # fmt: skip
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        == "seedswarm train: error: SEEDSWARM_STEPS: expected an integer, got 'many'"
    )


ONE_LINE_ERRORS = [
    (["train", "--steps", "5"], "train needs --out"),
    (["train", "--out", "{tmp}/x", "--steps", "-3"], "--steps: -3 must not be negative"),
    (
        ["train", "--out", "{tmp}/x", "--batch-growth", "0.5"],
        "--batch-growth: 0.5 must be at least 1",
    ),
    (["swarm", "--batch-growth", "0"], "--batch-growth: 0.0 must be at least 1"),
    (["train", "--out", "{tmp}/x", "--batch-growth", "2"], "and this run's rate is constant"),
    (["train", "--out", "{tmp}/x", "--data", "{tmp}/missing.txt"], "does not exist"),
    (["train", "--out", "{tmp}/x", "--data", "{tmp}/data.xml"], "unsupported data format"),
    (["train", "--out", "{tmp}/x", "--device", "cuda:0"], "no CUDA device"),
    (["train", "--out", "{tmp}/x", "--model", "{tmp}/nomodel"], "does not exist"),
    (["train", "--out", "{tmp}/x", "--shard", "3/2"], "--shard 3/2"),
    (["train", "--no-such-flag"], "seedswarm train: error: unknown option --no-such-flag"),
    # a misspelt flag or command is named, with what was meant, by the command it was given to
    (
        ["train", "--stepz", "10"],
        "seedswarm train: error: unknown option --stepz (did you mean --steps?)",
    ),
    (["trian", "--steps", "3"], "invalid choice: 'trian' (did you mean train?)"),
    (["node", "--config", "{tmp}/node.toml"], "unknown setting 'stepz' (did you mean steps?)"),
    # no abbreviations: --node is no prefix of --nodes (argparse's default would take it)
    (
        ["swarm", "--node", "3"],
        "seedswarm swarm: error: unknown option --node (did you mean --nodes?)",
    ),
    (["node", "--broker", "mqtt://127.0.0.1:99999"], "the port '99999' is not in 1..65535"),
    (["node", "--http", "127.0.0.1:99999"], "the port 99999 is not in 0..65535"),
    (["broker", "--port", "99999"], "--port: 99999 is not a port"),
    (["status", "no-such-dir"], "is neither a data directory here nor a status URL"),
    (["eval", "{tmp}/not-a-run"], "is not a run directory"),
    (["replay", "{tmp}/not-a-run"], "is not a run directory"),
    (["node", "--broker", "http://x", "--data-dir", "{tmp}/d"], "use mqtt://host:port"),
    (["status", "http://127.0.0.1:9"], "cannot reach"),
    (["node", "--steps", "-5"], "--steps: -5 must be a number of steps, or -1 for no limit"),
    (["swarm", "--steps", "-2"], "--steps: -2 must be a number of steps, or -1 for no limit"),
]


@pytest.mark.parametrize(("args", "message"), ONE_LINE_ERRORS)
def test_user_errors_are_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "data.xml").write_text("<x/>")
    (tmp_path / "node.toml").write_text("stepz = 3\n")
    proc = cli(*[a.replace("{tmp}", str(tmp_path)) for a in args], timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr


def test_a_path_the_system_refuses_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    proc = cli("train", "--steps", "2", "--out", str(tmp_path / "a-file" / "run"), timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"seedswarm train: error: [Errno 20] Not a directory: '{tmp_path / 'a-file' / 'run'}'"
    ]


def test_a_run_directory_of_another_run_is_refused(tmp_path: Path) -> None:
    cli_json("train", "--steps", "2", "--out", str(tmp_path / "run"))
    proc = cli("train", "--steps", "2", "--out", str(tmp_path / "run"), "--lr", "0.5")
    assert proc.returncode == 2
    assert "belongs to another run (differs in: lr)" in proc.stderr


def test_version_and_short_help() -> None:
    from importlib.metadata import version

    assert cli("--version", check=True).stdout == f"seedswarm {version('seedswarm')}\n"
    short = cli("node", "--help", check=True).stdout
    full = cli("node", "--help-all", check=True).stdout
    assert "--broker" in short
    assert "--max-latency" not in short  # an advanced option: --help-all only
    assert "more options: seedswarm node --help-all" in short
    assert "--max-latency" in full
    assert "[env SEEDSWARM_MAX_LATENCY]" in full
    assert len(short.splitlines()) < len(full.splitlines()) // 2
    bench = cli("bench", "--help-all", check=True).stdout
    assert "bench load:" in bench  # one group per benchmark
    assert "bench load:" not in cli("bench", "--help", check=True).stdout


NO_TORCH = """
import sys
from seedswarm.daemon.cli.main import main
code = main(sys.argv[1:])
assert "torch" not in sys.modules, "this command imported torch"
print("exit", code)
"""


def test_status_log_and_eval_of_a_data_directory(tmp_path: Path) -> None:
    """After a run: status, log and eval of its directory, no node and no URL needed; status
    and log never import torch (they answer at once), and eval reads the run's own eval data."""
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("the cat sees the ball.\na dog likes the river.\n" * 40)
    run = tmp_path / "run"
    out = cli_json(
        "train", "--steps", "6", "--out", str(run), "--eval", str(held_out), "--estimator",
        "fzoo", "--directions", "2",
    )  # fmt: skip
    k = 2

    shown = cli("status", str(run), check=True).stdout
    assert f"{run}: node n0 of run default ({out['run_id']}, open), model tiny" in shown
    assert f"records  {6 * k}: n0 {6 * k}" in shown
    assert "steps    n0 6  (fzoo: 2 records a step)" in shown
    assert (
        f"weights  fingerprint {out['fingerprint'][:16]}  (its snapshot holds every record)"
        in shown
    )
    st = cli_json("status", str(run))
    assert st["version_vector"] == {"n0": 6 * k}
    assert st["steps"] == {"n0": 6}
    assert st["fingerprint"] == out["fingerprint"]
    assert st["eval_data"] == str(held_out)

    page = cli_json("log", str(run), "--limit", "5")
    assert page["total"] == 6 * k
    assert [(r["node"], r["seq"]) for r in page["records"]] == [("n0", i) for i in range(5)]
    rest = cli_json("log", str(run), "--after", page["next"], "--limit", "100")
    assert len(rest["records"]) == 6 * k - 5
    text = cli("log", str(run), check=True).stdout
    assert "q:     the signed byte" in text  # what the columns mean
    assert "seq:   the author's record number" in text

    for args in (["status", str(run)], ["log", str(run), "--json"], ["--help"]):
        proc = subprocess.run(
            [sys.executable, "-c", NO_TORCH, *args],
            capture_output=True, text=True, env=env(), timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert "exit 0" in proc.stdout or args == ["--help"], proc.stdout

    # eval without --data: the run's own held-out data, the numbers train reported
    ev = cli("eval", str(run), "--compare-base", "--json", check=True)
    assert f"evaluating on the run's held-out data, {held_out}" not in ev.stderr  # --json: quiet
    result = json.loads(ev.stdout.strip().splitlines()[-1])
    assert result["data"] == str(held_out)
    assert result["loss"] == pytest.approx(out["eval"][-1]["loss"], rel=1e-5)
    assert result["base"]["loss"] == pytest.approx(out["eval"][0]["loss"], rel=1e-5)
    said = cli("eval", str(run), check=True).stderr
    assert f"evaluating on the run's held-out data, {held_out} (its --eval)" in said


def test_train_steps_is_a_total_and_says_resuming(tmp_path: Path) -> None:
    """--steps is what the run directory should hold, with any estimator (FZOO writes K
    records a step): the same command again takes nothing, a larger one takes the rest
    (at a constant rate: an FZOO run's default decay ends at its plan, below)."""
    run = str(tmp_path / "run")
    fz = ["--estimator", "fzoo", "--directions", "4", "--schedule", "constant"]
    first = cli_json("train", "--steps", "3", "--out", run, *fz)
    assert (first["steps"], first["records"]) == (3, 12)
    again = cli("train", "--steps", "3", "--out", run, *fz, check=True)
    assert "already holds 3 steps of n0 (--steps 3 is the total" in again.stderr
    assert "train 3/3" not in again.stderr  # no progress of a run that takes no step
    more = cli("train", "--steps", "5", "--out", run, *fz, "--json", check=True)
    assert f"resuming from step 3 in {run}: 2 more to reach --steps 5" in more.stderr
    summary = json.loads(more.stdout.strip().splitlines()[-1])
    assert (summary["steps"], summary["records"]) == (2, 20)
    assert summary["version_vector"] == {"n0": 20}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_a_signal_stops_train_at_a_step_end_with_every_record_stored(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """Ctrl+C or kill stops train at the end of a step: the records of every finished step are
    stored even though none had filled a frame yet (--frame-records is larger than the run
    gets), the snapshot matches the log, and the same command resumes where it stopped."""
    run, text = tmp_path / "run", tmp_path / "held_out.txt"
    text.write_text("the cat sees the ball.\na dog likes the river.\n" * 10)
    args = ["train", "--steps", "100000", "--out", str(run), "--frame-records", "100000",
            "--schedule", "constant", "--eval", str(text), "--eval-every", "5"]  # fmt: skip
    evals = run / "evals.jsonl"

    def two_evals(_: subprocess.Popen[str]) -> bool:  # step 0's and step 5's: 5 steps taken
        return evals.exists() and len(evals.read_text(encoding="utf-8").splitlines()) >= 2

    ended = signalled_cli(
        *args, "--json", ready=two_evals, what="two evals", sig=sig,
        ready_timeout=300, exit_timeout=120,
    )  # fmt: skip
    assert ended.returncode == 128 + sig, ended.stderr  # as a shell reports a signalled command
    summary = json.loads(ended.stdout.strip().splitlines()[-1])
    taken = summary["steps"]
    assert taken >= 5
    assert summary["complete"] is False
    said = f"stopped by {sig.name} after step {taken} of 100000, its records stored"
    assert said in ended.stderr, ended.stderr
    assert summary["records"] == taken == len(_records(run))  # one record a step (SPSA)
    replayed = cli_json("replay", str(run))
    assert replayed["fingerprint"] == summary["fingerprint"]
    assert replayed["matches_snapshot"] is True
    more = cli("train", *args[1:2], str(taken + 2), *args[3:], check=True)
    assert f"resuming from step {taken} in {run}: 2 more" in more.stderr, more.stderr


def test_a_planned_fzoo_run_decays_and_then_is_complete(tmp_path: Path) -> None:
    """train --steps plans an FZOO run's records, and --schedule auto decays its rate over
    them: the same command again says the run is complete, a larger --steps is refused in
    one line that says why and what to do, and the run directory is left as it was."""
    run = tmp_path / "run"
    fz = ["--estimator", "fzoo", "--directions", "2", "--out", str(run)]
    first = cli_json("train", "--steps", "3", *fz)
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    assert (manifest["schedule"], manifest["budget"]) == ("decay", 6)
    again = cli("train", "--steps", "3", *fz, check=True)
    assert "nothing to take; the run is complete (its learning rate has decayed to 0)" in (
        again.stderr
    )
    longer = cli("train", "--steps", "5", *fz)
    assert longer.returncode == 2
    said = (
        f"seedswarm train: error: {run} holds a run planned for 6 records, whose learning rate "
        "decays to 0 there (--schedule auto decays an FZOO run that --steps plans), so it cannot "
        "take more steps: start a new run elsewhere, or plan with --schedule constant to be able "
        "to raise --steps later"
    )
    assert longer.stderr.strip().splitlines() == [said], longer.stderr
    assert cli_json("status", str(run))["version_vector"] == {"n0": 6}
    assert cli_json("replay", str(run))["fingerprint"] == first["fingerprint"]
    # a swarm in that directory is asked for a longer plan too (one node, 2 more steps)
    swarm = cli("swarm", "--nodes", "1", "--steps", "5", "--dir", str(run), *fz[:4])
    assert swarm.returncode == 2
    assert "holds a run planned for 6 records" in swarm.stderr, swarm.stderr


def test_log_export_and_import_rebuild_the_run_elsewhere(tmp_path: Path) -> None:
    """A run's log as one file (docs/PROTOCOL.md §11): imported into a fresh directory, with
    nothing but the file, it replays to the run's fingerprint."""
    run = tmp_path / "run"
    out = cli_json("train", "--steps", "12", "--out", str(run), "--frame-records", "5")
    exported = cli_json("log", "export", str(run), "--out", str(tmp_path / "run.swlog"))
    assert exported["records"] == 12
    assert exported["frames"] == 3
    data = (tmp_path / "run.swlog").read_bytes()
    assert data.startswith(b"\x89swlog\r\n\x1a\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "run.swlog").write_bytes(data)
    imported = cli_json(
        "log", "import", str(elsewhere / "run.swlog"), "--out", str(elsewhere / "run")
    )
    assert imported["version_vector"] == {"n0": 12}
    assert sorted(p.name for p in (elsewhere / "run").iterdir()) == ["log.sqlite", "manifest.json"]
    replayed = cli_json("replay", str(elsewhere / "run"))
    assert replayed["fingerprint"] == out["fingerprint"]
    # a file cut short counts for nothing: no directory is left behind
    (elsewhere / "cut.swlog").write_bytes(data[:-1])
    proc = cli("log", "import", str(elsewhere / "cut.swlog"), "--out", str(elsewhere / "cut"))
    assert proc.returncode == 2
    assert "is not a usable log export (truncated)" in proc.stderr
    assert not (elsewhere / "cut").exists()
    assert not (elsewhere / "cut.importing").exists()
