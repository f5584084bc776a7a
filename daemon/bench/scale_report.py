"""The report of ``seedswarm bench scale``: the table a person reads and the PNG plot."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from seedswarm.daemon.console import table

from .curves import fmt_records, median_or_none
from .scale_real import RealRun
from .scale_result import ScalePoint, ScaleResult
from .settings import BenchSettings


def plot_scale(points: list[ScalePoint], real: list[RealRun], s: BenchSettings) -> str:
    """Efficiency against nodes (and each run's records to the target), as a PNG."""
    path = Path(s.scale_plot)
    series = [
        ("efficiency (loss)", [(p.nodes, p.efficiency_loss) for p in points if p.efficiency_loss]),
        (
            "efficiency (accuracy)",
            [(p.nodes, p.efficiency_accuracy) for p in points if p.efficiency_accuracy],
        ),
    ]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from .learn_report import plain_png

        plain_png([(n, [(math.log2(x), y) for x, y in pts]) for n, pts in series], 0.9, path)
        return str(path)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120)
    for name, pts in series:
        if pts:  # no accuracy target (a causal LM, or --scale-target-accuracy 0): no line
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=name)
    ax.axhline(0.9, color="black", linestyle="--", linewidth=0.8, label="0.9")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("nodes")
    ax.set_ylabel("records(1 node) / records(N nodes)")
    ax.set_title("records-efficiency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    for p in points:
        xs = [p.nodes] * len(p.runs)
        ys = [r.records_to_loss for r in p.runs]
        bx.scatter(xs, [y if y is not None else float("nan") for y in ys], color="tab:blue")
    if real:
        bx.scatter(
            [r.nodes for r in real],
            [r.records_to_loss if r.records_to_loss is not None else float("nan") for r in real],
            color="tab:orange", marker="x", label="seedswarm swarm (real processes)",
        )  # fmt: skip
        bx.legend(fontsize=8)
    bx.set_xscale("log", base=2)
    bx.set_xlabel("nodes")
    bx.set_ylabel(f"records to dev loss <= {s.scale_target_loss}")
    bx.set_title("each seed")
    bx.grid(alpha=0.3)
    fig.suptitle(f"seedswarm bench scale: {s.model}, step {s.scale_step_s} s, latency "
                 f"{s.scale_latency} s, delay {s.scale_delay} s")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def print_scale(r: ScaleResult) -> str:
    rows = [
        [
            str(p.nodes), fmt_records(p.records_to_loss), fmt_records(p.records_to_accuracy),
            "-" if p.efficiency_loss is None else f"{p.efficiency_loss:.2f}",
            "-" if p.efficiency_accuracy is None else f"{p.efficiency_accuracy:.2f}",
            "-" if p.speedup is None else f"{p.speedup:.1f}x",
            f"{statistics.mean(x.unseen_per_step for x in p.runs):.1f}",
        ]
        for p in r.points
    ]  # fmt: skip
    acc = "-" if r.target_accuracy is None else f"{r.target_accuracy:.3f}"
    head = (
        f"model {r.model}, data {r.data}, {r.estimator} ({r.records_per_step} records a step), "
        f"a step every {r.step_s} s, frame latency {r.latency_s} s, delay {r.delay_s} s; "
        f"targets: loss {r.target_loss}, accuracy {acc}"
    )
    headers = [
        "nodes", "records to loss", "records to acc", "efficiency (loss)", "efficiency (acc)",
        "speed-up", "unseen a step",
    ]  # fmt: skip
    foot = (
        f"measured here: a peer record applies in {r.apply_s_per_record * 1e6:.1f} us, an own "
        f"step takes {r.step_s_measured:.2f} s; medians over {len(r.points[0].runs)} seeds"
        + (f"; plot: {r.plot}" if r.plot else "")
    )
    lines = [head, table(headers, rows), foot]
    if r.real:
        spread = {
            p.nodes: [x.records_to_loss for x in p.runs if x.records_to_loss is not None]
            for p in r.points
        }
        real_rows = []
        for n in sorted({x.nodes for x in r.real}):
            runs = [x for x in r.real if x.nodes == n]
            sim = spread.get(n, [])
            got = [x.records_to_loss for x in runs]
            inside = (
                "-" if not sim or None in got
                else f"{sum(min(sim) <= g <= max(sim) for g in got if g is not None)} of {len(got)}"
            )  # fmt: skip
            real_rows.append([
                str(n), " / ".join(fmt_records(g) for g in got), fmt_records(median_or_none(list(got))),
                f"{min(sim):,.0f}-{max(sim):,.0f}" if sim else "not simulated", inside,
            ])  # fmt: skip
        title = (
            "seedswarm swarm, real processes through a real broker (records to the loss target,"
            " from n0's log):"
        )
        lines += [
            title,
            table(
                ["nodes", "records, each seed", "median", "simulated, min-max", "inside"],
                real_rows,
            ),
        ]
    return "\n".join(lines)
