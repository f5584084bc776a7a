"""``seedswarm swarm``: a local swarm in one command.

It builds the run's manifest once, starts an embedded amqtt broker (unless ``--broker`` names
one), starts N ``seedswarm node`` processes that share the manifest and split the data, shows
their progress live, and shuts them all down cleanly on Ctrl+C. With ``--steps N`` it ends by
itself once every node's log holds N own steps (a total: in the directory of an earlier swarm
the nodes take the rest, and say "resuming"), every node took its last step and every node
applied every record; ``--json`` then prints each node's final status (the same JSON as
``/status``). Whatever the estimator: a step of FZOO writes K records, and the nodes say
when they are done (``steps.done``), so the launcher never counts records as steps.

Trouble shows at once and in words: a broker that cannot be reached (a line before the
nodes start, and each node's broker state and last error in the table), and a node under the
run's name with other settings (the nodes name what differs; the swarm stops with exit 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import aiohttp

from seedswarm.daemon.console import say, table
from seedswarm.daemon.errors import ConfigError
from seedswarm.daemon.peer.lifecycle import Lifecycle, Stages
from seedswarm.daemon.settings import BrokerAddress, SwarmSettings
from seedswarm.daemon.status.schema import NodeStatus
from seedswarm.daemon.store.datadir import LOG, DataDir, read_manifest_file
from seedswarm.daemon.transport.trouble import probe

from .broker import EmbeddedBroker, free_ports
from .swarm_view import (
    Member,
    agreed,
    all_done,
    broker_lines,
    foreign_line,
    report,
    rows,
    same_records,
)


class Swarm:
    def __init__(self, settings: SwarmSettings) -> None:
        self.s = settings
        self.members: list[Member] = []
        self.broker: EmbeddedBroker | None = None
        self._broker_port = 0  # chosen with the members' ports (0: amqtt picks its own)
        # a second Ctrl+C does not cut the shutdown: it only skips the settling (``hurry``)
        self.life = Lifecycle("swarm", Stages(hurry_cancels=False, teardown=None))
        self.clean = True  # every node exited with 0
        self.members_broker = ""  # the broker URL the nodes were given
        self.quiet = settings.json

    # -- phases (daemon/peer/lifecycle.py) -------------------------------------------------------

    async def run(self, *, signals: bool = True) -> int:
        code = await self.life.run(self, signals=signals)
        if self.life.error:
            return code
        if not self.clean:
            code = code or 1  # a node that had to be killed, or failed on the way out
        if self.members:
            report(
                self.members,
                code,
                as_json=self.s.json,
                base=self.base,
                run_id=self.run_id,
                broker_url=self.members_broker,
            )
        return code

    @property
    def error(self) -> str:
        return self.life.error

    async def startup(self) -> None:
        if self.s.broker:  # before the seconds of building the run: a wrong URL shows now
            problem = await probe(BrokerAddress.parse(self.s.broker))
            if problem is not None:
                say(f"broker: {problem}")
        manifest_path = await self._prepare()
        broker_url = await self._start_broker()
        await self._start_nodes(manifest_path, broker_url)

    async def main(self) -> int:
        return await self._watch()

    async def teardown(self) -> None:
        self.clean = await self._shutdown()

    async def _prepare(self) -> Path:
        """Build the run's manifest once (loads the base model) and lay out the directories."""
        from seedswarm.daemon.node.startup import (
            check_batch_growth,
            open_engine,
            plan_run,
            planned_elsewhere,
        )
        from seedswarm.protocol.signing import NodeKey

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
        plan = await asyncio.to_thread(plan_run, s.run, planned_steps=s.steps, nodes=s.nodes)
        engine = await asyncio.to_thread(
            open_engine, plan, s.run, device="cpu", kernel="torch", keys=tuple(keys)
        )
        manifest = engine.manifest
        check_batch_growth(s.batch_growth, manifest)
        manifest_path = DataDir(base).manifest_path
        if manifest_path.exists():
            old = read_manifest_file(manifest_path)
            longer = planned_elsewhere(old, manifest, str(base))
            if longer:
                raise ConfigError(longer)
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
        self.records_per_step = manifest.directions
        del engine
        await asyncio.to_thread(self._say_resuming)
        return manifest_path

    def _say_resuming(self) -> None:
        """In the directory of an earlier swarm: how many steps each node holds already, and
        what --steps (a total) leaves to take; on stderr even with --json."""
        held: dict[str, int] = {}
        for m in self.members:
            if (m.data_dir / LOG).is_file():
                _, log, _ = DataDir(m.data_dir).load()
                held[m.name] = log.held().get(m.name, 0) // self.records_per_step
        if not any(held.values()):
            return
        have = ", ".join(f"{n} {c}" for n, c in held.items())
        steps = self.s.steps
        if steps < 0:
            say(f"resuming in {self.base}: the nodes hold {have} own steps")
        elif all(held.get(m.name, 0) >= steps for m in self.members):
            say(
                f"resuming in {self.base}: the nodes hold {have} own steps, --steps {steps} or "
                "more each (it is a total): they take none, and end once they agree",
            )
        else:
            say(
                f"resuming in {self.base}: the nodes hold {have} own steps; they take the rest "
                f"up to --steps {steps} each (a total)",
            )

    async def _start_broker(self) -> str:
        if self.s.broker:
            self.members_broker = self.s.broker
            return self.s.broker
        self.broker = EmbeddedBroker(port=self._broker_port)
        await self.broker.start()
        say(f"embedded MQTT broker (amqtt) at {self.broker.url}", quiet=self.quiet)
        self.members_broker = self.broker.url
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
                "--batch-growth",
                str(s.batch_growth),
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
            while not self.life.stop.is_set():
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
                if (foreign := foreign_line(self.members, self.s.run.name)) is not None:
                    say(foreign)
                    return 2
                if tty:
                    self._draw(now - t0, redraw=last_print > 0)
                    last_print = now
                elif now - last_print >= 5.0:
                    self._line(now - t0)
                    last_print = now
                if s.steps >= 0 and all_done(self.members):
                    await asyncio.gather(
                        *(self._poll(session, m, fresh=True) for m in self.members)
                    )
                    if all_done(self.members) and agreed(self.members):
                        say(
                            f"all {len(self.members)} nodes hold their {s.steps} steps and "
                            "every node's records, and agree",
                            quiet=self.quiet,
                        )
                        return 0
                if s.timeout and now - t0 > s.timeout:
                    say(f"timed out after {s.timeout:.0f}s", quiet=self.quiet)
                    return 1
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self.life.stop.wait()
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
            if same_records(
                self.members
            ):  # only then is a weight hash on every node worth its time
                await asyncio.gather(*(self._poll(session, m, fresh=True) for m in self.members))
            if agreed(self.members) or self.life.hurry.is_set() or time.monotonic() > deadline:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await self.life.hurry.wait()

    def _draw(self, elapsed: float, *, redraw: bool) -> None:
        text = table(
            [
                "node",
                "state",
                "steps",
                "loss (first -> now)",
                "records",
                "peers",
                "broker",
                "weights",
            ],
            rows(self.members),
        )
        notes = broker_lines(self.members, self.members_broker)
        if notes:
            text += "\n" + "\n".join(notes)
        lines = text.count("\n") + 2
        out = sys.stderr
        if redraw:
            out.write(f"\x1b[{lines}F\x1b[J")
        out.write(f"swarm {self.s.run.name} ({self.run_id})  {elapsed:.0f}s\n{text}\n")
        out.flush()

    def _line(self, elapsed: float) -> None:
        """A progress line: on stderr unless --json, and always in <dir>/swarm.log."""
        parts = [
            f"{r[0]} steps {r[2]} loss {r[3]} records {r[4]} broker {r[6]}"
            for r in rows(self.members)
        ]
        lines = [
            f"[{elapsed:5.0f}s] " + " | ".join(parts),
            *broker_lines(self.members, self.members_broker),
        ]
        for line in lines:
            say(line, quiet=self.quiet)
        with (self.base / "swarm.log").open("a") as fh:
            fh.write("".join(line + "\n" for line in lines))

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


def _reset_dir(base: Path, fresh: bool) -> None:
    if fresh and base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True, exist_ok=True)
