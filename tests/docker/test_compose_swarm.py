"""The node image and the compose swarm, proven on a real Docker engine.

1. a Docker engine: the one that runs, or dockerd started here (and stopped afterwards);
2. stand-in base images built from Debian packages (no registry can be reached here):
   ``python:3.11-slim`` and the ``eclipse-mosquitto`` tag that docker/compose.yaml pins;
3. the node image from docker/Dockerfile in offline mode, from wheels the host collects
   (``pip wheel --no-deps`` for the project, so its C kernel is compiled here; ``pip download``
   for the rest): the build itself runs with ``--network none``;
4. the swarm from docker/compose.yaml with compose.hostnet.yaml on top (host networking: all
   traffic on 127.0.0.1): three nodes train, and every node's published status port reports
   the same ``version_vector`` and ``fingerprint``;
5. one node's container is killed (SIGKILL) and started again: its volume kept its log, and it
   rejoins with the same fingerprint without taking a step again;
6. ``down -v``, and every image built here is removed (tags it borrowed are given back).
The auth variant (compose.auth.yaml, make-auth.sh) runs a swarm whose broker wants passwords,
and checks the per-node write ACLs with Mosquitto's own clients. Each stage is timed; the
summary (and the node image's size) is printed at the end of the module.

Everything is real: the engine, images, containers, compose (Debian's docker-compose 1.29.2;
``docker compose`` v2 where v1 is missing), the broker and the nodes' HTTP.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ..helpers import cli, free_port, get_json, get_text, wait_until
from .engine import (
    SUMMARY,
    Engine,
    Timings,
    docker,
    docker_env,
    run,
    say,
)
from .prebuild import PREBUILD, REPO

pytestmark = [pytest.mark.docker, pytest.mark.slow]

NODES = ("node1", "node2", "node3")
STEPS = 200  # own steps per node in the main swarm: the eval loss falls by ~2 (100: by 0.7-1.3)
AUTH_STEPS = 10


def compose_command() -> list[str]:
    """Debian's docker-compose (v1, what .ci/run installs), else the v2 plugin."""
    choice = os.environ.get("SEEDSWARM_TEST_COMPOSE", "")
    if choice:
        return choice.split()
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if run(["docker", "compose", "version"], check=False).returncode == 0:
        return ["docker", "compose"]
    pytest.fail("no docker-compose (apt-get install docker-compose; scripts/test does)")


# ============================================================================= fixtures


@pytest.fixture(scope="module")
def timings() -> Iterator[Timings]:
    t = PREBUILD.timings  # its stages come first: the engine and the images (prebuild.py)
    yield t
    SUMMARY.extend(t.report())  # printed in pytest's summary (conftest.py), -s or not
    for line in t.report():
        say(line)


@pytest.fixture(scope="module")
def engine(timings: Timings) -> Iterator[Engine]:
    got = PREBUILD.take_engine()
    if isinstance(got, str):
        say(f"SKIP: {got}")
        pytest.skip(f"no Docker engine can start here: {got}")
    timings.notes.append(
        f"engine {got.version}, "
        + (f"started here (log {got.log})" if got.proc else "already running (left running)")
    )
    try:
        yield got
    finally:
        PREBUILD.remove_images()  # if no test took them (only the compose files were checked)
        with timings.stage("6. stop the dockerd started here" if got.proc else "6. (engine left)"):
            got.stop()


@dataclass
class Built:
    ctx: Path  # a copy of the checkout: the build context and the compose project
    image: str
    compose: list[str]
    timings: Timings


@pytest.fixture(scope="module")
def built(engine: Engine, timings: Timings) -> Iterator[Built]:
    try:
        ctx, tag = PREBUILD.take_images()
        yield Built(ctx, tag, compose_command(), timings)
    finally:
        with timings.stage("6. remove the images built here"):
            left = PREBUILD.remove_images()
        assert not left, f"images left behind: {left}"


# ============================================================================= a compose swarm


