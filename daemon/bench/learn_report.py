"""The report of ``bench learn``: where each arm reached the target and where it ended, its
ratios to the reference arms (``summarise``), the table, and the plot."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from seedswarm.daemon.console import table

from .learn_arms import ArmResult, Point


@dataclass(frozen=True, slots=True)
class ArmSummary:
    result: ArmResult
    reached: Point | None  # the first evaluation at or past the target
    forwards_vs_spsa: float | None  # forward passes to the target, against spsa's
    seconds_vs_spsa: float | None
    seconds_vs_adamw: float | None
    seconds_vs_one_node: float | None  # a -2n or -2t arm against the same arm plain
    seconds_vs_one_node_after_startup: float | None  # a swarm arm, its start-up left out

    @property
    def name(self) -> str:
        return self.result.arm.name

    @property
    def final(self) -> Point:
        return self.result.curve[-1]

    @property
    def seconds_per_forward(self) -> float | None:
        last = self.final
        return last.seconds / last.forwards if last.forwards else None

    def to_json(self) -> dict[str, Any]:
        r = self.result
        out: dict[str, Any] = {
            "arm": self.name,
            "settings": asdict(r.arm),
            "startup_s": r.startup_s,
            "reached": asdict(self.reached) if self.reached else None,
            "final": asdict(self.final),
            "start": asdict(r.curve[0]),
            "seconds_per_forward": self.seconds_per_forward,
            "curve": [asdict(p) for p in r.curve],
            **r.notes.to_json(),
            "forwards_vs_spsa": self.forwards_vs_spsa,
            "seconds_vs_spsa": self.seconds_vs_spsa,
            "seconds_vs_adamw": self.seconds_vs_adamw,
            "seconds_vs_one_node": self.seconds_vs_one_node,
        }
        if self.seconds_vs_one_node_after_startup is not None:
            out["seconds_vs_one_node_after_startup"] = self.seconds_vs_one_node_after_startup
        return out


@dataclass(frozen=True, slots=True)
class LearnSummary:
    target: float
    metric: str  # accuracy (classification) or loss (a causal LM)
    arms: tuple[ArmSummary, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "metric": self.metric,
            "arms": [a.to_json() for a in self.arms],
        }


def first_reaching(curve: Sequence[Point], target: float, classify: bool) -> Point | None:
    for p in curve:
        if classify and p.accuracy is not None and p.accuracy >= target:
            return p
        if not classify and p.loss <= target:
            return p
    return None


def summarise(results: Sequence[ArmResult], target: float, classify: bool) -> LearnSummary:
    """Per arm: where it reached the target and where it ended; ratios to spsa and adamw."""
    reached = {r.arm.name: first_reaching(r.curve, target, classify) for r in results}
    startup = {r.arm.name: r.startup_s for r in results}

    def ratio(name: str, ref: str, key: str) -> float | None:
        mine, other = reached[name], reached.get(ref)
        if not (mine and other and getattr(other, key)):
            return None
        return float(getattr(mine, key)) / float(getattr(other, key))

    arms = []
    for r in results:
        name = r.arm.name
        base = name.removesuffix("-2n").removesuffix("-2t")
        after = None
        hit, one = reached[name], reached.get(base)
        if r.arm.kind == "swarm" and hit and one:
            # the swarm's clock includes its start-up; the in-process arm's does not
            after = (hit.seconds - startup[name]) / one.seconds
        arms.append(
            ArmSummary(
                result=r,
                reached=hit,
                forwards_vs_spsa=ratio(name, "spsa", "forwards"),
                seconds_vs_spsa=ratio(name, "spsa", "seconds"),
                seconds_vs_adamw=ratio(name, "adamw", "seconds"),
                seconds_vs_one_node=ratio(name, base, "seconds") if base != name else None,
                seconds_vs_one_node_after_startup=after,
            )
        )
    return LearnSummary(target, "accuracy" if classify else "loss", tuple(arms))


def print_summary(summary: LearnSummary) -> str:
    metric = summary.metric
    head = f"target: {metric} {'>=' if metric == 'accuracy' else '<='} {summary.target}"

    def f(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    rows = []
    for a in summary.arms:
        hit, last = a.reached, a.final
        rows.append(
            [
                a.name,
                f(hit.records, "d") if hit else "missed",
                f(hit.forwards, "d") if hit else "-",
                f(hit.seconds, ".0f") if hit else "-",
                f(a.forwards_vs_spsa, ".2f"),
                f(a.seconds_vs_adamw, ".2f"),
                f(a.seconds_vs_one_node, ".2f"),
                f(last.value(metric), ".4f"),
                f"{last.records}/{last.forwards}/{last.seconds:.0f}",
                f(a.seconds_per_forward, ".3f"),
            ]
        )
    headers = [
        "arm", "records to target", "forwards", "seconds", "fw vs spsa", "s vs adamw",
        "s vs 1 node", f"final {metric}", "records/forwards/s at end", "s/forward",
    ]  # fmt: skip
    return f"{head}\n{table(headers, rows)}"


# -- plot --------------------------------------------------------------------------------------

COLORS = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip


def write_plot(summary: LearnSummary, model: str, path: Path) -> str:
    """Accuracy (or loss) against training seconds, one line per arm; returns how it was drawn.

    With matplotlib installed (it is not a dependency of seedswarm), a labelled figure; without
    it, a PNG made by ``plain_png`` from the standard library (zlib): the same lines, axes and
    target, no text, the colours listed in the printed output.
    """
    metric = summary.metric
    series = [
        (a.name, [(p.seconds, v) for p in a.result.curve if (v := p.value(metric)) is not None])
        for a in summary.arms
    ]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plain_png(series, summary.target, path)
        return "zlib (matplotlib is not installed: pip install matplotlib for a labelled plot)"
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for i, (name, pts) in enumerate(series):
        rgb = tuple(c / 255 for c in COLORS[i % len(COLORS)])
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker=".", label=name, color=rgb)
    ax.axhline(summary.target, color="black", linestyle="--", linewidth=0.8, label="target")
    ax.set_xlabel("training wall-clock (s)")
    ax.set_ylabel(f"held-out {metric}")
    ax.set_title(f"seedswarm bench learn: {model}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return "matplotlib"


def plain_png(
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]], target: float, path: Path
) -> None:
    import struct
    import zlib

    import numpy as np

    w, h, pad = 800, 500, 40
    img = np.full((h, w, 3), 255, dtype=np.uint8)
    pts = [p for _, ps in series for p in ps]
    xs = [x for x, _ in pts] or [0.0, 1.0]
    ys = [y for _, y in pts] + [target]
    x0, x1 = 0.0, max(max(xs), 1e-9)
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5, y1 + 0.5

    def px(x: float, y: float) -> tuple[int, int]:
        return (
            int(pad + (x - x0) / (x1 - x0) * (w - 2 * pad)),
            int(h - pad - (y - y0) / (y1 - y0) * (h - 2 * pad)),
        )

    def line(a: tuple[int, int], b: tuple[int, int], color: tuple[int, int, int]) -> None:
        n = max(abs(b[0] - a[0]), abs(b[1] - a[1]), 1)
        for t in range(n + 1):
            x = round(a[0] + (b[0] - a[0]) * t / n)
            y = round(a[1] + (b[1] - a[1]) * t / n)
            img[max(0, y - 1) : y + 1, max(0, x - 1) : x + 1] = color

    line(px(x0, y0), px(x1, y0), (0, 0, 0))
    line(px(x0, y0), px(x0, y1), (0, 0, 0))
    line(px(x0, target), px(x1, target), (160, 160, 160))
    for i, (_, ps) in enumerate(series):
        for a, b in itertools.pairwise(ps):
            line(px(*a), px(*b), COLORS[i % len(COLORS)])
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    path.write_bytes(png)
