"""The docker test's slow start, begun in the background when the session's collection ends.

Starting dockerd, building the two stand-in base images and the node image takes two to four
minutes, nearly all of it in other processes (debootstrap, pip, docker build). The root
conftest starts ``PREBUILD`` as soon as it knows a docker test will run and orders the docker
tests last, so that time overlaps with the rest of the suite; their fixtures then take what it
made, waiting for it if it is not done, and it fails them with its error if it failed. What
it runs runs at ``nice`` 10 (engine.background), dockerd and so the builds inside it too, so it
slows the foreground tests as little as it can: it takes the CPU they leave while they wait.

What the thread does is exactly what the fixtures did before, in the same order, with the same
timed stages (printed in the docker test's summary). What it would print goes to its own list,
replayed by the fixture that waits for it, rather than into whatever test's captured output
runs meanwhile. Whatever it made that no fixture took (a session that ended before the docker
tests, or stopped by ``-x``) is removed when pytest ends (``abandon``).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import pytest

from .engine import (
    MOSQUITTO,
    PYTHON,
    Engine,
    ImageLedger,
    Timings,
    background,
    build_standin,
    docker,
    run,
    say,
    start_engine,
)

REPO = Path(__file__).resolve().parents[2]


def copy_checkout(dst: Path) -> None:
    """The working tree as git sees it (tracked and untracked, not ignored), else a plain walk."""
    rels: list[str]
    git = run(
        ["git", "-C", REPO, "ls-files", "-co", "--exclude-standard", "-z"], check=False, env=None
    )
    if git.returncode == 0 and git.stdout:
        rels = [r for r in git.stdout.split("\0") if r]
    else:
        skip = {".git", ".venv", "build", "dist", "__pycache__", ".mypy_cache", ".pytest_cache"}
        rels = [
            str(p.relative_to(REPO))
            for p in REPO.rglob("*")
            if not (set(p.relative_to(REPO).parts) & skip) and (p.is_file() or p.is_symlink())
        ]
    for rel in rels:
        src, out = REPO / rel, dst / rel
        if not os.path.lexists(src):
            continue  # deleted in the working tree
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            out.symlink_to(os.readlink(src))
        elif src.is_file():
            shutil.copy2(src, out)


def collect_wheels(ctx: Path) -> Path:
    """docker/wheels for OFFLINE=1: the project built here, and its dependencies."""
    if sys.version_info[:2] != (3, 11):
        pytest.fail("the image runs CPython 3.11: collect its wheels with a Python 3.11 host")
    wheels = ctx / "docker/wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    run([*pip, "wheel", "-q", "--no-deps", "-w", wheels, ctx], cwd=ctx, timeout=900)
    (project,) = wheels.glob("seedswarm-*.whl")
    # the torch this host runs (the CPU build in CI) rather than whatever the index prefers
    constraints = ctx / "constraints.txt"
    constraints.write_text(f"torch=={version('torch')}\n")
    run([*pip, "download", "-q", "-d", wheels, "-c", constraints, project], timeout=900)
    return wheels


def pinned_tags() -> tuple[str, str]:
    """The base images the project's files name: python from the Dockerfile, Mosquitto from
    compose.yaml (a pinned 2.0.x tag)."""
    py = re.search(r"^ARG PYTHON_IMAGE=(\S+)", (REPO / "docker/Dockerfile").read_text(), re.M)
    mq = re.search(r"image: (eclipse-mosquitto:\S+)", (REPO / "docker/compose.yaml").read_text())
    assert py, "docker/Dockerfile lost its ARG PYTHON_IMAGE"
    assert mq, "docker/compose.yaml lost its eclipse-mosquitto image"
    assert re.fullmatch(r"eclipse-mosquitto:2\.0\.\d+", mq.group(1)), mq.group(1)
    return py.group(1), mq.group(1)


@dataclass
class Prebuild:
    """One background preparation per pytest process (``PREBUILD``)."""

    timings: Timings = field(default_factory=Timings)
    said: list[str] = field(default_factory=list)  # what the thread would have printed
    engine: Engine | str | None = None  # the engine, or why none can start (skip)
    ledger: ImageLedger | None = None
    work: Path | None = None  # the stand-ins' root fs, the checkout copy, the wheels
    ctx: Path | None = None  # the build context and compose project (a copy of the checkout)
    image: str = ""  # the node image's tag, once built
    error: BaseException | None = None
    _thread: threading.Thread | None = None
    _engine_ready: threading.Event = field(default_factory=threading.Event)
    _taken: set[str] = field(default_factory=set)  # "engine", "images": a fixture owns them

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="docker-prebuild", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        with background(self.said):
            try:
                self.work = Path(tempfile.mkdtemp(prefix="seedswarm-docker-test-"))
                with self.timings.stage("1. Docker engine (reuse or start dockerd)"):
                    self.engine = start_engine(self.work / "dockerd")
                self._engine_ready.set()
                if isinstance(self.engine, Engine):
                    self._build()
            except BaseException as exc:  # re-raised by the fixture that waits
                self.error = exc
            finally:
                self._engine_ready.set()

    def _build(self) -> None:
        assert self.work is not None
        python_tag, mosquitto_tag = pinned_tags()
        self.ledger = ledger = ImageLedger()
        ledger.borrow(python_tag)
        build_standin(PYTHON, python_tag, self.work, self.timings)
        ledger.borrow(mosquitto_tag)
        build_standin(MOSQUITTO, mosquitto_tag, self.work, self.timings)
        ctx = self.work / "checkout"
        with self.timings.stage("3. wheels on the host (pip wheel --no-deps ., pip download)"):
            copy_checkout(ctx)
            wheels = collect_wheels(ctx)
        self.timings.notes.append(
            f"wheels: {len(list(wheels.iterdir()))} files, "
            f"{sum(p.stat().st_size for p in wheels.iterdir()) / 2**20:.0f} MiB"
        )
        tag = f"seedswarm-node:test-{os.getpid()}"
        ledger.borrow(tag)
        with self.timings.stage("3. docker build --network none (OFFLINE=1)"):
            run(
                ["docker", "build", "--force-rm", "--network", "none", "-f", ctx / "docker/Dockerfile",
                 "--build-arg", "OFFLINE=1", "-t", tag, ctx],
                timeout=1800,
            )  # fmt: skip
        shutil.rmtree(wheels)
        size = int(docker("image", "inspect", "--format", "{{.Size}}", tag))
        self.timings.notes.append(f"node image {tag}: {size / 1e9:.2f} GB ({size / 2**30:.2f} GiB)")
        self.ctx, self.image = ctx, tag

    def _replay(self) -> None:
        while self.said:
            say(self.said.pop(0))

    def take_engine(self) -> Engine | str:
        """The engine (the caller stops it), or why none can start; waits for it."""
        self.start()
        self._engine_ready.wait()
        self._replay()
        if self.engine is None:  # it failed before it knew
            assert self.error is not None
            raise self.error
        self._taken.add("engine")
        return self.engine

    def take_images(self) -> tuple[Path, str]:
        """The build context and the node image's tag, once built (the caller removes them with
        ``remove_images``); the preparation's error if it failed."""
        self.start()
        self._taken.add("images")
        assert self._thread is not None
        self._thread.join()
        self._replay()
        if self.error is not None:
            raise self.error
        assert self.ctx is not None
        return self.ctx, self.image

    def remove_images(self) -> list[str]:
        """Undo the image store's changes and remove the work directory; what could not go."""
        if self._thread is not None:
            self._thread.join()
        left = self.ledger.cleanup() if self.ledger is not None else []
        self.ledger = None
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = None
        return left

    def abandon(self) -> None:
        """At the end of the session: what no fixture took is undone."""
        if self._thread is None:
            return
        if self._thread.is_alive():
            say("the session ended before the docker tests: waiting for their images to build")
        self._thread.join()
        if "images" not in self._taken:
            self.remove_images()
        if "engine" not in self._taken and isinstance(self.engine, Engine):
            self.engine.stop()


PREBUILD = Prebuild()