@dataclass
class Swarm:
    built: Built
    project: str
    files: list[str]
    steps: int
    ports: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ports = {"mqtt": free_port(), **{n: free_port() for n in NODES}}

    @property
    def dir(self) -> Path:
        return self.built.ctx / "docker"

    def env(self) -> dict[str, str]:
        e = docker_env()
        e.update(
            SEEDSWARM_IMAGE=self.built.image,
            SEEDSWARM_MQTT_PORT=str(self.ports["mqtt"]),
            SEEDSWARM_STEPS=str(self.steps),
            SEEDSWARM_TORCH_THREADS="1",
        )
        for i, n in enumerate(NODES, 1):
            e[f"SEEDSWARM_NODE{i}_PORT"] = str(self.ports[n])
        return e

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        cmd = [*self.built.compose, "-p", self.project]
        for f in self.files:
            cmd += ["-f", f]
        proc = run([*cmd, *args], timeout=timeout, check=False, env=self.env(), cwd=self.dir)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"compose {' '.join(args)} failed ({proc.returncode}):\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{self.logs()}"
            )
        return proc.stdout.strip()

    def cid(self, service: str) -> str:
        out = docker(
            "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}",
            "--filter", f"label=com.docker.compose.service={service}",
        )  # fmt: skip
        assert len(out.split()) == 1, f"not one container for {service}: {out!r}"
        return out

    def state(self, service: str) -> tuple[str, str]:
        fmt = "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}"
        out = docker("inspect", "--format", fmt, self.cid(service)).split()
        return out[0], out[1] if len(out) > 1 else ""

    def url(self, node: str) -> str:
        return f"http://127.0.0.1:{self.ports[node]}"

    def status(self, node: str) -> dict[str, Any]:
        st: dict[str, Any] = get_json(self.url(node) + "/status?fresh=1", timeout=30)
        return st

    def logs(self) -> str:
        with contextlib.suppress(Exception):
            cmd = [*self.built.compose, "-p", self.project]
            for f in self.files:
                cmd += ["-f", f]
            proc = run([*cmd, "logs", "--no-color", "--tail", "25"], check=False,
                       env=self.env(), cwd=self.dir, timeout=120)  # fmt: skip
            return "--- compose logs (tail) ---\n" + proc.stdout[-6000:]
        return "(no logs)"

    def wait(self, what: str, pred: Any, timeout: float) -> None:
        try:
            wait_until(pred, timeout=timeout, what=what, interval=1.0)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def wait_healthy(self, services: tuple[str, ...] = NODES, timeout: float = 420) -> None:
        def healthy() -> bool:
            states = {s: self.state(s) for s in services}
            for s, (status, _) in states.items():
                if status in ("exited", "dead"):
                    raise AssertionError(f"{s} exited: {states}\n{self.logs()}")
            return all(h == "healthy" for _, h in states.values())

        self.wait(f"{', '.join(services)} healthy", healthy, timeout)
        for s in services:
            if s in NODES:
                assert get_text(self.url(s) + "/readyz")[0] == 200

    def agreed(self) -> list[dict[str, Any]] | None:
        """Every node's status when all took their steps, applied every record and hold the
        same fingerprint; else None."""
        want = dict.fromkeys(NODES, self.steps)
        try:
            sts = [self.status(n) for n in NODES]
        except (OSError, ValueError):
            return None
        for st in sts:
            if not (st["steps"]["done"] and st["version_vector"] == want):
                return None
            if st["records"]["pending"] or st["fingerprint_stale"]:
                return None
        return sts if len({st["fingerprint"] for st in sts}) == 1 else None

    def wait_agreed(self, timeout: float = 420) -> list[dict[str, Any]]:
        self.wait("every node to apply every record, with one fingerprint",
                  lambda: self.agreed() is not None, timeout)  # fmt: skip
        sts = self.agreed()
        assert sts is not None
        return sts

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "--timeout", "30", check=False)
        # belt and braces: nothing of the project may stay
        label = f"label=com.docker.compose.project={self.project}"
        for cid in docker("ps", "-aq", "--filter", label).split():
            docker("rm", "-fv", cid, check=False)
        for vol in docker("volume", "ls", "-q", "--filter", label).split():
            docker("volume", "rm", "-f", vol, check=False)
        for net in docker("network", "ls", "-q", "--filter", label).split():
            docker("network", "rm", net, check=False)


