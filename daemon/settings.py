"""Typed settings: one frozen dataclass per command, built from flags, environment and TOML.

Each field is a setting and carries its own help, choices and check; ``options_of`` turns a
dataclass into the command-line options (options.py resolves flag > environment > config file
> default), and ``build`` turns the resolved values back into the dataclass. Checks that need
no model run here, so a typo costs one line (``ConfigError``), not a model load.

    --batch-size 16   ==   SEEDSWARM_BATCH_SIZE=16   ==   batch_size = 16   (in node.toml)
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from seedswarm.protocol.errors import DecodeError
from seedswarm.protocol.ids import check_node_id

from .errors import ConfigError
from .options import KERNELS, Option, non_negative, positive, steps_limit

T = TypeVar("T")
Check = Callable[[Any], str | None]


def setting(
    default: Any, help: str, *, choices: tuple[str, ...] | None = None, check: Check | None = None
) -> Any:
    """A dataclass field that is also a command-line option."""
    return field(default=default, metadata={"help": help, "choices": choices, "check": check})


def _exp(v: Any) -> str | None:
    return None if -60 <= v <= 0 else "must be in [-60, 0]"


def _regex(v: Any) -> str | None:
    try:
        re.compile(v)
    except re.error as exc:
        return f"is not a valid regular expression ({exc})"
    return None


def _is_settings(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def options_of(cls: type) -> list[Option]:
    """The command-line options of a settings dataclass (nested settings are left out)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if _is_settings(kind) or "help" not in f.metadata:
            continue
        out.append(
            Option(
                f.name,
                kind,
                f.default,
                f.metadata["help"],
                choices=f.metadata["choices"],
                check=f.metadata["check"],
            )
        )
    return out


def build(cls: type[T], values: Mapping[str, Any]) -> T:
    """The dataclass from resolved values (nested settings from the same values)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        kind = hints[f.name]
        if _is_settings(kind):
            kwargs[f.name] = build(kind, values)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)


# == pieces shared by several commands ==============================================================


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str, *, username: str = "", password: str = "") -> BrokerAddress:
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ConfigError(f"--broker {url!r}: use mqtt://host:port or mqtts://host:port")
        if not parts.hostname:
            raise ConfigError(f"--broker {url!r} names no host")
        try:
            port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError:
            raise ConfigError(f"--broker {url!r}: the port is not a number") from None
        user = username or (unquote(parts.username) if parts.username else None)
        pw = password or (unquote(parts.password) if parts.password else None)
        return cls(parts.hostname, port, parts.scheme == "mqtts", user or None, pw or None)

    def display(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` of the status endpoint (port 0: any free port)."""
    host, _, port = text.rpartition(":")
    if not host:
        host = "127.0.0.1"
    try:
        value = int(port)
    except ValueError:
        raise ConfigError(
            f"--http {text!r}: write it as host:port (port 0 picks a free one)"
        ) from None
    if not 0 <= value <= 65535:
        raise ConfigError(f"--http {text!r}: the port must be in 0..65535")
    return host.strip("[]"), value


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, k = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: write it as i/k, e.g. 0/3") from None
    if not (k >= 1 and 0 <= i < k):
        raise ConfigError(f"--shard {text}: need 0 <= i < k")
    return i, k


