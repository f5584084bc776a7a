"""``seedswarm bench`` as a user runs it: real subprocesses, a real broker for ``wire``.

These tests check what the benchmarks report and that the figures hang together (ratios
consistent with the times they come from, bytes per record falling with the frame size);
they never assert on wall-clock speed, which shared machines cannot promise.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from seedswarm.daemon.errors import ConfigError
from seedswarm.daemon.launch.mosquitto import mosquitto

from ..helpers import cli, cli_json, signalled_cli, wait_until

pytestmark = [pytest.mark.slow]

TINY = ("--model", "tiny", "--repeats", "2")


def test_bench_step_compares_with_two_forwards_and_mezo() -> None:
    out = cli_json("bench", "step", *TINY, "--batch-size", "2", "--seq-len", "16")
    assert out["bench"] == "step"
    assert out["model"] == "tiny"
    assert out["batch"] == [2, 16]
    assert out["params"] > 100_000
    s, r = out["seconds"], out["ratios"]
    assert all(s[k] > 0 for k in ("two_forwards", "zo_step", "mezo_step"))
    assert math.isclose(r["zo_step / two_forwards"], s["zo_step"] / s["two_forwards"])
    assert math.isclose(r["mezo_step / zo_step"], s["mezo_step"] / s["zo_step"])
    assert math.isclose(out["overhead_pct"], 100 * (r["zo_step / two_forwards"] - 1))
    mem = out["memory_bytes"]
    assert mem["weights"] == 4 * out["params"]
    assert mem["peak_zo_step"] > 0
    assert mem["measured_in"] == "a fresh process per arm"
    assert set(mem["above_loaded"]) == {"two_forwards", "zo_step", "mezo_step", "inference"}
    assert all(0 < up < mem["peak_zo_step"] for up in mem["above_loaded"].values())
    assert mem["peak_two_forwards"] > 0
    # the bare model's inference, without a replica: the ZO step's state shows against it
    assert 0 < mem["peak_inference"] < mem["peak_zo_step"]
    assert math.isclose(
        out["memory_ratio_zo_vs_inference"], mem["peak_zo_step"] / mem["peak_inference"]
    )


def test_bench_apply_reports_records_per_second_against_both_references() -> None:
    out = cli_json("bench", "apply", *TINY, "--batches", "1,16")
    assert [row["batch"] for row in out["batches"]] == [1, 16]
    assert out["one_pass_seconds"] > 0
    assert out["naive_records_per_s"] > 0
    for row in out["batches"]:
        assert math.isclose(row["records_per_s"], row["batch"] / row["seconds"])
        assert math.isclose(row["time_vs_one_pass"], row["seconds"] / out["one_pass_seconds"])
        assert math.isclose(
            row["vs_naive_randn"], row["records_per_s"] / out["naive_records_per_s"]
        )


@pytest.mark.broker
@pytest.mark.parametrize("broker", ["amqtt", "mosquitto"])
def test_bench_wire_bytes_per_record_fall_with_the_frame_size(broker: str) -> None:
    out = cli_json("bench", "wire", "--broker", broker, "--frames", "16,256")
    assert out["broker"] == broker
    if broker == "mosquitto":  # the broker's own byte count agrees with the relay's
        for r in out["frames"]:
            sys_count, wire = r["broker_sys_bytes_per_record"], r["wire_bytes_per_record"]
            assert wire <= sys_count < wire * 1.05, r
    for signed in (False, True):
        rows = [r for r in out["frames"] if r["signed"] is signed]
        assert [r["records_per_frame"] for r in rows] == [16, 256]
        wire = [r["wire_bytes_per_record"] for r in rows]
        assert wire[0] > wire[1] > 1.0  # one byte per record plus a header share
        for r in rows:  # MQTT framing adds to the payload, never takes away
            assert r["wire_bytes_per_record"] > r["payload_bytes_per_record"]
    open_256 = next(r for r in out["frames"] if r["records_per_frame"] == 256 and not r["signed"])
    assert open_256["wire_bytes_per_record"] <= 1.5  # the target for 256-record frames


def test_bench_quant_runs_both_arms_on_the_same_seeds() -> None:
    out = cli_json("bench", "quant", "--model", "tiny", "--steps", "30", "--eval-every", "15")
    assert [p["step"] for p in out["curve"]] == [0, 15, 30]
    start, end = out["curve"][0], out["curve"][-1]
    assert start["byte"] == start["float"]  # the same base model, before any step
    assert end["byte"]["loss"] < start["byte"]["loss"]
    assert end["float"]["loss"] < start["float"]["loss"]
    assert 0 < out["mean_abs_q"] <= 127
    assert 0 <= out["clipped_fraction"] <= 1


def test_bench_prints_a_table_for_a_person() -> None:
    proc = cli("bench", "apply", *TINY, "--batches", "1", check=True)
    assert "records/s" in proc.stdout
    assert "vs naive randn" in proc.stdout
    for flags in (
        ("apply", "--batches", "1,x"),
        ("apply", "--batches", "0"),
        ("wire", "--frames", ""),
    ):
        bad = cli("bench", *flags)
        assert bad.returncode == 2
        want = f"{flags[1]}: a comma-separated list of positive integers, e.g. 1,16,256"
        assert bad.stderr.strip().splitlines() == [f"seedswarm bench: error: {want}"]


@pytest.mark.broker
def test_bench_wire_says_so_when_mosquitto_cannot_start() -> None:
    """A port already bound elsewhere: mosquitto exits at once, and the bench says why."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: connecting to it is refused
        port = taken.getsockname()[1]
        refused = pytest.raises(ConfigError, match=f"mosquitto on port {port} stopped at start: ")
        with refused, mosquitto(port):
            pytest.fail("mosquitto cannot listen on a port that is taken")


