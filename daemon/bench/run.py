"""``seedswarm bench WHICH``: run one benchmark, print its typed result for a person or, with
``--json``, as one JSON object (``{"bench": WHICH, "host": ..., **result}``).

  step     one ZO step vs two forward passes vs MeZO's loop, and their peak memory  (step.py)
  apply    replay records/s vs one pass over the weights vs naive randn             (apply.py)
  wire     bytes per record through a real broker, by frame size                    (wire.py)
  quant    1-byte records vs the unquantised gradient, same seeds                   (quant.py)
  live     every byte of a live swarm per record, real and simulated nodes          (live.py)
  join     a late joiner: replay vs an audited snapshot                             (join.py)
  control  the control plane's cost at one node as the swarm grows                  (control.py)
  load     up to a thousand nodes on one broker, with and without a relay           (load.py)
  learn    ways of training to a target, side by side                               (learn.py)
  exact    millions of records in two orders and two batchings: one state, the headroom  (exact.py)
  scale    the swarm's records-efficiency for N = 1 .. 32 nodes, in virtual time        (scale.py)
  noise    how much of a batch's gradient is sampling noise, by batch size               (noise.py)
  labels   which label words the base model ranks best, before any record              (labels.py)

Every benchmark measures its ratios side by side in one run (common.py says why).
"""

from __future__ import annotations

import sys
from typing import Any, Protocol

from seedswarm.daemon.console import emit_json

from .common import Host
from .settings import BenchSettings


class Result(Protocol):
    def to_json(self) -> dict[str, Any]: ...


def run_bench(s: BenchSettings) -> int:
    result, text = _run(s)
    if s.json:
        emit_json({"bench": s.which, "host": Host.here().to_json(), **result.to_json()})
        return 0
    if s.which != "learn":  # learn's report opens with its own header
        print(Host.here().line())
    print(text)
    sys.stdout.flush()
    return 0


def _run(s: BenchSettings) -> tuple[Result, str]:
    """The benchmark's result, and its report for a person."""
    which = s.which
    if which == "step":
        from .step import bench_step, print_step

        step = bench_step(s)
        return step, print_step(step)
    if which == "apply":
        from .apply import bench_apply, print_apply

        apply = bench_apply(s)
        return apply, print_apply(apply)
    if which == "wire":
        from .wire import bench_wire, print_wire

        wire = bench_wire(s)
        return wire, print_wire(wire)
    if which == "quant":
        from .quant import bench_quant, print_quant

        quant = bench_quant(s)
        return quant, print_quant(quant)
    if which == "live":
        from .live import bench_live, print_live

        live = bench_live(s)
        return live, print_live(live)
    if which == "join":
        from .join import bench_join, print_join

        join = bench_join(s)
        return join, print_join(join)
    if which == "control":
        from .control import bench_control, print_control

        control = bench_control(s)
        return control, print_control(control)
    if which == "load":
        from .load import bench_load, print_load

        load = bench_load(s)
        return load, print_load(load)
    if which == "learn":
        from .learn import bench_learn, print_learn

        learn = bench_learn(s)
        return learn, print_learn(learn)
    if which == "exact":
        from .exact import bench_exact, print_exact

        exact = bench_exact(s)
        return exact, print_exact(exact)
    if which == "scale":
        from .scale import bench_scale
        from .scale_report import print_scale

        scale = bench_scale(s)
        return scale, print_scale(scale)
    if which == "noise":
        from .noise import bench_noise, print_noise

        noise = bench_noise(s)
        return noise, print_noise(noise)
    if which == "labels":
        from .labels import bench_labels, print_labels

        labels = bench_labels(s)
        return labels, print_labels(labels)
    raise AssertionError(f"no benchmark {which!r}")  # the command line offers only BENCHES
