"""Output for people and for scripts: progress, tables, and one JSON object with --json."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO


def emit_json(obj: Any, stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    out.write(json.dumps(obj, sort_keys=True, default=str) + "\n")
    out.flush()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class Progress:
    """A progress bar on a terminal (tqdm), plain lines every few seconds otherwise."""

    def __init__(
        self, total: int, *, desc: str, enabled: bool, stream: TextIO | None = None
    ) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self._bar: Any = None
        self._last = 0.0
        self._t0 = time.monotonic()
        self._first: int | None = None  # the count at the first update (a resumed run's start)
        self.desc = desc
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, file=self.stream, dynamic_ncols=True)

    def update(self, done: int, **info: Any) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            if self._first is None:  # a resumed run: its rate counts from here
                self._first = self._bar.initial = done
            self._bar.n = done
            self._bar.set_postfix(info, refresh=False)
            self._bar.refresh()
            return
        now = time.monotonic()
        if self._first is None:
            self._first, self._t0 = done, now
        if done < self.total and now - self._last < 2.0:
            return
        self._last = now
        rate = (done - self._first) / max(now - self._t0, 1e-9)
        extra = " ".join(f"{k} {v}" for k, v in info.items())
        self.stream.write(f"{self.desc} {done}/{self.total} {extra} ({rate:.1f}/s)\n")
        self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def say(msg: str, *, quiet: bool = False) -> None:
    if not quiet:
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()
