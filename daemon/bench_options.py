"""The options of ``seedswarm bench``, apart from the benchmarks themselves, so that the command
line (and a bad flag's one-line error) does not import torch to learn them."""

from __future__ import annotations

from .options import DEVICE, JSON, KERNEL, Option, non_negative, positive

BENCH_OPTIONS = (
    Option("model", str, "opt-125m-config", "model: opt-125m-config, tiny, minilm, a directory"),
    DEVICE,
    KERNEL,
    Option("batch_size", int, 8, "step: sequences per batch", check=positive),
    Option("seq_len", int, 64, "step: tokens per sequence", check=positive),
    Option("repeats", int, 5, "timed repetitions (the median is reported)", check=positive),
    Option("batches", str, "1,16,256", "apply: record batch sizes"),
    Option("frames", str, "1,4,16,64,256,1024", "wire: records per frame"),
    Option("broker", str, "auto", "wire: mosquitto, amqtt, or auto (mosquitto if installed)"),
    Option("data", str, "builtin:patterns", "quant: training data"),
    Option("eval", str, "", "quant: held-out data (default: a slice of the training data)"),
    Option("steps", int, 300, "quant: ZO steps per arm", check=positive),
    Option("eval_every", int, 50, "quant: evaluate every N steps", check=positive),
    Option("lr", float, 0.0, "quant: learning rate (0: the model's default)"),
    Option("unit_exp", int, 0, "quant: update unit exponent (0: the model's default)"),
    Option(
        "rows",
        str,
        "all",
        "live: all, or NODESxRATE items (3x40,100x2; RATE 0: unthrottled; more than 3 nodes: "
        "simulated)",
    ),
    Option(
        "scale", float, 1.0, "live: scale every row's steps (0.1 for a quick look)", check=positive
    ),
    Option("signed", bool, False, "live: also each row in a signed run"),
    Option("records", int, 20000, "join: records in the run a newcomer joins", check=positive),
    Option("tail", int, 200, "join: records the donor applied after its snapshot"),
    Option(
        "audit_blocks", int, 256, "join: blocks of 128 weights the joiner audits", check=positive
    ),
    Option(
        "trials", int, 20000, "join: secret draws that measure the detection rate", check=positive
    ),
    Option("peers", str, "10,100,1000", "control: swarm sizes (peers one node hears)"),
    Option("nodes", str, "10,100,300,1000", "load: swarm sizes (nodes on one broker)"),
    Option(
        "relay", str, "both", "load: with a relay, without, or both", choices=("both", "on", "off")
    ),
    Option("seconds", float, 30.0, "load: the measured window", check=positive),
    Option("warmup", float, 10.0, "load: seconds of records before the window"),
    Option("frame_rate", float, 1.0, "load: frames per second per node", check=positive),
    Option("relay_interval", float, 0.5, "load: seconds between a relay's bundles", check=positive),
    Option("drain", float, 60.0, "load: seconds gap filling gets after the last record"),
    Option("real", int, 0, "load: real seedswarm node processes (tiny model) among the nodes"),
    Option("full", int, 16, "load: simulated nodes that check every record (0: all)"),
    Option("workers", int, 0, "load: simulated nodes' processes (0: by the swarm size)"),
    JSON,
)


BENCHES = ("step", "apply", "wire", "quant", "live", "join", "control", "load", "learn")

DEFAULT_ARMS = "spsa,fzoo4,fzoo8,fzoo16,fzoo8-lowrank,fzoo8-2t,adamw,fzoo8-2n"

LEARN_OPTIONS = (
    Option("arms", str, DEFAULT_ARMS, "learn: comma-separated arms (see bench_learn.py)"),
    Option("budget_s", float, 600.0, "learn: training seconds per arm", check=positive),
    Option(
        "budget_forwards",
        int,
        0,
        "learn: also stop after N forward passes (0: no limit)",
        check=non_negative,
    ),
    Option("target", float, 0.80, "learn: target accuracy (or loss, for a causal LM)"),
    Option("eval_every_s", float, 30.0, "learn: evaluate every N training seconds", check=positive),
    Option(
        "eval_limit", int, 0, "learn: first N held-out examples only (0: all)", check=non_negative
    ),
    Option("learn_batch", int, 16, "learn: examples per forward pass", check=positive),
    Option(
        "spsa_lr",
        float,
        0.0,
        "learn: SPSA learning rate (0: the model's default)",
        check=non_negative,
    ),
    Option("spsa_unit_exp", int, 0, "learn: SPSA update unit exponent (0: the model's default)"),
    Option(
        "fzoo_lr",
        float,
        0.0,
        "learn: FZOO step per weight (0: the model's default)",
        check=non_negative,
    ),
    Option("fzoo_unit_exp", int, 0, "learn: FZOO update unit exponent (0: the model's default)"),
    Option("epsilon", float, 1e-3, "learn: perturbation size", check=positive),
    Option("trainable", str, "default", "learn: trainable regex for ZO arms ('default': preset)"),
    Option("fo_lr", float, 2e-5, "learn: AdamW learning rate", check=positive),
    Option("amp", bool, False, "learn: bf16 autocast forward passes (weights stay fp32)"),
    Option("stop_at_target", bool, False, "learn: end an arm once it reaches the target"),
    Option("plot", str, "bench-learn.png", "learn: where to write the PNG plot ('' for none)"),
    Option("apply_model", str, "", "learn: also time dense vs low-rank apply on this model"),
    Option("apply_records", int, 256, "learn: records per batch for that", check=positive),
)
