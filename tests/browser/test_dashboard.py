"""The dashboard in a real Chromium against a real running swarm (issue 14, must-show 1).

``seedswarm swarm`` starts two nodes (the tiny model on a small labelled table, evaluating
every 40 records) and prints the dashboard's URL; the test opens it as a person would and
checks, while the swarm trains:

  * no console error and no uncaught exception, from loading to the end;
  * the loss chart has points, and more of them a moment later; so has the eval chart, whose
    accuracy points start with the first evaluation;
  * every number the page shows of ``/status`` is the number a ``/status`` answer held: each
    such element names its place in the JSON (``data-path``) and its format, the page's own
    copy of the status is one the node served (the test relays every ``/status`` answer), and
    the text is that value in that format; the same for the peer's card in the swarm view,
    which the page filled from the peer's own endpoint (another origin: CORS);
  * a peer whose endpoint stops answering (SIGSTOP) is shown as unreachable, in words and
    without charts, and comes back when it answers again;
  * a screenshot is saved (``tmp_path``; ``SEEDSWARM_README_SHOT=1`` takes the README's
    instead: a MiniLM/SST-2 swarm from the shared data, written to ``docs/dashboard.png``).
"""

from __future__ import annotations

import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..helpers import env, get_text, wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Route

pytestmark = [pytest.mark.slow, pytest.mark.broker]

REPO = Path(__file__).resolve().parents[2]
SST2 = REPO.parent / "shared" / "data" / "sst2"
README_SHOT = os.environ.get("SEEDSWARM_README_SHOT") == "1"
VIEWPORT = {"width": 1400, "height": 1000}

# Python's reading of app.js's FORMATS. JavaScript's toFixed rounds the exact binary value
# half away from zero, which is Decimal's ROUND_HALF_UP on Decimal(float).
DASH = "–"


