"""``seedswarm swarm``: a local swarm in one command.

It builds the run's manifest once, starts an embedded amqtt broker (unless ``--broker`` names
one), starts N ``seedswarm node`` processes that share the manifest and split the data, shows
their progress live, and shuts them all down cleanly on Ctrl+C. With ``--steps N`` it ends by
itself once every node took N steps and every node applied every record, and ``--json`` then
prints each node's final status (the same JSON as ``/status``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from .broker import EmbeddedBroker, free_ports
from .console import emit_json, say, table
from .datadir import DataDir, read_manifest_file
from .errors import ConfigError
from .settings import SwarmSettings
from .status import NodeStatus


@dataclass(slots=True)
class Member:
    name: str
    data_dir: Path
    http: str
    proc: asyncio.subprocess.Process | None = None
    status: NodeStatus | None = None
    log_path: Path = Path()


def run_swarm(settings: SwarmSettings) -> int:
    import uvloop

    return uvloop.run(Swarm(settings).run())


class Swarm:
    def __init__(self, settings: SwarmSettings) -> None:
        self.s = settings
        self.members: list[Member] = []
        self.broker: EmbeddedBroker | None = None
        self._broker_port = 0  # chosen with the members' ports (0: amqtt picks its own)
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()  # a second Ctrl+C: skip the settling
        self.quiet = settings.json

    def _on_signal(self) -> None:
        if self._stop.is_set():
            self._hurry.set()
        self._stop.set()

    # -- phases -------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        code = 1
        try:
            manifest_path = await self._prepare()
            broker_url = await self._start_broker()
            await self._start_nodes(manifest_path, broker_url)
            code = await self._watch()
        finally:
            clean = await self._shutdown()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        if not clean:
            code = code or 1  # a node that had to be killed, or failed on the way out
        if self.members:
            self._report(code)
        return code

    async def _prepare(self) -> Path:
        """Build the run's manifest once (loads the base model) and lay out the directories."""
        from seedswarm.protocol.signing import NodeKey

        from .runspec import open_engine, plan_run

        s = self.s
        base = await asyncio.to_thread(Path(s.dir or f"swarm-{s.run.name}").resolve)
        await asyncio.to_thread(_reset_dir, base, s.fresh)
        names = [f"n{i}" for i in range(s.nodes)]
        keys: list[tuple[str, str]] = []
        key_files: dict[str, Path] = {}
        if s.signed:
            for name in names:
                key_path = base / name / "node.key"
                key_path.parent.mkdir(parents=True, exist_ok=True)
                if key_path.exists():
                    key = NodeKey.from_hex(key_path.read_text())
                else:
                    key = NodeKey.generate()
                    key_path.write_text(key.private_hex() + "\n")
                    key_path.chmod(0o600)
                keys.append((name, key.public_hex()))
                key_files[name] = key_path
        say(f"building the run (model {s.run.model}, data {s.run.data})...", quiet=self.quiet)
        plan = await asyncio.to_thread(plan_run, s.run)
        engine = await asyncio.to_thread(
            open_engine, plan, s.run, device="cpu", kernel="torch", keys=tuple(keys)
        )
        manifest = engine.manifest
        manifest_path = DataDir(base).manifest_path
        if manifest_path.exists():
            old = read_manifest_file(manifest_path)
            if old.run_id() != manifest.run_id():
                raise ConfigError(
                    f"{base} holds another run (differs in: {', '.join(old.differences(manifest))}); "
                    "use --fresh to start over or --dir for a new directory"
                )
        else:
            await asyncio.to_thread(DataDir(base).write_manifest, manifest)
        # every port at once, the embedded broker's too, so no two of them can coincide
        *member_ports, self._broker_port = free_ports(len(names) + 1)
        for name, port in zip(names, member_ports, strict=True):
            m = Member(name, base / name, f"127.0.0.1:{port}")
            m.log_path = m.data_dir / "node.log"
            m.data_dir.mkdir(parents=True, exist_ok=True)
            self.members.append(m)
        self._key_files = key_files
        self.base = base
        self.run_id = manifest.run_id().hex()
        del engine
        return manifest_path

    async def _start_broker(self) -> str:
        if self.s.broker:
            return self.s.broker
        self.broker = EmbeddedBroker(port=self._broker_port)
        await self.broker.start()
        say(f"embedded MQTT broker (amqtt) at {self.broker.url}", quiet=self.quiet)
        return self.broker.url

    async def _start_nodes(self, manifest: Path, broker: str) -> None:
        s = self.s
        n = len(self.members)
        for i, m in enumerate(self.members):
            args = [
                sys.executable,
                "-m",
                "seedswarm.daemon.cli",
                "node",
                "--manifest",
                str(manifest),
                "--data",
                s.run.data,
                "--model",
                s.run.model,
                "--node",
                m.name,
                "--shard",
                f"{i}/{n}",
                "--data-dir",
                str(m.data_dir),
                "--http",
                m.http,
                "--broker",
                broker,
                "--steps",
                str(s.steps),
                "--batch-size",
                str(s.batch_size),
                "--device",
                s.device,
                "--kernel",
                s.kernel,
                "--torch-threads",
                str(s.torch_threads),
                "--presence-interval",
                str(s.presence_interval),
                "--max-latency",
                str(s.max_latency),
            ]
            if self.broker is not None:
                args += ["--mqtt-version", "3.1.1"]  # amqtt speaks MQTT 3.1.1 only
            if s.eval:
                args += ["--eval", s.eval, "--eval-every", str(s.eval_every)]
                args += ["--eval-limit", str(s.eval_limit)]
            if m.name in self._key_files:
                args += ["--key-file", str(self._key_files[m.name])]
            env = dict(
                os.environ,
                SEEDSWARM_PARENT_PID=str(os.getpid()),  # the nodes stop if the launcher dies
            )
            log_fh = m.log_path.open("ab")
            try:
                m.proc = await asyncio.create_subprocess_exec(
                    *args,
                    stdout=log_fh,
                    stderr=log_fh,
                    stdin=asyncio.subprocess.DEVNULL,
                    start_new_session=True,
                    env=env,
                )
            finally:
                log_fh.close()
        say(
            f"started {n} nodes in {self.base} (logs: <node>/node.log); Ctrl+C stops them",
            quiet=self.quiet,
        )
        say(f"dashboard: http://{self.members[0].http}/", quiet=self.quiet)

    # -- watching -----------------------------------------------------------------------------

    async def _poll(self, session: aiohttp.ClientSession, m: Member, fresh: bool = False) -> None:
        url = f"http://{m.http}/status" + ("?fresh=1" if fresh else "")
        try:
            async with session.get(
                url, timeout=aiohttp.ClientTimeout(total=30 if fresh else 5)
            ) as resp:
                if resp.status == 200:
                    m.status = NodeStatus.from_json(await resp.json())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            pass

    async def _watch(self) -> int:
        s = self.s
        t0 = time.monotonic()
        last_print = 0.0
        tty = sys.stderr.isatty() and not self.quiet
        async with aiohttp.ClientSession() as session:
            while not self._stop.is_set():
                for m in self.members:
                    assert m.proc is not None
                    if m.proc.returncode is not None:
                        say(
                            f"node {m.name} exited with status {m.proc.returncode}; see {m.log_path}"
                        )
                        tail = m.log_path.read_text(errors="replace").strip().splitlines()[-5:]
                        for line in tail:
                            say(f"  {line}")
                        return 1
                await asyncio.gather(*(self._poll(session, m) for m in self.members))
                now = time.monotonic()
                if tty:
                    self._draw(now - t0, redraw=last_print > 0)
                    last_print = now
                elif now - last_print >= 5.0:
                    self._line(now - t0)
                    last_print = now
                if s.steps >= 0 and self._all_done():
                    await asyncio.gather(
                        *(self._poll(session, m, fresh=True) for m in self.members)
                    )
                    if self._all_done() and self._agreed():
                        say(
                            f"all {len(self.members)} nodes took {s.steps} steps and agree",
                            quiet=self.quiet,
                        )
                        return 0
                if s.timeout and now - t0 > s.timeout:
                    say(f"timed out after {s.timeout:.0f}s", quiet=self.quiet)
                    return 1
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._stop.wait()
            await self._settle(session)
        return 0

    async def _settle(self, session: aiohttp.ClientSession) -> None:
        """After Ctrl+C: every node stops stepping (SIGUSR2) but keeps applying, so that the
        records in flight arrive everywhere and the nodes stop in agreement. A second Ctrl+C,
        or --settle seconds, cuts this short; the nodes then stop where they are."""
        for m in self.members:
            if m.proc is not None and m.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    m.proc.send_signal(signal.SIGUSR2)
        say(
            "stopping: the nodes take no more steps and apply the last records "
            "(Ctrl+C again to stop at once)",
            quiet=self.quiet,
        )
        deadline = time.monotonic() + self.s.settle
        while True:
            await asyncio.gather(*(self._poll(session, m) for m in self.members))
            if self._same_records():  # only then is a weight hash on every node worth its time
                await asyncio.gather(*(self._poll(session, m, fresh=True) for m in self.members))
            if self._agreed() or self._hurry.is_set() or time.monotonic() > deadline:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await self._hurry.wait()

    def _statuses(self) -> list[NodeStatus] | None:
        sts = [m.status for m in self.members]
        return None if any(st is None for st in sts) else [st for st in sts if st is not None]

    def _same_records(self) -> bool:
        """Every node is done stepping, has nothing pending, and all hold the same records."""
        sts = self._statuses()
        return (
            sts is not None
            and all(st.finished for st in sts)
            and len({st.vv_digest for st in sts}) == 1
        )

    def _agreed(self) -> bool:
        """The same records everywhere, and one weight fingerprint, current for those records."""
        sts = self._statuses()
        return (
            sts is not None
            and self._same_records()
            and all(st.fingerprint_vv_digest == st.vv_digest for st in sts)
            and len({st.fingerprint for st in sts}) == 1
        )

    def _all_done(self) -> bool:
        """The same records everywhere, and they are every node's --steps own steps."""
        steps = self.s.steps
        want = {m.name: steps for m in self.members if steps > 0}
        first = self.members[0].status
        return self._same_records() and first is not None and first.version_vector == want

    def _rows(self) -> list[list[Any]]:
        rows: list[list[Any]] = []
        for m in self.members:
            st = m.status
            if st is None:
                rows.append([m.name, "starting", "-", "-", "-", "-", "-"])
                continue
            first = "-" if st.loss.first is None else f"{st.loss.first:.3f}"
            recent = "-" if st.loss.recent is None else f"{st.loss.recent:.3f}"
            rows.append(
                [
                    m.name,
                    st.phase if st.ready else "joining",
                    st.steps.taken,
                    f"{first} -> {recent}",
                    st.records.applied,
                    st.fingerprint[:12],
                    len([p for p in st.peers if p.alive]),
                ]
            )
        return rows

    def _draw(self, elapsed: float, *, redraw: bool) -> None:
        text = table(
            ["node", "state", "steps", "loss (first -> now)", "records", "fingerprint", "peers"],
            self._rows(),
        )
        lines = text.count("\n") + 2
        out = sys.stderr
        if redraw:
            out.write(f"\x1b[{lines}F\x1b[J")
        out.write(f"swarm {self.s.run.name} ({self.run_id})  {elapsed:.0f}s\n{text}\n")
        out.flush()

    def _line(self, elapsed: float) -> None:
        """A progress line: on stderr unless --json, and always in <dir>/swarm.log."""
        parts = [f"{r[0]} steps {r[2]} loss {r[3]} records {r[4]}" for r in self._rows()]
        line = f"[{elapsed:5.0f}s] " + " | ".join(parts)
        say(line, quiet=self.quiet)
        with (self.base / "swarm.log").open("a") as fh:
            fh.write(line + "\n")

    # -- shutdown -------------------------------------------------------------------------------

    async def _shutdown(self) -> bool:
        """Stop every node (SIGTERM, then SIGKILL after 60 s); True if each exited with 0."""
        live = [m for m in self.members if m.proc is not None and m.proc.returncode is None]
        for m in live:
            assert m.proc is not None
            with contextlib.suppress(ProcessLookupError):
                m.proc.send_signal(signal.SIGTERM)
        for m in live:
            assert m.proc is not None
            try:
                async with asyncio.timeout(60):
                    await m.proc.wait()
            except TimeoutError:
                say(f"node {m.name} did not stop in 60s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    m.proc.kill()
                await m.proc.wait()
        if self.broker is not None:
            await self.broker.stop()
        clean = True
        for m in live:
            assert m.proc is not None
            if m.proc.returncode != 0:
                say(f"node {m.name} exited with status {m.proc.returncode}; see {m.log_path}")
                clean = False
        return clean

    def _report(self, code: int) -> None:
        prints = {m.status.fingerprint for m in self.members if m.status is not None}
        agree = len(prints) == 1 and all(m.status is not None for m in self.members)
        if self.s.json:
            emit_json(
                {
                    "ok": code == 0,
                    "dir": str(self.base),
                    "run_id": self.run_id,
                    "agree": agree,
                    "fingerprint": next(iter(prints)) if agree else None,
                    "nodes": [
                        dict(
                            m.status.to_json() if m.status is not None else {},
                            data_dir=str(m.data_dir),
                            log=str(m.log_path),
                            exit_code=m.proc.returncode if m.proc else None,
                        )
                        for m in self.members
                    ],
                }
            )
            return
        say("")
        say(
            table(
                ["node", "data", "status endpoint (while running)", "exit"],
                [
                    [
                        m.name,
                        str(m.data_dir),
                        f"http://{m.http}",
                        m.proc.returncode if m.proc else "-",
                    ]
                    for m in self.members
                ],
            )
        )
        if agree:
            say(f"all nodes agree: fingerprint {next(iter(prints))}")
        say(f"replay any node with: seedswarm replay {self.members[0].data_dir} --out model")


def _reset_dir(base: Path, fresh: bool) -> None:
    if fresh and base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True, exist_ok=True)
