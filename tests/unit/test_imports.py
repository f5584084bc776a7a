"""The import graph of seedswarm: no cycles, and the layers point one way only.

protocol/ imports neither model/ nor daemon/; model/ imports no daemon/. Inside daemon/, the
runtime (what a node or a relay runs: transport, store, peer, node, relay, status and the
shared modules at the root) never imports the tools built on it: bench/, cli/ and launch/.
Every import counts, at module level or inside a function, typing-only or not, in every
subpackage.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import seedswarm.daemon
import seedswarm.model
import seedswarm.protocol

PACKAGES = {
    "seedswarm.protocol": Path(seedswarm.protocol.__file__).parent,
    "seedswarm.model": Path(seedswarm.model.__file__).parent,
    "seedswarm.daemon": Path(seedswarm.daemon.__file__).parent,
}


TOOLS = ("seedswarm.daemon.bench", "seedswarm.daemon.cli", "seedswarm.daemon.launch")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            parts = [pkg, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[str]:
    pkg = name if path.stem == "__init__" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            submodules = [
                f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES
            ]
            # `from . import snapshots` imports a module; `from .x import y` the module x
            yield from submodules or [target]


def graph() -> dict[str, set[str]]:
    return {
        name: {t for t in _imports(name, path) if t in MODULES and t != name}
        for name, path in MODULES.items()
    }


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def tool_imports(g: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(runtime module, tool module) for every import of a tool by the runtime."""

    def tool(name: str) -> bool:
        return any(name == t or name.startswith(t + ".") for t in TOOLS)

    return sorted(
        (name, t)
        for name, targets in g.items()
        if name.startswith("seedswarm.daemon") and not tool(name)
        for t in targets
        if tool(t)
    )


def test_the_graph_sees_every_module_and_its_imports() -> None:
    g = graph()
    assert "seedswarm.protocol.session" in g
    assert "seedswarm.protocol.log" in g["seedswarm.protocol.session"]
    node = g["seedswarm.daemon.node.node"]  # a module of a subpackage
    assert "seedswarm.daemon.store.snapshots" in node  # `from seedswarm.daemon.store import x`
    assert "seedswarm.model.replica" in node
    assert "seedswarm.daemon.node.join" in node  # `from .join import y`, one folder down
    assert "seedswarm.daemon.cli.main" in g["seedswarm.daemon.cli"]  # a package's __init__
    assert "seedswarm.daemon.cli.main" in g["seedswarm.daemon.cli.__main__"]


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_cycles() -> None:
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]


def test_layers_point_one_way() -> None:
    g = graph()
    for name, targets in g.items():
        if name.startswith("seedswarm.protocol"):
            assert not {t for t in targets if not t.startswith("seedswarm.protocol")}, name
        if name.startswith("seedswarm.model"):
            assert not {t for t in targets if t.startswith("seedswarm.daemon")}, name


def test_the_runtime_never_imports_the_tools_built_on_it() -> None:
    """bench/, cli/ and launch/ use the runtime; nothing a node or a relay runs imports them."""
    assert tool_imports(graph()) == []


def test_the_tool_rule_finds_a_runtime_module_that_imports_a_tool() -> None:
    g = {
        "seedswarm.daemon.node.node": {"seedswarm.daemon.bench.run", "seedswarm.daemon.errors"},
        "seedswarm.daemon.cli.main": {"seedswarm.daemon.launch.swarm"},  # a tool may use one
        "seedswarm.daemon.launch.swarm": {"seedswarm.daemon.status.schema"},
        "seedswarm.daemon.status.schema": set(),
        "seedswarm.daemon.errors": {"seedswarm.daemon.cli"},
    }
    assert tool_imports(g) == [
        ("seedswarm.daemon.errors", "seedswarm.daemon.cli"),
        ("seedswarm.daemon.node.node", "seedswarm.daemon.bench.run"),
    ]
