"""Typed settings: one frozen dataclass per command, built from flags, environment and TOML.

Each field is a setting and carries its own help, choices and check; ``options_of`` turns a
dataclass into the command-line options (options.py resolves flag > environment > config file
> default), and ``build`` turns the resolved values back into the dataclass. Checks that need
no model run here, so a typo costs one line (``ConfigError``), not a model load.

    --batch-size 16   ==   SEEDSWARM_BATCH_SIZE=16   ==   batch_size = 16   (in node.toml)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from seedswarm.protocol.errors import DecodeError
from seedswarm.protocol.ids import check_node_id

from .addresses import BrokerAddress, check_device, parse_listen, parse_shard
from .errors import ConfigError
from .fields import build, options_of, setting
from .options import KERNELS, at_least_one, non_negative, positive, steps_limit
from .run_settings import RunSettings

# the names commands import from here, wherever they live
__all__ = [
    "BrokerAddress",
    "LocalSettings",
    "MqttSettings",
    "NodeSettings",
    "RelaySettings",
    "RunSettings",
    "SwarmSettings",
    "build",
    "check_device",
    "options_of",
    "parse_listen",
    "parse_shard",
    "setting",
]


def _batch_growth() -> float:
    """``--batch-growth``, the same option for one node and for a swarm's nodes."""
    growth: float = setting(
        1.0,
        "grow the batch by up to this factor as a decaying rate falls (batch / rate fraction, "
        "capped; 1: a fixed batch)",
        check=at_least_one,
        advanced=True,
    )
    return growth


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalSettings:
    """This host's part of a run: who it is, its shard of the data, its hardware."""

    node: str = setting("n0", "this node's id (A-Z a-z 0-9 _ -)")
    batch_size: int = setting(
        0,
        "examples per forward pass (0: 64 for a classification run trained by fzoo, else 16)",
        check=non_negative,
        advanced=True,
    )
    batch_growth: float = _batch_growth()
    device: str = setting("auto", "auto, cpu, cuda or cuda:N", advanced=True)
    kernel: str = setting(
        "auto", "sign/apply kernel: " + ", ".join(KERNELS), choices=KERNELS, advanced=True
    )
    amp: bool = setting(
        False, "run forward passes in bf16 autocast on GPU (weights stay fp32)", advanced=True
    )
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
class MqttSettings:
    """How a node or a relay reaches the broker, and the first level of its topics."""

    broker: str = setting(
        "mqtt://127.0.0.1:1883", "MQTT broker URL: mqtt://host:port or mqtts://host:port"
    )
    username: str = setting("", "broker user name", advanced=True)
    password: str = setting("", "broker password", advanced=True)
    ca_file: str = setting("", "CA certificate file for mqtts://", advanced=True)
    topic_prefix: str = setting("seedswarm", "first MQTT topic level", advanced=True)
    mqtt_version: str = setting(
        "auto",
        "MQTT version: auto (5, else 3.1.1), 5 or 3.1.1",
        choices=("auto", "5", "3.1.1"),
        advanced=True,
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
    advertise: str = setting(
        "", "status URL to tell peers (default: the bound address)", advanced=True
    )
    steps: int = setting(
        -1,
        "own ZO steps the node's log should hold, then it keeps serving and applying: a total, "
        "so a restarted node finishes its run (-1: no limit)",
        check=steps_limit,
    )
    max_latency: float = setting(
        5.0,
        "most seconds an own record waits to be published (a frame goes out once full, "
        "when its oldest record is this old, or when the next step could not join it in time)",
        check=non_negative,
        advanced=True,
    )
    frame_records: int = setting(1024, "most records in one frame", check=positive, advanced=True)
    step_interval: float = setting(
        0.0,
        "at most one own step per this many seconds (0: as fast as the model goes)",
        check=non_negative,
        advanced=True,
    )
    presence_interval: float = setting(
        60.0,
        "seconds between presence heartbeats (presence also goes out when it changes)",
        check=positive,
        advanced=True,
    )
    follow_relays: str = setting(
        "auto",
        "auto: while a relay the run names is up, listen to its bundles instead of to every "
        "node; off: always listen to every node",
        choices=("auto", "off"),
        advanced=True,
    )
    snapshot_every: int = setting(
        2000, "records applied between snapshots", check=positive, advanced=True
    )
    join_wait: float = setting(
        1.0,
        "seconds to listen for peers before the first step",
        check=non_negative,
        advanced=True,
    )
    drain_timeout: float = setting(
        10.0,
        "seconds to wait for the broker's acks at shutdown",
        check=non_negative,
        advanced=True,
    )
    shutdown_timeout: float = setting(
        300.0,
        "most seconds a stop may take (the step in hand, writing own records, the last "
        "snapshot, goodbye, drain); then the node gives up on it and exits 1 (0: no limit)",
        check=non_negative,
        advanced=True,
    )
    key_file: str = setting(
        "", "this node's Ed25519 private key (hex), for signed runs", advanced=True
    )
    torch_threads: int = setting(
        0,
        "torch threads on the model thread (0: torch's default)",
        check=non_negative,
        advanced=True,
    )
    join: str = setting(
        "auto",
        "how to catch up with a long run: snapshot (a peer's, audited), replay (the whole log), "
        "or auto (a snapshot when replay would take much longer)",
        choices=("auto", "snapshot", "replay"),
        advanced=True,
    )
    audit_blocks: int = setting(
        256,
        "blocks of 128 weights a joiner recomputes from the log to check a snapshot",
        check=positive,
        advanced=True,
    )
    snapshot_quorum: int = setting(
        1,
        "peers that must advertise the same snapshot before a joiner takes it",
        check=positive,
        advanced=True,
    )
    eval: str = setting("", "held-out data to evaluate on while training (same format as --data)")
    eval_every: int = setting(
        0,
        "evaluate each time the records applied reach a multiple of this (0: never); every "
        "node evaluates at the same counts",
        check=non_negative,
    )
    eval_limit: int = setting(
        0,
        "evaluate on the first N examples only (0: all)",
        check=non_negative,
        advanced=True,
    )

    def __post_init__(self) -> None:
        # the checks that need no model: a typo costs one line, not a model load
        parse_listen(self.http)
        if bool(self.eval) != bool(self.eval_every):
            raise ConfigError("--eval FILE and --eval-every N go together")
        check_shutdown(self.shutdown_timeout, self.drain_timeout)

    @property
    def node(self) -> str:
        return self.local.node

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()


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
    advertise: str = setting(
        "", "status URL to tell peers (default: the bound address)", advanced=True
    )
    presence_interval: float = setting(
        60.0,
        "seconds between the relay's presence heartbeats",
        check=positive,
        advanced=True,
    )
    drain_timeout: float = setting(
        10.0,
        "seconds to wait for the broker's acks at shutdown",
        check=non_negative,
        advanced=True,
    )
    shutdown_timeout: float = setting(
        60.0,
        "most seconds a stop may take (store what is queued, goodbye, drain); then the relay "
        "gives up on it and exits 1 (0: no limit)",
        check=non_negative,
        advanced=True,
    )

    def __post_init__(self) -> None:
        try:
            check_node_id(self.relay)
        except DecodeError as exc:
            raise ConfigError(f"--relay: {exc}") from exc
        parse_listen(self.http)
        check_shutdown(self.shutdown_timeout, self.drain_timeout)
        if not self.manifest:
            raise ConfigError(
                "relay needs --manifest: the run's manifest.json (any node's data directory "
                "has one)"
            )


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
        "own steps each node's log should hold (a total: in a directory of an earlier swarm it "
        "takes the rest); the swarm ends once all are done and agree (-1: run until Ctrl+C)",
        check=steps_limit,
    )
    batch_size: int = setting(
        0,
        "examples per forward pass (0: 64 for a classification run trained by fzoo, else 16)",
        check=non_negative,
        advanced=True,
    )
    batch_growth: float = _batch_growth()
    device: str = setting("cpu", "device of every node: cpu, cuda, cuda:N, auto", advanced=True)
    kernel: str = setting(
        "auto", "sign/apply kernel: " + ", ".join(KERNELS), choices=KERNELS, advanced=True
    )
    torch_threads: int = setting(
        1,
        "torch threads per node (0: torch's default)",
        check=non_negative,
        advanced=True,
    )
    signed: bool = setting(
        False, "give every node an Ed25519 key and sign every frame", advanced=True
    )
    timeout: float = setting(
        0.0, "give up after this many seconds (0: never)", check=non_negative, advanced=True
    )
    settle: float = setting(
        30.0,
        "after Ctrl+C, seconds the nodes may take to apply the last records and agree",
        check=non_negative,
        advanced=True,
    )
    presence_interval: float = setting(
        5.0, "seconds between the nodes' heartbeats", check=positive, advanced=True
    )
    max_latency: float = setting(
        1.0,
        "most seconds a node's record waits to be published",
        check=non_negative,
        advanced=True,
    )
    eval: str = setting("", "held-out data every node evaluates on while training")
    eval_every: int = setting(
        0,
        "every node evaluates when its records applied reach a multiple of this",
        check=non_negative,
    )
    eval_limit: int = setting(
        0,
        "evaluate on the first N examples only (0: all)",
        check=non_negative,
        advanced=True,
    )
    json: bool = setting(False, "print the nodes' final status as one JSON object")

    def __post_init__(self) -> None:
        check_device(self.device)
        if self.broker:
            BrokerAddress.parse(self.broker)
        if bool(self.eval) != bool(self.eval_every):
            raise ConfigError("--eval FILE and --eval-every N go together")


def check_shutdown(shutdown_timeout: float, drain_timeout: float) -> None:
    """The drain is part of the shutdown: a bound shorter than it would cut every stop short."""
    if shutdown_timeout and shutdown_timeout <= drain_timeout:
        raise ConfigError(
            f"--shutdown-timeout {shutdown_timeout:g} is not longer than --drain-timeout "
            f"{drain_timeout:g}, a part of it: raise it (or 0 for no limit)"
        )