@pytest.mark.broker
def test_bench_load_counts_the_deliveries_a_relay_saves() -> None:
    """Six nodes on a fresh Mosquitto, one of them a real ``seedswarm node``: without a relay the
    broker delivers each frame to the N − 1 others; with one, every node gets one bundle per
    relay interval instead (one a second here, as many as its frames). Nothing is lost either
    way, and the real node agrees."""
    out = cli_json(
        "bench", "load", "--nodes", "6", "--real", "1", "--full", "0",
        "--seconds", "4", "--warmup", "2", "--drain", "30", "--relay-interval", "1",
    )  # fmt: skip
    rows = {r["relay"]: r for r in out["rows"]}
    assert set(rows) == {False, True}
    for r in rows.values():
        assert (r["nodes"], r["real"], r["connected"]) == (6, 1, 5), r
        assert (r["lost"], r["real_agree"]) == (0, True), r
        assert min(r["records"], r["lag_samples"]) > 0, r
        assert r["bytes_in_per_record"] > 1.0, r  # a record is at least its byte
    off, on = rows[False], rows[True]
    assert on["via_relay"] == 5
    assert on["relay_stats"]["frames_forwarded"] > 0
    assert out["relay_interval"] == 1.0
    # N − 1 = 5 copies of each frame against 2 with a relay: the frame up to the relay, and one
    # bundle a second down to each node. Both rows carry the same extra of about 1.3 (measured
    # 1.2-1.6 in five runs): the bench's own $SYS monitor (~0.5), the vv requests of content
    # repair (each node asks one peer every 5 s, and the answer comes back: ~0.4 at 1 frame/s,
    # docs/PROTOCOL.md §9) and the burst of them when the real node's presence changes (every
    # sim asks it once: ~0.4 in a 4 s window)
    assert 4.5 <= off["deliveries_per_node_frame"] < 7.5, off
    assert 1.8 <= on["deliveries_per_node_frame"] < 4.2, on
    assert on["deliveries_per_node_frame"] < off["deliveries_per_node_frame"] - 1.5, (on, off)
    bad = cli("bench", "load", "--nodes", "1")
    assert bad.returncode == 2
    assert "--nodes: a comma-separated list of swarm sizes of 2 or more" in bad.stderr


