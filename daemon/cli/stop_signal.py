"""How ``train`` (daemon/cli/single.py) takes Ctrl+C and SIGTERM: at the end of a step."""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any


class StopAtStepEnd:
    """The first SIGINT (Ctrl+C) or SIGTERM (``kill``, ``timeout``) asks ``train`` to stop at the
    end of the step it is taking: the records of every finished step are then sealed and stored
    and a snapshot saved, so the same command resumes with nothing lost (the exit code is then
    128 + the signal's number, as for a command the signal ended). The previous handlers are
    back from then on, so a second signal has its usual effect at once (Ctrl+C: "interrupted";
    SIGTERM: the process ends); that loses only records not yet stored (the log stays whole:
    the same command still resumes, from the last stored frame). A signal the process was
    started to ignore (a job a script put in the background) stays ignored, and outside the
    main thread (a test calling ``train`` from a worker) signals are left alone."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal = ""  # the signal's name once one came
        self._previous: dict[signal.Signals, Any] = {}

    def _on(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signal.Signals(signum).name
        self._restore()

    def _restore(self) -> None:
        previous, self._previous = self._previous, {}  # taken first: a signal may come meanwhile
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def __enter__(self) -> StopAtStepEnd:
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in self.SIGNALS:
            current = signal.getsignal(sig)
            if current is signal.SIG_IGN or current is None:  # None: a handler set from C
                continue
            self._previous[sig] = current  # kept before ours is in place
            signal.signal(sig, self._on)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._restore()
