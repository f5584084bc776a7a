"""One lifecycle for every long-running command: startup -> run -> shutdown -> teardown.

Theory of operation
-------------------
A ``Service`` (the node, the relay, the swarm launcher, the embedded broker) has three parts:
``startup`` opens what it needs (and may fail: a bad setting, a busy port), ``main`` runs until
it is told to stop and then winds down in its own order (a node: stop stepping, flush, say
goodbye, drain), and ``teardown`` closes whatever ``startup`` opened, whatever happened before.
A ``Lifecycle`` runs them, and is the one place that knows about:

  * signals: the first SIGINT or SIGTERM asks the service to stop (``stop`` is set: the
    shutdown stage begins); a second one is a hurry: by default it cancels ``main`` at once,
    or, for a service that has a quicker way down (the swarm launcher skips its settling), it
    only sets ``hurry``. Extra signals map to the service's own handlers (SIGUSR2: a node
    takes no more steps). Handlers are removed when the service ends, so a process may run
    several services one after another.
  * stage timeouts (``Stages``): how long startup may take, how long the shutdown stage may
    take from the stop request (then ``main`` is cancelled), and how long teardown may take
    (then it is abandoned with a warning). ``None``: as long as it takes.
  * exit codes: 0 when ``main`` ended by itself or after a stop, or what it returned; 2 for
    a ``ConfigError`` (a setting the user can fix); 1 for any other ``SeedswarmError`` (the disk
    refused a write, a stage ran out of time, a second signal cut the shutdown short). The
    error is kept in ``error``, one line, for the command line to print. Anything else is a bug
    and propagates.
  * the phase a status endpoint shows: starting, running, stopping, stopped.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from seedswarm.daemon.errors import ConfigError, StageTimeout
from seedswarm.protocol.errors import SeedswarmError

log = logging.getLogger("seedswarm.lifecycle")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Service(Protocol):
    """What a ``Lifecycle`` runs (see the module docstring)."""

    async def startup(self) -> None: ...

    async def main(self) -> int | None:
        """Run until ``Lifecycle.stop`` is set, then wind down; the exit code (None: 0)."""
        ...

    async def teardown(self) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Stages:
    startup: float | None = None  # seconds startup may take
    shutdown: float | None = None  # seconds from the stop request to the end of main
    teardown: float | None = 60.0  # seconds teardown may take
    hurry_cancels: bool = True  # a second signal cancels main (else it only sets ``hurry``)


@dataclass(slots=True)
class Lifecycle:
    name: str  # for messages: "node n0", "relay r0", "swarm", "broker"
    stages: Stages = field(default_factory=Stages)
    extra_signals: Mapping[signal.Signals, Callable[[], None]] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)  # set: wind down
    hurry: asyncio.Event = field(default_factory=asyncio.Event)  # set: a second signal came
    phase: str = "starting"  # starting, running, stopping, stopped
    error: str = ""  # why the exit code is not 0, in one line

    def request_stop(self) -> None:
        if not self.stop.is_set():
            log.info("%s: stopping", self.name)
        self.stop.set()
        if self.phase == "running":
            self.phase = "stopping"

    def _on_stop_signal(self) -> None:
        if self.stop.is_set():
            log.warning("%s: a second signal: hurrying", self.name)
            self.hurry.set()
        self.request_stop()

    async def run(self, service: Service, *, signals: bool = True) -> int:
        """Start ``service``, run it until it ends or is stopped, tear it down; the exit code.
        ``signals``: take the process's signals (a command does; services run side by side
        in one process, as in the in-process tests, do not)."""
        loop = asyncio.get_running_loop()
        handlers: dict[signal.Signals, Callable[[], None]] = {}
        if signals:
            handlers = dict.fromkeys(STOP_SIGNALS, self._on_stop_signal) | dict(self.extra_signals)
        for sig, handler in handlers.items():
            loop.add_signal_handler(sig, handler)
        code = 0
        try:
            await self._stage("startup", service.startup(), self.stages.startup)
            self.phase = "stopping" if self.stop.is_set() else "running"
            code = await self._main(service)
        except* ConfigError as eg:
            self.error, code = str(eg.exceptions[0]), 2
        except* SeedswarmError as eg:
            self.error, code = str(eg.exceptions[0]), 1
        finally:
            self.phase = "stopped"
            try:
                await self._stage("teardown", service.teardown(), self.stages.teardown)
            except StageTimeout as exc:
                log.warning("%s: %s; leaving the rest as it is", self.name, exc)
            for sig in handlers:
                loop.remove_signal_handler(sig)
        return code

    async def _stage(self, name: str, work: Awaitable[None], seconds: float | None) -> None:
        try:
            async with asyncio.timeout(seconds):
                await work
        except TimeoutError:
            raise StageTimeout(f"{self.name}: {name} took more than {seconds:g} s") from None

    async def _main(self, service: Service) -> int:
        """``main``, and the shutdown stage's clock once a stop is requested."""
        forced = ""
        async with asyncio.TaskGroup() as tg:
            main = tg.create_task(service.main(), name="main")
            stopped = tg.create_task(self.stop.wait(), name="stop")
            await asyncio.wait({main, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not main.done():
                hurried = tg.create_task(self.hurry.wait(), name="hurry")
                waits = {main, hurried} if self.stages.hurry_cancels else {main}
                await asyncio.wait(
                    waits, timeout=self.stages.shutdown, return_when=asyncio.FIRST_COMPLETED
                )
                if not main.done():
                    forced = (
                        "a second signal cut the shutdown short"
                        if self.hurry.is_set()
                        else f"the shutdown took more than {self.stages.shutdown:g} s"
                    )
                    main.cancel()
                hurried.cancel()
            stopped.cancel()
        if forced:
            raise StageTimeout(f"{self.name}: {forced}")
        return main.result() or 0


class Supervised(abc.ABC):
    """A ``Service`` that owns its ``Lifecycle`` (``life``): what the command line, the tests
    and the swarm launcher use of it — run it, read its phase and error, ask it to stop."""

    life: Lifecycle

    @abc.abstractmethod
    async def startup(self) -> None: ...

    @abc.abstractmethod
    async def main(self) -> int | None: ...

    @abc.abstractmethod
    async def teardown(self) -> None: ...

    async def run(self, *, signals: bool = True) -> int:
        """Start up, run until stopped, shut down; the exit code. ``signals``: take the
        process's signals (a daemon does; services side by side in one process do not)."""
        return await self.life.run(self, signals=signals)

    @property
    def phase(self) -> str:
        return self.life.phase

    @property
    def error(self) -> str:
        return self.life.error

    def request_stop(self) -> None:
        self.life.request_stop()
