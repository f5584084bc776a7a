"""A held-out curve against records, and where it first reaches a target (bench scale)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CurvePoint:
    records: int
    loss: float
    accuracy: float | None


def crossing(curve: list[CurvePoint], target: float, *, below: bool) -> float | None:
    """Records at which the curve first reaches ``target``, interpolated linearly."""
    prev: CurvePoint | None = None
    for c in curve:
        value = c.loss if below else c.accuracy
        if value is None:
            continue
        hit = value <= target if below else value >= target
        if hit:
            if prev is None:
                return float(c.records)
            pv = prev.loss if below else prev.accuracy
            assert pv is not None
            if pv == value:
                return float(c.records)
            frac = (pv - target) / (pv - value)
            return prev.records + frac * (c.records - prev.records)
        prev = c
    return None


def median_or_none(values: list[float | None]) -> float | None:
    """The median, or None when any run missed the target (a missed run is no number)."""
    if not values or any(v is None for v in values):
        return None
    return float(statistics.median(v for v in values if v is not None))


def fmt_records(v: float | None) -> str:
    return "missed" if v is None else f"{v:,.0f}"
