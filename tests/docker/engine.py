"""A real Docker engine for the docker tests, and the images they need, from nothing.

* ``start_engine``: reuse a dockerd that answers, or start one (``--bridge=none
  --iptables=false --ip-masq=false``: host networking only, the host's interfaces and firewall
  are left alone) and stop it afterwards. Only where none can start is the test skipped.
* ``build_standin``: no registry is reachable, so the base images are built from Debian
  packages: ``debootstrap --variant=minbase bookworm`` plus python3/python3-venv, imported as
  ``python:3.11-slim``, and plus Debian's mosquitto laid out like eclipse-mosquitto (config in
  /mosquitto/config, uid 1883, same entrypoint), imported under the pinned eclipse-mosquitto tag.
  Root-fs tarballs may be cached (``SEEDSWARM_DOCKER_CACHE``, default
  /var/cache/seedswarm-docker-test; empty: no cache), keyed by the recipe.
* ``ImageLedger``: every image the test makes is removed at the end, and a tag the test
  borrowed (a stand-in imported over an existing image) is given back to its old image.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

DOCKERD_ARGS = ("--bridge=none", "--iptables=false", "--ip-masq=false")
SYSTEM_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
SUITE = "bookworm"
RECIPE_VERSION = "1"
SUMMARY: list[str] = []  # the stage timings, for pytest's terminal summary


_BACKGROUND = threading.local()  # set on the thread of the background preparation


def say(msg: str) -> None:
    sink: list[str] | None = getattr(_BACKGROUND, "lines", None)
    if sink is not None:
        sink.append(msg)
        return
    print(f"[docker-test] {msg}", file=sys.stderr, flush=True)


def in_background() -> bool:
    return getattr(_BACKGROUND, "lines", None) is not None


@contextlib.contextmanager
def background(lines: list[str]) -> Iterator[None]:
    """This thread is the background preparation (prebuild.py): ``say`` appends to ``lines``
    instead of printing (its output belongs to the docker test, not to the test that runs
    meanwhile), and what it runs (``run``, and a dockerd it starts, with the builds inside it)
    runs at ``nice`` 10, so it takes the CPU the foreground tests leave."""
    _BACKGROUND.lines = lines
    try:
        yield
    finally:
        _BACKGROUND.lines = None


def niced(cmd: list[str]) -> list[str]:
    return ["nice", "-n", "10", *cmd] if in_background() and shutil.which("nice") else cmd


def docker_env() -> dict[str, str]:
    """The environment for docker and compose: the classic builder (no buildx here, and its RUN
    steps need no network), and none of the caller's SEEDSWARM_/COMPOSE_ settings."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("SEEDSWARM_", "COMPOSE_"))}
    e.update(DOCKER_BUILDKIT="0", COMPOSE_DOCKER_CLI_BUILD="0", PYTHONUNBUFFERED="1")
    return e