@contextlib.contextmanager
def swarm(built: Built, name: str, files: list[str], steps: int) -> Iterator[Swarm]:
    s = Swarm(built, f"ssdockertest{os.getpid()}{name}", files, steps)
    try:
        yield s
    finally:
        with built.timings.stage(f"6. {name}: compose down -v"):
            s.down()
        label = f"label=com.docker.compose.project={s.project}"
        assert not docker("ps", "-aq", "--filter", label), "containers left behind"
        assert not docker("volume", "ls", "-q", "--filter", label), "volumes left behind"


# ============================================================================= tests


@pytest.mark.timeout(300)
def test_compose_files_validate(engine: Engine, tmp_path: Path) -> None:
    """Every documented combination of compose files renders; the default (docker/.env, no -f)
    publishes the status ports, the host-network override publishes none."""
    compose = compose_command()
    auth = tmp_path / "auth"
    auth.mkdir()
    for f in ("passwd", "acl", "mosquitto.env", *(f"{n}.env" for n in NODES)):
        (auth / f).write_text("")
    env = {**docker_env(), "SEEDSWARM_AUTH_DIR": str(auth)}

    def config(*files: str) -> str:
        args = [a for f in files for a in ("-f", f)]
        out = run([*compose, *args, "config"], env=env, cwd=REPO / "docker").stdout
        services = run([*compose, *args, "config", "--services"], env=env, cwd=REPO / "docker")
        assert sorted(services.stdout.split()) == ["mosquitto", *NODES], services.stdout
        return out

    default = config()  # docker/.env: compose.yaml + compose.ports.yaml
    # published on the host's loopback: v1 renders "127.0.0.1:8471:8470/tcp", v2 a mapping
    for host, container in (("1883", "1883"), ("8471", "8470"), ("8472", "8470"), ("8473", "8470")):
        v1 = f"127.0.0.1:{host}:{container}/tcp" in default
        v2 = re.search(rf"published: \"?{host}\"?\n", default) is not None and (
            f"target: {container}" in default
        )
        assert v1 or v2, (host, default)
    assert "network_mode" not in default
    hostnet = config("compose.yaml", "compose.hostnet.yaml")
    assert hostnet.count("network_mode: host") == 4
    assert "8470/tcp" not in hostnet  # v1's rendering of a published port
    assert "published" not in hostnet  # v2's
    assert "mosquitto-auth.conf" in config(
        "compose.yaml", "compose.ports.yaml", "compose.auth.yaml"
    )
    assert "nvidia" in config("compose.yaml", "compose.ports.yaml", "compose.gpu.yaml")


@pytest.mark.timeout(2400)  # includes building the images (module fixture)
def test_swarm_agrees_and_a_killed_node_rejoins(built: Built) -> None:
    t = built.timings
    # the image: non-root, /data a volume, `seedswarm node` as entrypoint, a healthcheck
    cfg = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", built.image))
    assert cfg["User"] == "seedswarm"
    assert "/data" in cfg["Volumes"]
    assert cfg["Entrypoint"] == ["seedswarm", "node"]
    assert "healthcheck" in " ".join(cfg["Healthcheck"]["Test"])

    with swarm(built, "main", ["compose.yaml", "compose.hostnet.yaml"], STEPS) as s:
        with t.stage("4. compose up -d (broker healthy, then 3 nodes)"):
            s.compose("up", "-d", "--no-build")
        with t.stage("4. nodes healthy (HEALTHCHECK on /readyz)"):
            s.wait_healthy()
        with t.stage(f"4. {STEPS} steps each, all agree"):
            before = s.wait_agreed()
        fingerprint = before[0]["fingerprint"]
        assert docker("exec", s.cid("node1"), "id", "-u", "-n") == "seedswarm"
        assert docker("exec", s.cid("node1"), "stat", "-c", "%u:%g", "/data") == "10001:10001"
        for n in NODES:  # what the README tells users to run
            out = cli("status", s.url(n), check=True).stdout
            assert fingerprint[:16] in out, out
            assert n in out, out
        # The swarm learned: the agreed model against the base on the same fixed examples,
        # evaluated inside a node's container from its own volume (what a user would run).
        ev = json.loads(docker(
            "exec", s.cid("node1"), "seedswarm", "eval", "/data", "--data", "builtin:patterns",
            "--limit", "256", "--compare-base", "--device", "cpu", "--json",
        ).splitlines()[-1])  # fmt: skip
        assert ev["fingerprint"] == fingerprint
        assert ev["loss"] < ev["base"]["loss"] - 0.5, ev

        with t.stage("5. kill node2, start it again, it rejoins"):
            node2 = s.cid("node2")
            docker("kill", node2)
            wait_until(lambda: s.state("node2")[0] == "exited", timeout=60, what="node2 to die")
            assert docker("inspect", "--format", "{{.State.ExitCode}}", node2) == "137"
            s.compose("start", "node2")
            s.wait_healthy(("node2",))
            after = s.wait_agreed()
        again = {st["node"]: st for st in after}["node2"]
        assert s.cid("node2") == node2  # the same container, so the same volume
        assert again["fingerprint"] == fingerprint
        assert again["steps"]["this_session"] == 0
        assert again["steps"]["taken"] == STEPS
        # its log came back from the volume, not from the peers
        assert again["restored_records"] + again["replayed_records"] == STEPS * len(NODES)
        assert again["uptime_s"] < min(st["uptime_s"] for st in after if st is not again)


