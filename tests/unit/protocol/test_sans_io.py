"""The sans-IO rule: protocol/ imports no I/O, no clock, no torch, and opens no files."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import seedswarm.protocol

FORBIDDEN = {
    "torch", "asyncio", "socket", "sqlite3", "aiomqtt", "aiohttp", "uvloop", "os", "io",
    "pathlib", "time", "threading", "subprocess",
}  # fmt: skip
PACKAGE_DIR = Path(seedswarm.protocol.__file__).parent
MODULES = sorted(PACKAGE_DIR.glob("*.py"))


def test_the_package_has_the_expected_modules() -> None:
    names = {m.stem for m in MODULES}
    expected = {"philox", "seeds", "quantize", "manifest", "records", "codec", "signing",
                "messages", "vv", "log", "sync", "canonical", "errors", "ids", "__init__",
                "logfile", "retained", "pattern"}  # fmt: skip
    assert expected <= names


def _violations(tree: ast.AST) -> list[str]:
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in FORBIDDEN]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in FORBIDDEN:
                found.append(node.module)
        elif isinstance(node, ast.Call):
            # open() and dynamic imports (which would dodge the import check above)
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name in {"open", "__import__", "import_module"}:
                found.append(f"{name}() at line {node.lineno}")
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_imports_no_io(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    assert _violations(tree) == []


def test_the_checker_catches_violations() -> None:
    bad = "import os\nimport asyncio.tasks\nfrom time import monotonic\nopen('x')\n"
    assert _violations(ast.parse(bad)) == ["os", "asyncio.tasks", "time", "open() at line 4"]
    fine = "from .log import OrderedLog\nimport hashlib\nimport numpy as np\n"
    assert _violations(ast.parse(fine)) == []


def test_importing_the_package_loads_no_io_modules(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "import seedswarm.protocol\n"
        "import seedswarm.protocol.sync, seedswarm.protocol.log, seedswarm.protocol.messages\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    loaded = {name.split(".")[0] for name in json.loads(out.stdout)}
    assert "seedswarm" in loaded
    assert not loaded & {"torch", "asyncio", "socket", "sqlite3", "aiomqtt", "aiohttp", "uvloop"}
