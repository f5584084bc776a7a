"""The lifecycle of a long-running command (daemon/peer/lifecycle.py), with small services of
the test's own: exit codes, the phases, the stop and hurry signals (real ones, sent to this
process), and the stage timeouts."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from seedswarm.daemon.errors import ConfigError, StoreError
from seedswarm.daemon.peer.lifecycle import Lifecycle, Stages

pytestmark = pytest.mark.asyncio


class Service:
    """Runs until stopped (or ``returns`` at once), then takes ``winding`` seconds to wind down;
    records what happened."""

    def __init__(
        self,
        life: Lifecycle,
        *,
        fail_startup: Exception | None = None,
        returns: int | None = None,
        winding: float = 0.0,
    ) -> None:
        self.life = life
        self.fail_startup = fail_startup
        self.returns = returns
        self.winding = winding
        self.seen: list[str] = []

    async def startup(self) -> None:
        self.seen.append(f"startup in {self.life.phase}")
        if self.fail_startup is not None:
            raise self.fail_startup

    async def main(self) -> int | None:
        self.seen.append(f"main in {self.life.phase}")
        if self.returns is not None:
            return self.returns
        await self.life.stop.wait()
        self.seen.append(f"winding down in {self.life.phase}")
        try:
            await asyncio.sleep(self.winding)
        except asyncio.CancelledError:
            self.seen.append("cancelled")
            raise
        self.seen.append("wound down")
        return None

    async def teardown(self) -> None:
        self.seen.append(f"teardown in {self.life.phase}")


async def test_a_stop_winds_down_in_order_and_exits_0() -> None:
    life = Lifecycle("test")
    service = Service(life)
    run = asyncio.create_task(life.run(service, signals=False))
    await asyncio.sleep(0.05)
    assert life.phase == "running"
    life.request_stop()
    assert await run == 0
    assert life.error == ""
    assert service.seen == [
        "startup in starting",
        "main in running",
        "winding down in stopping",
        "wound down",
        "teardown in stopped",
    ]


async def test_exit_codes_of_errors_and_of_main() -> None:
    for error, code in ((ConfigError("bad --flag"), 2), (StoreError("disk full"), 1)):
        life = Lifecycle("test")
        service = Service(life, fail_startup=error)
        assert await life.run(service, signals=False) == code
        assert life.error == str(error)
        assert service.seen == ["startup in starting", "teardown in stopped"]  # no main
    life = Lifecycle("test")
    assert await life.run(Service(life, returns=3), signals=False) == 3  # ended by itself
    life = Lifecycle("test")
    buggy = Service(life, fail_startup=RuntimeError("bug"))
    with pytest.raises(RuntimeError, match="bug"):  # a bug is not an exit code: it propagates
        await life.run(buggy, signals=False)
    assert buggy.seen[-1] == "teardown in stopped"  # torn down all the same


async def test_a_shutdown_that_takes_too_long_is_cut_short() -> None:
    life = Lifecycle("test", Stages(shutdown=0.1))
    service = Service(life, winding=30.0)
    run = asyncio.create_task(life.run(service, signals=False))
    await asyncio.sleep(0.05)
    life.request_stop()
    assert await asyncio.wait_for(run, 10) == 1
    assert "the shutdown took more than 0.1 s" in life.error
    assert service.seen[-2:] == ["cancelled", "teardown in stopped"]


async def test_signals_stop_then_hurry() -> None:
    """SIGTERM asks to stop; a second one cuts the wind-down short (``hurry_cancels``), or only
    sets ``hurry`` for a service with a quicker way down of its own."""
    for cancels in (True, False):
        life = Lifecycle("test", Stages(hurry_cancels=cancels))
        service = Service(life, winding=0.5 if not cancels else 30.0)
        run = asyncio.create_task(life.run(service, signals=True))
        await asyncio.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(life.stop.wait(), 5)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(life.hurry.wait(), 5)
        code = await asyncio.wait_for(run, 10)
        if cancels:
            assert code == 1
            assert "a second signal cut the shutdown short" in life.error
            assert "cancelled" in service.seen
        else:
            assert code == 0
            assert "wound down" in service.seen
        # the handlers are gone with the service: the loop has none left to remove
        loop = asyncio.get_running_loop()
        assert not loop.remove_signal_handler(signal.SIGTERM)
        assert not loop.remove_signal_handler(signal.SIGINT)