def run(
    cmd: Sequence[str | Path],
    *,
    timeout: float = 600,
    check: bool = True,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        niced([str(c) for c in cmd]),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else docker_env(),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(str(c) for c in cmd)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def docker(*args: str | Path, timeout: float = 600, check: bool = True) -> str:
    return run(["docker", *args], timeout=timeout, check=check).stdout.strip()


class Timings:
    """Wall time of each stage, for the report."""

    def __init__(self) -> None:
        self.stages: list[tuple[str, float]] = []
        self.notes: list[str] = []

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        say(f"{name} ...")
        try:
            yield
        finally:
            dt = time.monotonic() - t0
            self.stages.append((name, dt))
            say(f"TIMING {name}: {dt:.1f} s")

    def report(self) -> list[str]:
        lines = [f"  {name:<52} {dt:7.1f} s" for name, dt in self.stages]
        return lines + [f"  {n}" for n in self.notes]


# ============================================================================= the engine


@dataclass
class Engine:
    """A dockerd that answers; ``proc`` is set when this test started it."""

    proc: subprocess.Popen[bytes] | None
    log: Path | None
    version: str

    def stop(self) -> None:
        if self.proc is None:
            return
        say(f"stopping the dockerd this test started (pid {self.proc.pid})")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                # its managed containerd would outlive it
                pidfile = Path("/var/run/docker/containerd/containerd.pid")
                with contextlib.suppress(OSError, ValueError):
                    pid = int(pidfile.read_text().strip())
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "containerd":
                        os.kill(pid, signal.SIGTERM)
                with contextlib.suppress(OSError):
                    Path("/var/run/docker.pid").unlink()
        self.proc = None


def engine_answers() -> str | None:
    """The server version when a Docker engine answers, else None."""
    try:
        proc = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=20,
            env=docker_env(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def start_engine(workdir: Path) -> Engine | str:
    """A running engine, or the reason none can run here (the caller skips with it)."""
    if shutil.which("docker") is None:
        return "no docker CLI (apt-get install docker.io; scripts/test does)"
    version = engine_answers()
    if version is not None:
        say(f"reusing the running Docker engine {version}")
        return Engine(None, None, version)
    if os.geteuid() != 0:
        return "no Docker engine answers, and starting dockerd needs root"
    dockerd = shutil.which("dockerd") or (
        "/usr/sbin/dockerd" if os.path.exists("/usr/sbin/dockerd") else None
    )
    if dockerd is None:
        return "no dockerd (apt-get install docker.io; scripts/test does)"
    # a dockerd killed hard leaves its pid file, and a new one refuses to start
    pidfile = Path("/var/run/docker.pid")
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text().strip())
        if Path(f"/proc/{pid}/comm").read_text().strip() == "dockerd":
            return f"a dockerd runs (pid {pid}) but does not answer"
    with contextlib.suppress(OSError):
        pidfile.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "dockerd.log"
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            niced([dockerd, *DOCKERD_ARGS]),
            stdout=fh,
            stderr=fh,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    engine = Engine(proc, log, "")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        version = engine_answers()
        if version is not None:
            engine.version = version
            say(f"started dockerd {version} (pid {proc.pid}, {' '.join(DOCKERD_ARGS)})")
            return engine
        time.sleep(0.5)
    engine.stop()
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    return f"dockerd did not start:\n{tail}"


# ============================================================================= images


class ImageLedger:
    """What the test did to the image store, to undo it at the end."""

    def __init__(self) -> None:
        self.before = self._all_ids()
        self.borrowed: dict[str, str] = {}  # tag -> the image it named before the test
        self.tags: list[str] = []  # tags the test made, newest last

    @staticmethod
    def _all_ids() -> set[str]:
        return set(docker("images", "-aq", "--no-trunc").split())

    @staticmethod
    def _tagged(image: str) -> bool:
        tags = docker("image", "inspect", "--format", "{{len .RepoTags}}", image, check=False)
        return tags.strip() not in ("", "0")

    def borrow(self, tag: str) -> None:
        """Note what ``tag`` names now (before the test points it at its own image)."""
        old = docker("image", "inspect", "--format", "{{.Id}}", tag, check=False)
        if old.startswith("sha256:") and tag not in self.borrowed:
            self.borrowed[tag] = old
        self.tags.append(tag)

    def cleanup(self) -> list[str]:
        """Remove the test's tags, then every untagged image that did not exist before (the
        build's intermediate stages); restore borrowed tags. An image someone else tagged
        meanwhile on a shared engine is left alone. Returns what could not be removed."""
        for tag in reversed(self.tags):
            docker("rmi", tag, check=False)
        left: list[str] = []
        for _ in range(4):  # children before parents; a few passes settle any order
            new = {i for i in self._all_ids() - self.before if not self._tagged(i)}
            if not new:
                break
            created = {
                i: docker("image", "inspect", "--format", "{{.Created}}", i, check=False)
                for i in new
            }
            for image in sorted(new, key=lambda i: created[i], reverse=True):
                docker("rmi", image, check=False)
            left = sorted(i for i in self._all_ids() - self.before if not self._tagged(i))
        for tag, old in self.borrowed.items():
            if docker("image", "inspect", "--format", "{{.Id}}", old, check=False) == old:
                docker("tag", old, tag, check=False)
        for tag in self.tags:  # a tag of ours that could not be removed is left behind too
            if tag not in self.borrowed and docker("images", "-q", tag, check=False):
                left.append(tag)
        return left


@dataclass(frozen=True)
class Recipe:
    name: str
    packages: tuple[str, ...]
    setup: Callable[[Path], None]
    changes: tuple[str, ...]

    def key(self) -> str:
        text = "\n".join(
            [RECIPE_VERSION, SUITE, ",".join(self.packages), inspect.getsource(self.setup),
             inspect.getsource(slim), *self.changes]
        )  # fmt: skip
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _setup_python(root: Path) -> None:
    # as in the real image: python and python3 in /usr/local/bin, no PEP 668 marker
    local = root / "usr/local/bin"
    local.mkdir(parents=True, exist_ok=True)
    (local / "python3").symlink_to("/usr/bin/python3")
    (local / "python").symlink_to("python3")
    for marker in (root / "usr/lib").glob("python3.*/EXTERNALLY-MANAGED"):
        marker.unlink()
    run(["chroot", root, "python", "-c", "import venv, ensurepip, ssl, sqlite3"], env=SYSTEM_ENV)


MOSQUITTO_ENTRYPOINT = """#!/bin/sh
# as in eclipse-mosquitto's image
set -e
user="$(id -u)"
if [ "$user" = '0' ]; then
	[ -d "/mosquitto" ] && chown -R mosquitto:mosquitto /mosquitto || true
fi
exec "$@"
"""


def _setup_mosquitto(root: Path) -> None:
    assert (root / "usr/sbin/mosquitto").exists(), "no /usr/sbin/mosquitto in the root fs"
    # uid/gid 1883 and /mosquitto/{config,data,log} as in the real image
    run(
        ["chroot", root, "sh", "-ec",
         "groupmod -g 1883 mosquitto; usermod -u 1883 -g 1883 mosquitto"],
        env=SYSTEM_ENV,
    )  # fmt: skip
    for sub in ("config", "data", "log"):
        (root / "mosquitto" / sub).mkdir(parents=True, exist_ok=True)
    example = root / "usr/share/doc/mosquitto/examples/mosquitto.conf"
    conf = root / "mosquitto/config/mosquitto.conf"
    if example.exists():
        shutil.copyfile(example, conf)
    else:
        conf.write_text("# stock config: mosquitto 2 then listens on localhost:1883 only\n")
    entry = root / "docker-entrypoint.sh"
    entry.write_text(MOSQUITTO_ENTRYPOINT)
    entry.chmod(0o755)
    for p in [root / "mosquitto", *(root / "mosquitto").rglob("*")]:
        os.chown(p, 1883, 1883, follow_symlinks=False)


PYTHON = Recipe(
    "python",
    ("python3", "python3-venv"),
    _setup_python,
    (
        "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV LANG=C.UTF-8",
        'CMD ["python3"]',
    ),
)
MOSQUITTO = Recipe(
    "mosquitto",
    ("mosquitto", "mosquitto-clients"),
    _setup_mosquitto,
    (
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "EXPOSE 1883",
        'VOLUME ["/mosquitto/data", "/mosquitto/log"]',
        'ENTRYPOINT ["/docker-entrypoint.sh"]',
        'CMD ["/usr/sbin/mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]',
    ),
)


def slim(root: Path) -> None:
    """Leave out what the official slim images leave out, and the host's resolv.conf."""
    for pattern in (
        "var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb",
        "var/log/*.log", "var/log/apt/*", "usr/share/doc/*", "usr/share/man/*",
        "usr/share/info/*", "usr/share/locale/*", "debootstrap",
    ):  # fmt: skip
        for p in root.glob(pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    for cache in root.glob("usr/lib/python3*/**/__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/resolv.conf").write_text("")
    (root / "etc/apt/sources.list").write_text(f"deb http://deb.debian.org/debian {SUITE} main\n")


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    with open("/proc/mounts") as fh:
        return [line.split()[1] for line in fh if line.split()[1].startswith(prefix)]


def remove_rootfs(root: Path) -> None:
    """rm -rf a debootstrap target, but never through a mount left inside it."""
    if not root.exists():
        return
    for mnt in sorted(_mounts_under(root), reverse=True):
        subprocess.run(["umount", "-l", mnt], check=False, capture_output=True)
    left = _mounts_under(root)
    assert not left, f"still mounted under {root}: {left}; not removing it"
    shutil.rmtree(root)


def cache_dir() -> Path | None:
    value = os.environ.get("SEEDSWARM_DOCKER_CACHE", "/var/cache/seedswarm-docker-test")
    return Path(value) if value else None


def build_standin(recipe: Recipe, tag: str, workdir: Path, timings: Timings) -> None:
    """Import ``recipe``'s root fs as ``tag`` (debootstrap it unless a cached tarball fits)."""
    key = recipe.key()
    cache = cache_dir()
    tar = (cache / f"{recipe.name}-{key}.tar") if cache else (workdir / f"{recipe.name}.tar")
    if cache is not None and tar.exists():
        timings.notes.append(f"{recipe.name}: root fs from the cached {tar}")
    else:
        root = workdir / f"rootfs-{recipe.name}"
        remove_rootfs(root)
        debs = (cache or workdir) / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        mirror = os.environ.get("SEEDSWARM_DEBIAN_MIRROR", "http://deb.debian.org/debian")
        with timings.stage(f"2. {recipe.name} stand-in: debootstrap + setup"):
            try:
                proc = run(
                    ["debootstrap", "--variant=minbase", f"--cache-dir={debs.resolve()}",
                     f"--include={','.join(recipe.packages)}", SUITE, root, mirror],
                    timeout=1200, check=False, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                )  # fmt: skip
                if proc.returncode != 0:
                    detail = root / "debootstrap/debootstrap.log"
                    more = detail.read_text(errors="replace")[-2000:] if detail.exists() else ""
                    raise AssertionError(
                        f"debootstrap failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                        f"{proc.stderr[-2000:]}\n{more}"
                    )
                recipe.setup(root)
                slim(root)
                tar.parent.mkdir(parents=True, exist_ok=True)
                part = tar.with_name(tar.name + ".part")
                run(["tar", "--numeric-owner", "-C", root, "-cf", part, "."], env=SYSTEM_ENV)
                part.rename(tar)
            finally:
                remove_rootfs(root)
        if cache is not None:  # older recipes' tarballs
            for old in cache.glob(f"{recipe.name}-*.tar"):
                if old != tar:
                    old.unlink()
    with timings.stage(f"2. {recipe.name} stand-in: docker import as {tag}"):
        changes = [f"LABEL org.seedswarm.standin={key}", *recipe.changes]
        docker("import", *[a for c in changes for a in ("--change", c)], tar, tag)
    if cache is None:
        tar.unlink()
