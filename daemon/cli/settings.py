"""The settings of the one-shot commands (``train``, ``replay``, ``eval``, ``status``,
``log`` and its ``export`` / ``import``, ``keygen``) and of ``broker``: typed like every other command's (daemon/settings.py
holds the shared pieces and those of the runtime: node, relay, swarm)."""

from __future__ import annotations

from dataclasses import dataclass

from seedswarm.daemon.errors import ConfigError
from seedswarm.daemon.options import KERNELS, non_negative, port_number, positive
from seedswarm.daemon.settings import LocalSettings, RunSettings, check_device, setting


def _limit(v: int) -> str | None:
    return None if v >= -1 else "must not be negative"


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainSettings:
    run: RunSettings
    local: LocalSettings
    steps: int = setting(
        200,
        "own ZO steps the run directory should hold: a total, so on a directory that already "
        "holds some it takes the rest (an FZOO step writes K records)",
        check=non_negative,
    )
    out: str = setting("", "run directory to write (required)")
    eval: str = setting("", "held-out data to evaluate on (same format as --data)")
    eval_every: int = setting(
        0, "evaluate every N steps (0: at start and end only)", check=non_negative
    )
    eval_limit: int = setting(
        0,
        "evaluate on the first N examples only (0: all)",
        check=non_negative,
        advanced=True,
    )
    frame_records: int = setting(256, "records per frame in the log", check=positive, advanced=True)
    json: bool = setting(False, "print one JSON object instead of text")

    def __post_init__(self) -> None:
        if not self.out:
            raise ConfigError(
                "train needs --out RUN_DIR (where to write the manifest, log and snapshot)"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplaySettings:
    run_dir: str = ""  # positional
    out: str = setting("", "directory to save the fine-tuned model to (save_pretrained)")
    order: str = setting(
        "log", "apply records in log order or shuffled", choices=("log", "shuffled")
    )
    shuffle_seed: int = setting(0, "seed of the shuffled order", advanced=True)
    batch: int = setting(
        256, "records applied per pass over the weights", check=positive, advanced=True
    )
    model: str = setting(
        "", "load the base from here instead of the manifest's reference", advanced=True
    )
    device: str = setting("auto", "auto, cpu, cuda or cuda:N", advanced=True)
    kernel: str = setting(
        "auto", "sign/apply kernel: " + ", ".join(KERNELS), choices=KERNELS, advanced=True
    )
    json: bool = setting(False, "print one JSON object instead of text")

    def __post_init__(self) -> None:
        check_device(self.device)


@dataclass(frozen=True, slots=True, kw_only=True)
class EvalSettings:
    run_dir: str = ""  # positional
    data: str = setting(
        "",
        "held-out data (.txt .jsonl .csv .tsv; default: the run's --eval data, else its "
        "training data)",
    )
    limit: int = setting(
        -1, "first N examples only (0: all; default: the run's --eval-limit)", check=_limit
    )
    batch_size: int = setting(64, "examples per forward pass", check=positive, advanced=True)
    compare_base: bool = setting(
        False, "also evaluate the base model on the same examples (what fine-tuning changed)"
    )
    model: str = setting(
        "", "load the base from here instead of the manifest's reference", advanced=True
    )
    device: str = setting("auto", "auto, cpu, cuda or cuda:N", advanced=True)
    kernel: str = setting(
        "auto", "sign/apply kernel: " + ", ".join(KERNELS), choices=KERNELS, advanced=True
    )
    json: bool = setting(False, "print one JSON object instead of text")

    def __post_init__(self) -> None:
        check_device(self.device)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSettings:
    target: str = ""  # positional: a status URL, or a data directory
    json: bool = setting(False, "print one JSON object (a node's: its /status as it sent it)")
    timeout: float = setting(10.0, "seconds to wait for the node", check=positive, advanced=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogSettings:
    target: str = ""  # positional: a status URL, or a data directory
    json: bool = setting(False, "print one JSON object (records, total, next cursor)")
    timeout: float = setting(10.0, "seconds to wait for the node", check=positive, advanced=True)
    after: str = setting("", "cursor (clock:node:seq) to continue after")
    limit: int = setting(50, "records to show", check=positive)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogExportSettings:
    run_dir: str = ""  # positional
    out: str = setting("", "the file to write (docs/PROTOCOL.md §11; required)")
    json: bool = setting(False, "print one JSON object instead of text")

    def __post_init__(self) -> None:
        if not self.out:
            raise ConfigError("log export needs --out FILE (where to write the log)")


@dataclass(frozen=True, slots=True, kw_only=True)
class LogImportSettings:
    file: str = ""  # positional
    out: str = setting("", "a new data directory to write the run into (required)")
    json: bool = setting(False, "print one JSON object instead of text")

    def __post_init__(self) -> None:
        if not self.out:
            raise ConfigError("log import needs --out DIR (a new data directory)")


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerSettings:
    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(
        1883, "port to listen on (0: a free port, printed at start)", check=port_number
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class KeygenSettings:
    out: str = setting("", "write the private key here (default: print it)")
    json: bool = setting(False, "print one JSON object instead of text")
