"""The vocabulary of ``bench load``: a row's settings and its figures, what the relay reports,
and what the worker processes are told and report (load_workers.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .loadgen import Receipts

LAG_LIMIT_S = 5.0  # a row whose lag p99 is above this is saturated
KEPT_MIN = 0.95  # ... or whose nodes wrote less than this share of their records on time
RELAY = "r0"
RUN = "load"


@dataclass(frozen=True, slots=True)
class LoadRow:
    nodes: int  # simulated + real
    relay: bool
    real: int
    full: int  # simulated nodes that check every record (0: all)
    seconds: float
    warmup: float
    frame_rate: float
    relay_interval: float  # seconds between two bundles (``seedswarm relay --interval``)
    drain: float
    workers: int  # 0: one per NODES_PER_WORKER light nodes, plus one for the full ones


@dataclass(frozen=True, slots=True)
class RelayStats:
    """What the relay of a row says of itself (its /status, status.schema.RelayStatus)."""

    frames_forwarded: int
    presences_forwarded: int
    bundles_published: int
    bytes_forwarded: int
    dropped_overflow: int
    dropped: dict[str, dict[str, int]]

    @classmethod
    def from_json(cls, st: dict[str, Any]) -> RelayStats:
        return cls(
            frames_forwarded=int(st["frames_forwarded"]),
            presences_forwarded=int(st["presences_forwarded"]),
            bundles_published=int(st["bundles_published"]),
            bytes_forwarded=int(st["bytes_forwarded"]),
            dropped_overflow=int(st["dropped_overflow"]),
            dropped={
                str(r): {str(k): int(v) for k, v in c.items()} for r, c in st["dropped"].items()
            },
        )


@dataclass(frozen=True, slots=True)
class LoadResult:
    nodes: int
    relay: bool
    real: int
    full: int
    workers: int
    connected: int  # simulated nodes connected when the records began
    via_relay: int  # ... of them listening to the relay's bundles
    seconds: float  # the measured window
    load_avg: tuple[float, float]  # 1-minute load average at the window's start and end
    machine_cpu_pct: float  # all cores busy, % of the machine, over the window
    records: int  # own records written in the window, all nodes
    kept: float  # simulated nodes' records in the window / (nodes x seconds x rate)
    late_p99: float | None  # seconds a simulated node's record was written after it was due
    deliveries_per_s: float  # $SYS/broker/publish/messages/sent
    deliveries_per_node_frame: float  # deliveries_per_s / (nodes x frame rate)
    publishes_in_per_s: float  # $SYS/broker/publish/messages/received
    client_messages_per_s: float  # messages the simulated nodes' transports received
    broker_dropped: int  # $SYS/broker/publish/messages/dropped, the whole row
    broker_cpu_pct: float  # % of one core
    sims_cpu_pct: float
    relay_cpu_pct: float | None
    bytes_in_per_record: float
    bytes_out_per_delivery: float
    lag_p50: float | None
    lag_p99: float | None
    lag_max: float | None
    lag_samples: int
    lost: int | None  # None: the nodes' holdings could not be read
    complete_after_s: float | None  # from the last record due to every node holding all
    real_agree: bool | None  # the real nodes hold every record and one fingerprint
    relay_stats: RelayStats | None
    saturated: tuple[str, ...] = ()  # why, if it is


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """What a worker's nodes did so far (sent every second)."""

    at: float  # monotonic
    connected: int
    connects: int
    via_relay: int
    produced: int
    messages_in: int  # messages their transports received
    full_delivered: tuple[int, ...]  # peers' records each full node accepted


@dataclass(frozen=True, slots=True)
class WorkerResult:
    """What a worker's nodes did, once stopped."""

    sent: dict[tuple[str, int], float]  # (node, first seq) -> when published (monotonic)
    receipts: Receipts  # every frame its nodes took, and when
    own: dict[str, int]  # records each node wrote
    held: dict[str, dict[str, int]]  # each full node's version vector
    origins: dict[str, float]  # each node's schedule origin
    status: WorkerStatus


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    index: int
    port: int
    manifest: str  # JSON
    names: tuple[str, ...]
    full: tuple[bool, ...]
    steps: int
    frame_rate: float
    connect_every: float  # seconds between two connections
    seed: int