@pytest.mark.timeout(900)
def test_auth_variant_passwords_and_write_acls(built: Built) -> None:
    t = built.timings
    files = ["compose.yaml", "compose.hostnet.yaml", "compose.auth.yaml"]
    with swarm(built, "auth", files, AUTH_STEPS) as s:
        with t.stage("auth: make-auth.sh, compose up, nodes agree"):
            run([s.dir / "make-auth.sh", *NODES], env=docker_env())
            s.compose("up", "-d", "--no-build")
            s.wait_healthy(("mosquitto", *NODES))
            s.wait_agreed()
        secrets = {}
        for n in NODES:
            values = dict(
                line.split("=", 1) for line in (s.dir / "auth" / f"{n}.env").read_text().split()
            )
            assert values["SEEDSWARM_USERNAME"] == n
            secrets[n] = values["SEEDSWARM_PASSWORD"]
        probe = r"""
            port=$PORT
            ok() { "$@" >/dev/null 2>&1 && echo accepted || echo refused; }
            echo "anonymous: $(ok mosquitto_pub -h 127.0.0.1 -p $port -t seedswarm/x -m x)"
            echo "wrong password: $(ok mosquitto_pub -h 127.0.0.1 -p $port -u node1 -P wrong -t seedswarm/x -m x)"
            pub() { mosquitto_pub -h 127.0.0.1 -p $port -q 1 -r "$@"; }
            pub -u node1 -P "$P1" -t seedswarm/acl-a/records/node2 -m forged
            pub -u node1 -P "$P1" -t seedswarm/acl-b/presence/node2 -m forged
            pub -u node1 -P "$P1" -t seedswarm/acl-f/sync/node2/node3 -m forged
            pub -u node2 -P "$P2" -t seedswarm/acl-c/records/node2 -m own
            pub -u node1 -P "$P1" -t seedswarm/acl-d/sync/node2/node1 -m want
            pub -u node1 -P "$P1" -t seedswarm/acl-e/presence/node1 -m own
            for run in a b f c d e; do set -- "$@" -t "seedswarm/acl-$run/#"; done
            # the retained messages, in the order of the filters: a forged one (acl-a, acl-b,
            # acl-f) would come first, so the first three decide; -W is only a safety net
            mosquitto_sub -h 127.0.0.1 -p $port -u node3 -P "$P3" "$@" -v -C 3 -W 120 || true
        """
        out = docker(
            "exec", "-e", f"PORT={s.ports['mqtt']}", "-e", f"P1={secrets['node1']}",
            "-e", f"P2={secrets['node2']}", "-e", f"P3={secrets['node3']}",
            s.cid("mosquitto"), "sh", "-c", probe, timeout=240,
        )  # fmt: skip
        lines = out.splitlines()
        assert "anonymous: refused" in lines, out
        assert "wrong password: refused" in lines, out
        # node1 may not write node2's records or presence, nor sync messages in node3's name
        assert sorted(line for line in lines if line.startswith("seedswarm/")) == [
            "seedswarm/acl-c/records/node2 own",
            "seedswarm/acl-d/sync/node2/node1 want",
            "seedswarm/acl-e/presence/node1 own",
        ], out
    t.notes.append("auth: anonymous and wrong passwords refused; per-node write ACLs hold")