def _fixed(x: float, digits: int) -> str:
    return str(Decimal(x).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


FORMATS: dict[str, Callable[[Any], str]] = {
    "text": str,
    "int": str,
    "limit": lambda v: "no limit" if v < 0 else str(v),
    "f1": lambda v: _fixed(v, 1),
    "f2": lambda v: _fixed(v, 2),
    "f4": lambda v: _fixed(v, 4),
    "pct": lambda v: _fixed(v * 100, 1) + "%",
    "secs": lambda v: _fixed(v, 1) + " s",
    "hex16": lambda v: v[:16],
    "yesno": lambda v: "yes" if v else "no",
    "alive": lambda v: "live" if v else "gone",
    "big": lambda v: _big(v),
}


def _big(v: float) -> str:
    """app.js's big(): digits with commas below 10^6, else one decimal of a power of ten."""
    if v < 1e6:
        return f"{round(v):,}"
    e = math.floor(math.log10(v))
    return f"{_fixed(v / 10**e, 1)} × 10^{e}"


def shown(kind: str, value: Any) -> str:
    return DASH if value is None or value == "" else FORMATS[kind](value)


def at(obj: Any, path: list[Any]) -> Any:
    for key in path:
        if obj is None:
            return None
        obj = obj[key]
    return obj


def sentiment_tsv(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    good = ["a great film", "wonderful and warm", "a joy to watch", "brilliant acting"]
    bad = ["a dull mess", "boring and flat", "a waste of time", "terrible acting"]
    rows = ["sentence\tlabel"]
    for _ in range(n):
        label = rng.randrange(2)
        rows.append(f"{rng.choice(good if label else bad)}\t{label}")
    path.write_text("\n".join(rows) + "\n")
    return path


def swarm_args(tmp_path: Path) -> list[str]:
    if README_SHOT:
        assert (SST2 / "train.tsv").is_file(), f"the SST-2 data is not at {SST2}"
        return [
            "--model", "minilm", "--data", str(SST2 / "train.tsv"), "--eval",
            str(SST2 / "dev.tsv"), "--eval-limit", "200", "--eval-every", "64",
        ]  # fmt: skip
    train = sentiment_tsv(tmp_path / "train.tsv", 200, seed=1)
    dev = sentiment_tsv(tmp_path / "dev.tsv", 40, seed=2)
    return ["--data", str(train), "--eval", str(dev), "--eval-every", "40", "--eval-limit", "24"]


def pid_of(node_dir: Path) -> int:
    """The pid of the ``seedswarm node`` process that keeps its data in ``node_dir``."""
    want = f"--data-dir\0{node_dir}\0".encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if want in (proc / "cmdline").read_bytes():
                    return int(proc.name)
            except OSError:
                continue
    raise AssertionError(f"no node process for {node_dir}")


# one look at the page, taken in one turn of its event loop, so the texts and the status
# they were filled from belong together
LOOK = """() => {
  const fields = (root) => [...root.querySelectorAll("[data-path]")].map((e) => ({
    path: JSON.parse(e.dataset.path), format: e.dataset.format, text: e.textContent }));
  const own = [...document.querySelectorAll("[data-path]")].filter((e) => !e.closest("#cards"));
  const s = window.seedswarm;
  return {
    status: s.status,
    own: own.map((e) => ({ path: JSON.parse(e.dataset.path), format: e.dataset.format, text: e.textContent })),
    cards: Object.fromEntries([...document.querySelectorAll("#cards .card")].map((c) => [c.dataset.node, {
      fields: fields(c), unreachable: c.classList.contains("unreachable"),
      error: c.querySelector(".error").textContent,
      loss: Number(c.querySelector(".chart").dataset.points), canvases: c.querySelectorAll("canvas").length }])),
    peers: Object.fromEntries([...s.peers].map(([name, p]) => [name, p.status])),
    points: Object.fromEntries([...document.querySelectorAll(".charts .chart")].map((c) => [c.id, Number(c.dataset.points)])),
    evalAccuracy: s.curves.evals.map((p) => p.accuracy),
    agreement: document.getElementById("agreement").textContent,
    evalHint: document.getElementById("eval-hint").textContent,
    headroom: document.getElementById("headroom-words").textContent,
    tiles: document.querySelectorAll(".tile").length,
    plainTiles: [...document.querySelectorAll(".tile")].filter((t) => {
      const p = t.querySelector(".plain"); return p && p.textContent.trim().length > 20; }).length,
    cardWeights: Object.fromEntries([...document.querySelectorAll("#cards .card")].map((c) => [
      c.dataset.node, (c.querySelector(".nums .weights") || {}).textContent])),
  };
}"""


def look(page: Page) -> dict[str, Any]:
    out: dict[str, Any] = page.evaluate(LOOK)
    return out


def check_fields(fields: list[dict[str, Any]], status: dict[str, Any], where: str) -> None:
    for f in fields:
        want = shown(f["format"], at(status, f["path"]))
        assert f["text"] == want, f"{where}: {f['path']} shows {f['text']!r}, /status has {want!r}"


def test_the_dashboard_of_a_training_swarm(chromium: Browser, tmp_path: Path) -> None:
    started = time.monotonic()
    err_path = tmp_path / "swarm.err"
    with err_path.open("wb") as err:
        swarm = subprocess.Popen(
            [sys.executable, "-m", "seedswarm.daemon.cli", "swarm", "--nodes", "2",
             "--dir", str(tmp_path / "swarm"), "--settle", "20", *swarm_args(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, env=env(),
            start_new_session=True,
        )  # fmt: skip
    stopped: int | None = None
    try:

        def printed_url() -> bool:
            if swarm.poll() is not None:
                raise AssertionError(f"the swarm exited early:\n{err_path.read_text()}")
            return "dashboard: http://" in err_path.read_text()

        wait_until(printed_url, timeout=120, what="seedswarm swarm to print the dashboard's URL")
        (url,) = re.findall(r"dashboard: (http://\S+/)$", err_path.read_text(), re.M)

        def n0_ready() -> bool:
            try:
                return get_text(url + "readyz", timeout=2)[0] == 200
            except OSError:
                return False

        wait_until(n0_ready, timeout=180, what="node n0 to be ready")

        page = chromium.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
        errors: list[str] = []

        def on_console(msg: ConsoleMessage) -> None:
            if msg.type == "error":
                errors.append(f"console: {msg.text} ({msg.location})")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
        served: list[dict[str, Any]] = []

        def relay(route: Route) -> None:  # the node's own answer, kept to compare with
            answer = route.fetch()
            served.append(answer.json())
            route.fulfill(response=answer)

        page.route(url + "status", relay)
        page.goto(url)
        # the page names the swarm's peer, and draws curves of both nodes
        page.wait_for_function(
            """() => document.querySelectorAll('#cards .card canvas').length >= 4
                  && Number(document.getElementById('loss-chart').dataset.points) > 0
                  && Number(document.getElementById('eval-chart').dataset.points) > 0""",
            timeout=120_000,
        )
        first = look(page)
        page.wait_for_function(
            f"""() => Number(document.getElementById('loss-chart').dataset.points)
                      > {first["points"]["loss-chart"]}
                  && Number(document.getElementById('eval-chart').dataset.points)
                      > {first["points"]["eval-chart"]}""",
            timeout=120_000,
        )
        if README_SHOT:  # a few evaluations for the picture (MiniLM takes ~3 s each)
            page.wait_for_function(
                "() => Number(document.getElementById('eval-chart').dataset.points) >= 6",
                timeout=600_000,
            )
        second = look(page)
        assert second["points"]["loss-chart"] > first["points"]["loss-chart"] > 0
        assert second["points"]["rate-chart"] >= 1

        for seen in (first, second):
            st = seen["status"]
            assert st in served, "the page shows a status the node did not serve"
            check_fields(seen["own"], st, "this node")
            paths = {tuple(f["path"]) for f in seen["own"]}
            for needed in [
                ("steps", "taken"), ("steps", "per_s"), ("steps", "examples"), ("records", "applied"),
                ("records_per_s",), ("loss", "recent"), ("eval", "accuracy"), ("eval", "loss"),
                ("eval", "records"), ("vv_digest",), ("fingerprint",), ("headroom_bits",),
                ("dropped_total",), ("version_vector", "n0"), ("peers", 0, "lag"),
                ("peers", 0, "last_seen_s"), ("peers", 0, "loss"),
            ]:  # fmt: skip
                assert needed in paths, f"the page does not show {needed}"
            assert st["eval"] is not None
            assert st["steps"]["examples"] is not None  # shown as a number, not a dash
            assert st["eval"]["accuracy"] is not None
            assert seen["evalAccuracy"][0] is not None  # accuracy from the first evaluation
            peer = seen["peers"]["n1"]
            assert peer is not None
            assert peer["node"] == "n1"
            check_fields(seen["cards"]["n0"]["fields"], st, "the card of n0")
            check_fields(seen["cards"]["n1"]["fields"], peer, "the card of n1")
            for card in seen["cards"].values():
                assert not card["unreachable"], card["error"]
                assert card["loss"] > 0
                assert card["canvases"] >= 2
            # plain words: every card says what it shows; the hint names the command that
            # started the node; weights are compared in words, "same records -> same weights"
            assert seen["plainTiles"] == seen["tiles"] == 6
            assert seen["evalHint"] == "set with seedswarm swarm --eval FILE --eval-every N"
            assert seen["headroom"] == "exact, same records → same weights"
            assert seen["cardWeights"]["n0"] == "this node"
            assert seen["cardWeights"]["n1"] in (
                "same records, same weights", "other records (in flight)",
                "same records, not hashed yet",
            )  # fmt: skip
            assert seen["agreement"].startswith(
                ("✓ same records, same weights", "no reachable peer")
            )
            assert st["started_by"] == "swarm"
        # the peer's card is what the peer itself says, read from its own endpoint
        n1_url = next(p["http"] for p in second["status"]["peers"] if p["node"] == "n1")
        assert second["peers"]["n1"]["http"] == n1_url
        # hovering the loss chart shows the raw loss of the step under the cursor
        page.hover("#loss-chart .u-over")
        legend = page.locator("#loss-chart .u-legend .u-series").nth(2)
        assert legend.locator(".u-label").inner_text() == "loss"
        assert re.fullmatch(r"\d+\.\d{4}", legend.locator(".u-value").inner_text())
        page.mouse.move(0, 0)
        assert not errors, errors

        shot = REPO / "docs" / "dashboard.png" if README_SHOT else tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000

        # a peer that stops answering is shown as unreachable, in words; then it comes back
        n1 = pid_of(tmp_path / "swarm" / "n1")
        os.kill(n1, signal.SIGSTOP)
        try:
            page.wait_for_function(
                """() => { const c = document.querySelector('#cards .card[data-node="n1"]');
                           return c.classList.contains('unreachable')
                               && c.querySelector('.minis').hidden
                               && /unreachable: cannot reach http/.test(c.textContent)
                               && /unreachable/.test(document.querySelector(
                                      '#peer-table tr[data-peer="n1"]').textContent); }""",
                timeout=30_000,
            )
        finally:
            os.kill(n1, signal.SIGCONT)
        page.wait_for_function(
            """() => !document.querySelector('#cards .card[data-node="n1"]')
                         .classList.contains('unreachable')""",
            timeout=60_000,
        )
        assert not errors, errors  # an unanswered request is aborted, not an error
        page.close()

        swarm.send_signal(signal.SIGINT)
        stopped = swarm.wait(120)
    finally:
        if swarm.poll() is None:
            swarm.kill()
            swarm.wait()
    assert stopped == 0, err_path.read_text()[-3000:]
    print(f"dashboard test: {time.monotonic() - started:.1f} s; screenshot {shot}")
