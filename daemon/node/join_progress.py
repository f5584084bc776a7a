"""What /status and the node's log show of a join (join.py), as it goes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from seedswarm.daemon.status.schema import JoinStatus


@dataclass(slots=True)
class JoinProgress:
    """What /status shows of a join."""

    mode: str  # snapshot, replay, auto
    state: str = "waiting"  # waiting, asking, downloading, fetching log, auditing, loading,
    # done, replay
    reason: str = ""  # why it replays, or how it joined
    donor: str = ""
    bytes: int = 0
    total: int = 0
    started: float = 0.0  # of the download
    deadline_s: float = 0.0  # the most the step in progress (download, log fetch) may take
    records: int = 0  # the snapshot's
    audit_blocks: int = 0
    audit_seconds: float = 0.0
    began: float = 0.0  # monotonic time the join began (0: not yet)
    ended: float = 0.0  # ... and ended
    refused: dict[str, int] = field(default_factory=dict)  # donor -> snapshots refused
    refusals: dict[str, str] = field(default_factory=dict)  # donor -> why, the last time

    def line(self) -> str:
        """What the progress line in the log says of the join while it runs."""
        if self.state == "downloading":
            eta = self.eta_s
            return (
                f"downloading the snapshot of {self.donor} ({self.records} records): "
                f"{self.bytes / 1e6:.1f} of {self.total / 1e6:.1f} MB"
                + ("" if eta is None else f", ETA {eta:.0f} s")
            )
        if self.state in ("asking", "fetching log", "auditing", "loading"):
            return f"{self.state} for the snapshot of {self.donor} ({self.records} records)"
        return self.state

    def refuse(self, donor: str, why: str) -> None:
        self.refused[donor] = self.refused.get(donor, 0) + 1
        self.refusals[donor] = why[:300]
        self.reason = f"the snapshot of {donor} was refused: {why}"

    def statistics(self) -> JoinStatus:
        end = self.ended or time.monotonic()
        return JoinStatus(
            mode=self.mode,
            state=self.state,
            reason=self.reason,
            donor=self.donor,
            bytes=self.bytes,
            total=self.total,
            eta_s=self.eta_s,
            records=self.records,
            audit_blocks=self.audit_blocks,
            audit_seconds=round(self.audit_seconds, 3),
            refused=dict(self.refused),
            refusals=dict(self.refusals),
            seconds=round(end - self.began, 3) if self.began else 0.0,
            deadline_s=round(self.deadline_s, 3),
        )

    @property
    def eta_s(self) -> float | None:
        if not self.total or not self.bytes or self.state != "downloading":
            return None
        elapsed = time.monotonic() - self.started
        return elapsed * (self.total - self.bytes) / self.bytes