def check_device(name: str) -> None:
    if name not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", name):
        raise ConfigError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSettings:
    """What defines a run's manifest: nodes given the same values build the same run id."""

    name: str = setting("default", "run name: the topic namespace nodes meet in")
    model: str = setting("tiny", "base model: tiny, minilm, a directory, or a hub id")
    data: str = setting(
        "builtin:patterns",
        "training data: .txt .jsonl .csv .tsv, hf:REF, builtin:patterns",
    )
    task: str = setting(
        "auto",
        "auto (from the data), causal_lm or classify",
        choices=("auto", "causal_lm", "classify"),
    )
    scorer: str = setting(
        "auto", "how classify scores labels", choices=("auto", "lm", "mlm", "embed", "head")
    )
    labels: str = setting("", "class names in label-id order, separated by | or ,")
    label_words: str = setting("", "label words (lm/mlm) or descriptions (embed), separated by |")
    template: str = setting("", "prompt template with {text} (and {mask} for mlm)")
    temperature: float = setting(0.05, "embed scorer temperature", check=positive)
    seq_len: int = setting(0, "tokens per example (0: 64 for tiny, else 128)", check=non_negative)
    lr: float = setting(0.0, "learning rate (0: the model's default)", check=non_negative)
    epsilon: float = setting(1e-3, "perturbation size", check=positive)
    unit_exp: int = setting(0, "update unit u = 2**unit_exp (0: the model's default)", check=_exp)
    headroom_exp: int = setting(3, "grid headroom: weights may grow 2**headroom_exp times")
    trainable: str = setting(
        "", "regular expression over parameter names to train (default all)", check=_regex
    )
    init_seed: int = setting(
        0, "seed of randomly initialised parts (tiny model, new heads)", check=non_negative
    )
    estimator: str = setting(
        "auto",
        "how a step estimates the gradient: spsa (two passes, one record), fzoo (one plain and "
        "K perturbed passes, K records), or auto (fzoo for pretrained models, spsa for tiny)",
        choices=("auto", "spsa", "fzoo"),
    )
    directions: int = setting(
        0, "fzoo: directions (records) per step, 2..64 (0: 8)", check=non_negative
    )
    direction: str = setting(
        "dense",
        "random directions: dense signs, or lowrank (rank-1 signs for matrices: several times "
        "cheaper to replay)",
        choices=("dense", "lowrank"),
    )
    keys: str = setting(
        "", "signed run: node=PUBLIC_KEY_HEX pairs separated by commas, or @FILE with one per line"
    )
    manifest: str = setting(
        "", "a manifest.json to join instead of building one from these options"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalSettings:
    """This host's part of a run: who it is, its shard of the data, its hardware."""

    node: str = setting("n0", "this node's id (A-Z a-z 0-9 _ -)")
    batch_size: int = setting(16, "examples per forward pass", check=positive)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    kernel: str = setting("auto", "sign/apply kernel: " + ", ".join(KERNELS), choices=KERNELS)
    amp: bool = setting(False, "run forward passes in bf16 autocast on GPU (weights stay fp32)")
    shard: str = setting("0/1", "use shard i of k of the training data (i/k)")

    def __post_init__(self) -> None:
        try:
            check_node_id(self.node)
        except DecodeError as exc:
            raise ConfigError(f"--node: {exc}") from exc
        parse_shard(self.shard)
        check_device(self.device)

    @property
    def shard_pair(self) -> tuple[int, int]:
        return parse_shard(self.shard)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainSettings:
    run: RunSettings
    local: LocalSettings
    steps: int = setting(200, "ZO steps to take", check=non_negative)
    out: str = setting("", "run directory to write (required)")
    eval: str = setting("", "held-out data to evaluate on (same format as --data)")
    eval_every: int = setting(
        0, "evaluate every N steps (0: at start and end only)", check=non_negative
    )
    eval_limit: int = setting(
        0, "evaluate on the first N examples only (0: all)", check=non_negative
    )
    frame_records: int = setting(256, "records per frame in the log", check=positive)
    json: bool = setting(False, "print one JSON object instead of text")

    def __post_init__(self) -> None:
        if not self.out:
            raise ConfigError(
                "train needs --out RUN_DIR (where to write the manifest, log and snapshot)"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttSettings:
    """How a node or a relay reaches the broker, and the first level of its topics."""

    broker: str = setting(
        "mqtt://127.0.0.1:1883", "MQTT broker URL: mqtt://host:port or mqtts://host:port"
    )
    username: str = setting("", "broker user name")
    password: str = setting("", "broker password")
    ca_file: str = setting("", "CA certificate file for mqtts://")
    topic_prefix: str = setting("seedswarm", "first MQTT topic level")
    mqtt_version: str = setting(
        "auto", "MQTT version: auto (5, else 3.1.1), 5 or 3.1.1", choices=("auto", "5", "3.1.1")
    )

    def __post_init__(self) -> None:
        self.address()
        if not self.topic_prefix or any(c in self.topic_prefix for c in "/+#"):
            raise ConfigError(
                f"--topic-prefix {self.topic_prefix!r}: one topic level, without / + #"
            )

    def address(self) -> BrokerAddress:
        return BrokerAddress.parse(self.broker, username=self.username, password=self.password)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSettings:
    """``seedswarm node``: a daemon that trains with its peers through a broker."""

    run: RunSettings
    local: LocalSettings
    config: str = setting("", "a TOML file with any of these settings (keys as the flags, _ for -)")
    mqtt: MqttSettings = field(default_factory=lambda: MqttSettings())
    data_dir: str = setting("seedswarm-data", "where the log, manifest and snapshots live")
    http: str = setting("127.0.0.1:8470", "status endpoint host:port (port 0: a free port)")
    advertise: str = setting("", "status URL to tell peers (default: the bound address)")
    steps: int = setting(
        -1,
        "own ZO steps to take, then keep serving and applying (-1: no limit)",
        check=steps_limit,
    )
    max_latency: float = setting(
        5.0,
        "most seconds an own record waits to be published (a frame goes out once full or "
        "when its oldest record is this old)",
        check=non_negative,
    )
    frame_records: int = setting(1024, "most records in one frame", check=positive)
    step_interval: float = setting(
        0.0,
        "at most one own step per this many seconds (0: as fast as the model goes)",
        check=non_negative,
    )
    presence_interval: float = setting(
        60.0,
        "seconds between presence heartbeats (presence also goes out when it changes)",
        check=positive,
    )
    relays: str = setting(
        "auto",
        "auto: while a relay is up, listen to its bundles instead of to every node; off: "
        "always listen to every node",
        choices=("auto", "off"),
    )
    snapshot_every: int = setting(2000, "records applied between snapshots", check=positive)
    join_wait: float = setting(
        1.0, "seconds to listen for peers before the first step", check=non_negative
    )
    drain_timeout: float = setting(
        10.0, "seconds to wait for the broker's acks at shutdown", check=non_negative
    )
    key_file: str = setting("", "this node's Ed25519 private key (hex), for signed runs")
    torch_threads: int = setting(
        0, "torch threads on the model thread (0: torch's default)", check=non_negative
    )
    join: str = setting(
        "auto",
        "how to catch up with a long run: snapshot (a peer's, audited), replay (the whole log), "
        "or auto (a snapshot when replay would take much longer)",
        choices=("auto", "snapshot", "replay"),
    )
    audit_blocks: int = setting(
        256,
        "blocks of 128 weights a joiner recomputes from the log to check a snapshot",
        check=positive,
    )
    snapshot_quorum: int = setting(
        1,
        "peers that must advertise the same snapshot before a joiner takes it",
        check=positive,
    )
    eval: str = setting("", "held-out data to evaluate on while training (same format as --data)")
    eval_every: int = setting(
        0,
        "evaluate each time the records applied reach a multiple of this (0: never); every "
        "node evaluates at the same counts",
        check=non_negative,
    )
    eval_limit: int = setting(
        0, "evaluate on the first N examples only (0: all)", check=non_negative
    )

    def __post_init__(self) -> None:
        # the checks that need no model: a typo costs one line, not a model load
        parse_listen(self.http)
        if bool(self.eval) != bool(self.eval_every):
            raise ConfigError("--eval FILE and --eval-every N go together")

    @property
    def node(self) -> str:
        return self.local.node

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def keepalive(self) -> int:
        """MQTT keep-alive: as slow as the heartbeat allows, for few bytes, but at most a
        minute, so that a vanished node's will comes within 1.5 minutes."""
        return int(min(60.0, max(5.0, self.presence_interval)))


@dataclass(frozen=True, slots=True, kw_only=True)
class RelaySettings:
    """``seedswarm relay``: forwards every node's frames and presence in bundles."""

    mqtt: MqttSettings = field(default_factory=lambda: MqttSettings())
    relay: str = setting("r0", "this relay's id (A-Z a-z 0-9 _ -), unique in the run")
    manifest: str = setting("", "the run's manifest.json, or a node's data directory (required)")
    interval: float = setting(0.5, "seconds between two bundles", check=positive)
    data_dir: str = setting("seedswarm-relay", "where the relay keeps its copy of the log")
    key_file: str = setting(
        "", "signed runs: the relay's Ed25519 private key (the manifest must list it)"
    )
    http: str = setting("127.0.0.1:8480", "status endpoint host:port (port 0: a free port)")
    advertise: str = setting("", "status URL to tell peers (default: the bound address)")
    presence_interval: float = setting(
        60.0, "seconds between the relay's presence heartbeats", check=positive
    )

    def __post_init__(self) -> None:
        try:
            check_node_id(self.relay)
        except DecodeError as exc:
            raise ConfigError(f"--relay: {exc}") from exc
        parse_listen(self.http)
        if not self.manifest:
            raise ConfigError(
                "relay needs --manifest: the run's manifest.json (any node's data directory "
                "has one)"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplaySettings:
    run_dir: str = ""  # positional
    out: str = setting("", "directory to save the fine-tuned model to (save_pretrained)")
    order: str = setting(
        "log", "apply records in log order or shuffled", choices=("log", "shuffled")
    )
    shuffle_seed: int = setting(0, "seed of the shuffled order")
    batch: int = setting(256, "records applied per pass over the weights", check=positive)
    model: str = setting("", "load the base from here instead of the manifest's reference")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    kernel: str = setting("auto", "sign/apply kernel: " + ", ".join(KERNELS), choices=KERNELS)
    json: bool = setting(False, "print one JSON object instead of text")

    def __post_init__(self) -> None:
        check_device(self.device)


@dataclass(frozen=True, slots=True, kw_only=True)
class EvalSettings:
    run_dir: str = ""  # positional
    data: str = setting("", "held-out data (.txt .jsonl .csv .tsv)")
    limit: int = setting(0, "first N examples only (0: all)", check=non_negative)
    batch_size: int = setting(64, "examples per forward pass", check=positive)
    compare_base: bool = setting(
        False, "also evaluate the base model on the same examples (what fine-tuning changed)"
    )
    model: str = setting("", "load the base from here instead of the manifest's reference")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    kernel: str = setting("auto", "sign/apply kernel: " + ", ".join(KERNELS), choices=KERNELS)
    json: bool = setting(False, "print one JSON object instead of text")

    def __post_init__(self) -> None:
        check_device(self.device)
        if not self.data:
            raise ConfigError("eval needs --data FILE (held-out examples)")


@dataclass(frozen=True, slots=True, kw_only=True)
class SwarmSettings:
    """``seedswarm swarm``: a local swarm in one command."""

    run: RunSettings
    nodes: int = setting(3, "how many nodes to start", check=positive)
    broker: str = setting("", "use this broker instead of the embedded one (mqtt://host:port)")
    dir: str = setting("", "where the nodes keep their data (default: ./swarm-<run name>)")
    fresh: bool = setting(False, "delete the swarm directory first")
    steps: int = setting(
        -1,
        "own steps per node; the swarm ends once all are done and agree (-1: run until Ctrl+C)",
        check=steps_limit,
    )
    batch_size: int = setting(16, "examples per forward pass", check=positive)
    device: str = setting("cpu", "device of every node: cpu, cuda, cuda:N, auto")
    kernel: str = setting("auto", "sign/apply kernel: " + ", ".join(KERNELS), choices=KERNELS)
    torch_threads: int = setting(
        1, "torch threads per node (0: torch's default)", check=non_negative
    )
    signed: bool = setting(False, "give every node an Ed25519 key and sign every frame")
    timeout: float = setting(0.0, "give up after this many seconds (0: never)", check=non_negative)
    settle: float = setting(
        30.0,
        "after Ctrl+C, seconds the nodes may take to apply the last records and agree",
        check=non_negative,
    )
    presence_interval: float = setting(5.0, "seconds between the nodes' heartbeats", check=positive)
    max_latency: float = setting(
        1.0, "most seconds a node's record waits to be published", check=non_negative
    )
    eval: str = setting("", "held-out data every node evaluates on while training")
    eval_every: int = setting(
        0,
        "every node evaluates when its records applied reach a multiple of this",
        check=non_negative,
    )
    eval_limit: int = setting(
        0, "evaluate on the first N examples only (0: all)", check=non_negative
    )
    json: bool = setting(False, "print the nodes' final status as one JSON object")

    def __post_init__(self) -> None:
        check_device(self.device)
        if self.broker:
            BrokerAddress.parse(self.broker)
        if bool(self.eval) != bool(self.eval_every):
            raise ConfigError("--eval FILE and --eval-every N go together")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSettings:
    url: str = ""  # positional
    json: bool = setting(False, "print the JSON as the node sent it")
    timeout: float = setting(10.0, "seconds to wait for the node", check=positive)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogSettings:
    url: str = ""  # positional
    json: bool = setting(False, "print the JSON as the node sent it")
    timeout: float = setting(10.0, "seconds to wait for the node", check=positive)
    after: str = setting("", "cursor (clock:node:seq) to continue after")
    limit: int = setting(50, "records to show", check=positive)


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerSettings:
    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(
        1883, "port to listen on (0: a free port, printed at start)", check=non_negative
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class KeygenSettings:
    out: str = setting("", "write the private key here (default: print it)")
    json: bool = setting(False, "print one JSON object instead of text")
