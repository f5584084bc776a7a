"""The settings of ``seedswarm bench``: typed, like every other command's (daemon/settings.py),
and light, so that the command line (and a bad flag's one-line error) does not import torch.

One ``BenchSettings`` carries every benchmark's options (each names the benchmark it is for);
``learn``'s many options are a nested ``LearnSettings``. Each benchmark reads the fields it
needs; ``--json`` prints its typed result as one JSON object.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from seedswarm.daemon.errors import ConfigError
from seedswarm.daemon.options import KERNELS, non_negative, positive
from seedswarm.daemon.settings import setting

BENCHES = (
    "step", "apply", "wire", "quant", "live", "join", "control", "load", "learn", "exact", "scale",
    "noise", "labels",
)  # fmt: skip
DEFAULT_ARMS = "spsa,fzoo4,fzoo8,fzoo16,fzoo8-lowrank,fzoo8-2t,adamw,fzoo8-2n"


def _at_least_two(v: int) -> str | None:
    return None if v >= 2 else "must be at least 2 (the spread needs two batches)"


@dataclass(frozen=True, slots=True, kw_only=True)
class LearnSettings:
    """``seedswarm bench learn``: several ways of training, side by side (learn.py)."""

    arms: str = setting(DEFAULT_ARMS, "learn: comma-separated arms (see bench/learn.py)")
    budget_s: float = setting(600.0, "learn: training seconds per arm", check=positive)
    budget_forwards: int = setting(
        0, "learn: also stop after N forward passes (0: no limit)", check=non_negative
    )
    target: float = setting(0.80, "learn: target accuracy (or loss, for a causal LM)")
    eval_every_s: float = setting(30.0, "learn: evaluate every N training seconds", check=positive)
    eval_limit: int = setting(
        0, "learn: first N held-out examples only (0: all)", check=non_negative
    )
    learn_batch: int = setting(16, "learn: examples per forward pass", check=positive)
    spsa_lr: float = setting(
        0.0, "learn: SPSA learning rate (0: the model's default)", check=non_negative
    )
    spsa_unit_exp: int = setting(0, "learn: SPSA update unit exponent (0: the model's default)")
    fzoo_lr: float = setting(
        0.0, "learn: FZOO step per weight (0: the model's default)", check=non_negative
    )
    fzoo_unit_exp: int = setting(0, "learn: FZOO update unit exponent (0: the model's default)")
    epsilon: float = setting(1e-3, "learn: perturbation size", check=positive)
    trainable: str = setting("default", "learn: trainable regex for ZO arms ('default': preset)")
    fo_lr: float = setting(2e-5, "learn: AdamW learning rate", check=positive)
    amp: bool = setting(False, "learn: bf16 autocast forward passes (weights stay fp32)")
    stop_at_target: bool = setting(False, "learn: end an arm once it reaches the target")
    plot: str = setting("bench-learn.png", "learn: where to write the PNG plot ('' for none)")
    apply_model: str = setting("", "learn: also time dense vs low-rank apply on this model")
    apply_records: int = setting(256, "learn: records per batch for that", check=positive)


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchSettings:
    which: str = ""  # positional: the benchmark
    learn: LearnSettings = field(default_factory=LearnSettings)
    model: str = setting("opt-125m-config", "model: opt-125m-config, tiny, minilm, a directory")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    kernel: str = setting("auto", "sign/apply kernel: " + ", ".join(KERNELS), choices=KERNELS)
    batch_size: int = setting(8, "step: sequences per batch", check=positive)
    seq_len: int = setting(64, "step: tokens per sequence", check=positive)
    repeats: int = setting(5, "timed repetitions (the median is reported)", check=positive)
    batches: str = setting("1,16,256", "apply: record batch sizes")
    frames: str = setting("1,4,16,64,256,1024", "wire: records per frame")
    broker: str = setting("auto", "wire: mosquitto, amqtt, or auto (mosquitto if installed)")
    data: str = setting("builtin:patterns", "quant, labels: training data")
    eval: str = setting(
        "",
        "quant: held-out data (default: a slice of the training data); labels: held-out data "
        "to report beside the training sample (default: none)",
    )
    steps: int = setting(300, "quant: ZO steps per arm", check=positive)
    eval_every: int = setting(50, "quant: evaluate every N steps", check=positive)
    lr: float = setting(0.0, "quant: learning rate (0: the model's default)")
    unit_exp: int = setting(0, "quant: update unit exponent (0: the model's default)")
    rows: str = setting(
        "all",
        "live: all, or NODESxRATE items (3x40,100x2; RATE 0: unthrottled; more than 3 nodes: "
        "simulated)",
    )
    scale: float = setting(
        1.0, "live: scale every row's steps (0.1 for a quick look)", check=positive
    )
    signed: bool = setting(False, "live: also each row in a signed run")
    records: int = setting(20000, "join: records in the run a newcomer joins", check=positive)
    tail: int = setting(200, "join: records the donor applied after its snapshot")
    audit_blocks: int = setting(
        256, "join: blocks of 128 weights the joiner audits", check=positive
    )
    trials: int = setting(
        20000, "join: secret draws that measure the detection rate", check=positive
    )
    peers: str = setting("10,100,1000", "control: swarm sizes (peers one node hears)")
    nodes: str = setting("10,100,300,1000", "load: swarm sizes (nodes on one broker)")
    relay: str = setting(
        "both", "load: with a relay, without, or both", choices=("both", "on", "off")
    )
    seconds: float = setting(30.0, "load: the measured window", check=positive)
    warmup: float = setting(10.0, "load: seconds of records before the window")
    frame_rate: float = setting(1.0, "load: frames per second per node", check=positive)
    relay_interval: float = setting(0.5, "load: seconds between a relay's bundles", check=positive)
    drain: float = setting(60.0, "load: seconds gap filling gets after the last record")
    real: int = setting(0, "load: real seedswarm node processes (tiny model) among the nodes")
    full: int = setting(16, "load: simulated nodes that check every record (0: all)")
    workers: int = setting(0, "load: simulated nodes' processes (0: by the swarm size)")
    train_only: str = setting(
        "", "step, apply: regular expression of the tensors that train ('': all weights)"
    )
    exact_runs: str = setting(
        "minilm:10000000,tiny:10000000,opt-125m-config:1000000",
        "exact: MODEL:RECORDS items, separated by commas",
    )
    exact_q: str = setting(
        "realistic,worst",
        "exact: record values: realistic (mean |q| 35, or --exact-q-from's), worst (127, one "
        "sign), or both",
    )
    exact_direction: str = setting("dense", "exact: dense, lowrank, or dense,lowrank")
    exact_trainable: str = setting(
        "preset",
        "exact: the trainable tensors ('preset': what a node trains on that model by default; "
        "a low-rank row adds the first layer's attention matrices where the preset has none)",
    )
    exact_q_from: str = setting(
        "", "exact: a data directory whose log's record values the realistic rows draw from"
    )
    exact_every: int = setting(
        1_000_000, "exact: report the headroom every N records", check=positive
    )
    scale_nodes: str = setting("1,2,4,8,16,32", "scale: swarm sizes (the first must be 1)")
    scale_seeds: int = setting(3, "scale: seeds (runs) per swarm size", check=positive)
    scale_step_s: float = setting(
        2.0, "scale: virtual seconds between a node's own steps", check=positive
    )
    scale_latency: float = setting(
        1.0, "scale: a frame's latency (the nodes' --max-latency)", check=non_negative
    )
    scale_delay: float = setting(0.1, "scale: seconds a frame takes to arrive", check=non_negative)
    scale_target_loss: float = setting(0.50, "scale: target held-out loss")
    scale_target_accuracy: float = setting(
        0.76, "scale: target held-out accuracy (0: none)", check=non_negative
    )
    scale_budget: int = setting(
        6000, "scale: most records a run may take before it counts as missed", check=positive
    )
    scale_eval_every: int = setting(160, "scale: evaluate every N records", check=positive)
    scale_eval_limit: int = setting(
        0, "scale: first N held-out examples only (0: all)", check=non_negative
    )
    scale_batch: int = setting(16, "scale: examples per forward pass", check=positive)
    scale_plot: str = setting("bench-scale.png", "scale: where to write the plot ('' for none)")
    scale_real: str = setting(
        "", "scale: also run seedswarm swarm with these node counts, e.g. 2,4 (real processes)"
    )
    scale_real_records: int = setting(
        1600, "scale: records a real run takes in all before it stops", check=positive
    )
    scale_real_timeout: int = setting(
        3600, "scale: seconds a real run may take before it counts as failed", check=positive
    )
    noise_run: str = setting(
        "", "noise: a run directory (train --out, or a node's --data-dir) whose model to measure"
    )
    noise_data: str = setting("", "noise: training data (default: the run's own --data)")
    noise_batches: int = setting(
        200, "noise: batch gradients averaged at each point", check=_at_least_two
    )
    noise_sizes: str = setting("16,32,64,128", "noise: batch sizes to report")
    noise_groups: bool = setting(
        False,
        "noise: also per group of trainable tensors (layers folded): gradient, noise and "
        "curvature (Hutchinson, 3 backprops a batch), and what leaving each group out would do",
    )
    labels_candidates: str = setting(
        "",
        "labels: sets of label words to score, each in label order with |, sets separated by ; "
        "(default: built-in sets for negative/positive data)",
    )
    labels_sample: int = setting(
        2000, "labels: training examples (a seeded sample) each set is scored on", check=positive
    )
    labels_batch: int = setting(64, "labels: examples per forward pass", check=positive)
    adapter: str = setting(
        "none",
        "step, apply: train a LoRA adapter on the model instead of its weights (none or lora)",
        choices=("none", "lora"),
    )
    lora_rank: int = setting(8, "step, apply: LoRA rank (with --adapter lora)", check=positive)
    lora_alpha: float = setting(16.0, "step, apply: LoRA alpha", check=positive)
    lora_targets: str = setting(
        "", "step, apply: LoRA's modules, separated by commas (default: peft's for the model)"
    )
    json: bool = setting(False, "print one JSON object instead of text")


def sizes(text: str, flag: str, example: str = "1,16,256", least: int = 1) -> list[int]:
    """A list flag such as ``--batches 1,16,256``: integers of at least ``least``, at least
    one."""
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        out = []
    if not out or min(out) < least:
        what = "positive integers" if least == 1 else f"integers of {least} or more"
        raise ConfigError(f"--{flag}: a comma-separated list of {what}, e.g. {example}")
    return out