def _children(pid: int) -> dict[int, str]:
    """The processes whose parent is ``pid``, with their command lines (from /proc)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
                cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
                found[int(stat.parent.name)] = cmd.decode(errors="replace")
    return found


@pytest.mark.broker
def test_a_terminated_bench_load_stops_its_broker_relay_and_workers() -> None:
    """``kill`` (SIGTERM) while a row runs: the bench stops the Mosquitto, the relay (which runs
    in its own session, out of reach of signals to the bench's) and the workers it started,
    rather than leaving them running."""
    kinds = {"mosquitto": "mosquitto -c", "relay": "cli relay", "worker": "multiprocessing"}
    started: dict[int, str] = {}

    def all_up(proc: subprocess.Popen[str]) -> bool:
        started.update(_children(proc.pid))
        return all(any(k in c for c in started.values()) for k in kinds.values())

    ended = signalled_cli(
        "bench", "load", "--nodes", "3", "--relay", "on", "--full", "0", "--seconds", "600",
        "--warmup", "0", "--json",
        ready=all_up, what="the bench's broker, relay and workers", sig=signal.SIGTERM,
        ready_timeout=120, exit_timeout=120,
    )  # fmt: skip
    err = ended.stderr
    assert ended.returncode == 130, err  # as for Ctrl-C: "interrupted"
    assert err.strip().splitlines()[-1] == "interrupted", err
    ours = {pid: cmd for pid, cmd in started.items() if any(k in cmd for k in kinds.values())}

    def gone() -> bool:
        return not any(Path(f"/proc/{pid}").exists() for pid in ours)

    wait_until(gone, timeout=30, what=f"the bench's processes to end: {ours}")


def test_bench_exact_two_orders_and_batchings_give_one_state() -> None:
    """Realistic and worst-case values, dense and low-rank: replica A (log order, batches of
    256) and replica B (a random permutation, batches of 1..512) end with one fingerprint and
    the same weight bits; the headroom is reported along the way."""
    out = cli_json(
        "bench", "exact", "--exact-runs", "tiny:3000", "--exact-direction", "dense,lowrank",
        "--exact-every", "1000",
    )  # fmt: skip
    assert out["bench"] == "exact"
    assert out["all_agree"] is True
    rows = {(r["direction"], r["q"]): r for r in out["rows"]}
    assert set(rows) == {(d, q) for d in ("dense", "lowrank") for q in ("realistic", "worst")}
    for row in rows.values():
        assert row["records"] == 3000
        assert row["fingerprint_a"] == row["fingerprint_b"]
        assert row["weights_equal"] is True
        assert [c["records"] for c in row["checkpoints"]] == [0, 1024, 2048, 3000]
        for c in row["checkpoints"]:
            assert 30 < c["bound_bits"] <= c["measured_bits"] <= 63
            assert c["bound_records"] > 10**12
    assert math.isclose(rows["dense", "realistic"]["mean_abs_q"], 35, abs_tol=2)
    assert rows["dense", "worst"]["mean_abs_q"] == 127
    # the worst case moves the state faster than the realistic values do
    end = {k: r["checkpoints"][-1]["max_steps"] for k, r in rows.items()}
    assert end["dense", "worst"] > end["dense", "realistic"]
    # the two value kinds and the two directions are different logs and different states
    assert len({r["fingerprint_a"] for r in rows.values()}) == 4


def test_bench_exact_refuses_a_bad_run_list() -> None:
    done = cli("bench", "exact", "--exact-runs", "tiny", check=False)
    assert done.returncode == 2
    assert "MODEL:RECORDS" in done.stderr


def test_bench_scale_gives_a_curve_of_efficiency_against_nodes(tmp_path: Path) -> None:
    """A small run on the tiny model in virtual time: efficiency 1 at one node by definition,
    a point per swarm size and seed, staleness growing with the swarm, a plot."""
    out = cli_json(
        "bench", "scale", "--model", "tiny", "--scale-nodes", "1,3", "--scale-seeds", "2",
        "--scale-budget", "240", "--scale-eval-every", "60", "--scale-target-loss", "5.2",
        "--scale-step-s", "0.1", "--scale-latency", "0.05",
        "--scale-plot", str(tmp_path / "scale.png"),
    )  # fmt: skip
    assert out["bench"] == "scale"
    assert out["target_accuracy"] is None  # a causal LM: loss only
    one, three = out["points"]
    assert (one["nodes"], three["nodes"]) == (1, 3)
    assert len(one["runs"]) == len(three["runs"]) == 2
    assert one["efficiency_loss"] == 1.0
    assert all(r["unseen_per_step"] == 0 for r in one["runs"])
    assert all(r["unseen_per_step"] > 0 for r in three["runs"])  # others' records in flight
    for p in (one, three):
        for r in p["runs"]:
            assert r["records_to_loss"] is not None, r["curve"]
            records = [c[0] for c in r["curve"]]
            assert records == sorted(records)
            assert r["curve"][0][1] > 5.2 >= r["curve"][-1][1]
    if three["efficiency_loss"] is not None:
        assert math.isclose(
            three["efficiency_loss"], one["records_to_loss"] / three["records_to_loss"]
        )
    assert out["apply_s_per_record"] > 0
    assert (tmp_path / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_scale_runs_seedswarm_swarm_beside_the_simulation(tmp_path: Path) -> None:
    """--scale-real: real node processes through a real broker (Mosquitto where installed),
    stopped after a number of records; their curve is rebuilt from n0's log by records."""
    done = cli(
        "bench", "scale", "--model", "tiny", "--scale-nodes", "1", "--scale-seeds", "1",
        "--scale-budget", "240", "--scale-eval-every", "40", "--scale-target-loss", "5.2",
        "--scale-step-s", "0.1", "--scale-latency", "0.05", "--scale-real", "2",
        "--scale-real-records", "120", "--scale-plot", str(tmp_path / "scale.png"), "--json",
        timeout=600,
    )  # fmt: skip
    out = json.loads(done.stdout)  # the one JSON object: progress goes to stderr
    assert "seedswarm swarm, 2 node(s), seed 0" in done.stderr
    (sim,) = out["points"][0]["runs"]
    (real,) = out["real"]
    assert (real["nodes"], real["seed"]) == (2, 0)
    assert real["steps_per_node"] == 60  # 120 records over 2 nodes, one record a step (SPSA)
    assert real["records"] == 120  # every node's steps, in n0's log
    records = [c[0] for c in real["curve"]]
    assert records == list(range(0, 40 * len(records), 40))
    assert real["curve"][0][1] == sim["curve"][0][1]  # the same base model and held-out data
    assert real["records_to_loss"] is not None, real["curve"]
    assert records[-2] < real["records_to_loss"] <= records[-1]
    assert real["curve"][-1][1] <= 5.2 < real["curve"][-2][1]
    assert (tmp_path / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_noise_measures_the_batch_noise_of_a_run(tmp_path: Path) -> None:
    """Backprop on a run's trainable weights at the base and at the run's model: the noise a
    batch's gradient carries falls as 1/B, and data whose examples are all the same has none."""
    rows = ["a fine bright day\t1", "a dull grey day\t0", "the best film\t1", "a bad end\t0"]
    varied = tmp_path / "varied.tsv"
    varied.write_text("sentence\tlabel\n" + "\n".join(rows * 20) + "\n", encoding="utf-8")
    same = tmp_path / "same.tsv"
    same.write_text("sentence\tlabel\n" + "a fine bright day\t1\n" * 80, encoding="utf-8")
    run = tmp_path / "run"
    trained = cli_json(
        "train", "--data", str(varied), "--estimator", "fzoo", "--directions", "2", "--steps",
        "4", "--out", str(run),
    )  # fmt: skip
    out = cli_json(
        "bench", "noise", "--noise-run", str(run), "--noise-batches", "6", "--noise-sizes", "4,16"
    )
    assert out["bench"] == "noise"
    assert out["data"] == str(varied)  # the run's own --data
    base, after = out["points"]
    assert (base["where"], base["records"]) == ("base", 0)
    assert after["records"] == trained["records"] == 8
    for p in (base, after):
        assert p["noise_sq"] > 0
        r4, r16 = p["ratios"]["4"], p["ratios"]["16"]
        assert r4 > r16 > 1.0
        assert math.isclose(r16 - 1.0, (r4 - 1.0) / 4, rel_tol=1e-9)  # noise falls as 1/B
    uniform = cli_json(
        "bench", "noise", "--noise-run", str(run), "--noise-data", str(same),
        "--noise-batches", "4", "--noise-sizes", "4",
    )  # fmt: skip
    for p in uniform["points"]:
        assert p["noise_sq"] <= 1e-12 * p["grad_sq"], p  # every batch is the same batch
        assert math.isclose(p["ratios"]["4"], 1.0, abs_tol=1e-9)
    text = cli("bench", "noise", "--noise-run", str(run), "--noise-batches", "3", check=True)
    assert "E||g_B||^2 / ||g||^2" in text.stdout
    assert "by group" not in text.stdout
    grouped = cli_json("bench", "noise", "--noise-run", str(run), "--noise-batches", "3",
                       "--noise-groups")  # fmt: skip
    for p in grouped["points"]:  # the groups split the run's trainable weights and figures
        assert sum(g["weights"] for g in p["groups"]) == grouped["trainable"]
        assert math.isclose(sum(g["noise_sq"] for g in p["groups"]), p["noise_sq"], rel_tol=1e-9)
        assert math.isclose(sum(g["grad_sq"] for g in p["groups"]), p["grad_sq"], rel_tol=1e-6,
                            abs_tol=1e-12)  # fmt: skip
        # the tiny GPT-2's blocks fold into one group a tensor: transformer.h.*.ln_1.weight
        assert "transformer.h.*.ln_1.weight" in {g["group"] for g in p["groups"]}


def test_bench_noise_says_what_it_needs() -> None:
    proc = cli("bench", "noise")
    assert proc.returncode == 2
    assert "bench noise needs --noise-run DIR" in proc.stderr, proc.stderr
    bad = cli("bench", "noise", "--noise-run", "x", "--noise-batches", "1")
    assert bad.returncode == 2
    assert "--noise-batches: 1 must be at least 2" in bad.stderr, bad.stderr


def _reviews(path: Path) -> Path:
    rows = [
        ("a gorgeous , witty , seductive movie .", 1), ("the acting is dreadful .", 0),
        ("one of the best films of the year", 1), ("a tedious , pointless mess", 0),
        ("it 's a charming and often affecting journey .", 1), ("boring and badly written", 0),
        ("a moving , funny and wise film", 1), ("the plot makes no sense at all", 0),
        ("an enjoyable ride from start to finish", 1), ("i wanted my two hours back", 0),
        ("beautifully shot and well acted", 1), ("a lifeless , clumsy sequel", 0),
    ]  # fmt: skip
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    return path


def test_bench_labels_scores_label_words_as_train_would_use_them(tmp_path: Path) -> None:
    """Each candidate is scored on the base model exactly as `train --label-words` would
    score it: its held-out figures are the zero-records evaluation of such a run."""
    data = _reviews(tmp_path / "reviews.tsv")
    out = cli_json(
        "bench", "labels", "--model", "minilm", "--data", str(data), "--eval", str(data),
        "--labels-candidates", "a negative review|a positive review;a bad film|a good film;"
        "a good film|a bad film",
    )  # fmt: skip
    assert out["bench"] == "labels"
    assert (out["scorer"], out["labels"]) == ("embed", ["negative", "positive"])
    assert out["sample"] == out["eval_examples"] == 12  # the sample is capped at the data
    scores = out["scores"]
    assert len(scores) == 3
    keys = [(-c["accuracy"], c["loss"]) for c in scores]
    assert keys == sorted(keys)  # best first
    assert out["best"] == scores[0]["words"]
    assert [c["default"] for c in scores].count(True) == 1
    flipped = next(c for c in scores if c["words"] == ["a good film", "a bad film"])
    assert flipped is scores[-1]
    assert flipped["accuracy"] < 0.5
    for c in scores:  # the sample is the whole file here, so both columns agree
        assert c["accuracy"] == c["eval_accuracy"]
        assert math.isclose(c["loss"], c["eval_loss"], rel_tol=1e-6)
    film = next(c for c in scores if c["words"] == ["a bad film", "a good film"])
    run = cli_json(
        "train", "--model", "minilm", "--data", str(data), "--eval", str(data), "--steps", "0",
        "--label-words", "a bad film|a good film", "--out", str(tmp_path / "run"),
    )  # fmt: skip
    (zero,) = run["eval"]
    assert zero["accuracy"] == film["eval_accuracy"]
    assert math.isclose(zero["loss"], film["eval_loss"], rel_tol=1e-5)  # eval batches differ


def test_bench_labels_tries_built_in_sets_on_sentiment_and_says_what_it_needs(
    tmp_path: Path,
) -> None:
    data = _reviews(tmp_path / "reviews.tsv")
    text = cli("bench", "labels", "--model", "minilm", "--data", str(data), "--labels-sample",
               "6", check=True)  # fmt: skip
    assert "a negative review | a positive review (default)" in text.stdout
    assert "a bad film | a good film" in text.stdout
    assert "sample (6): accuracy" in text.stdout
    assert "best on the training sample: --label-words '" in text.stdout
    bad = cli("bench", "labels", "--model", "minilm", "--data", str(data),
              "--labels-candidates", "negative|positive;only one")  # fmt: skip
    assert bad.returncode == 2
    assert "'only one' has 1 word; each set needs one non-empty word for each of the 2" in (
        bad.stderr
    ), bad.stderr
    topics = tmp_path / "topics.tsv"
    topics.write_text("text\tlabel\nstocks fell\tbusiness\na late goal\tsport\n", "utf-8")
    none = cli("bench", "labels", "--model", "minilm", "--data", str(topics))
    assert none.returncode == 2
    assert "no built-in candidates for labels business, sport" in none.stderr, none.stderr
