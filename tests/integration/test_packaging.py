"""Packaging: the distribution installs seedswarm.protocol/.model/.daemon and nothing bare.

The repository keeps protocol/, model/ and daemon/ at its root; generic names like these
would collide in site-packages, so setuptools maps them to seedswarm.*. These tests build the
wheel and make an editable install into a fresh virtual environment, offline: the fresh venv
borrows this environment's third-party packages through a path entry (not its .pth files, so
the test environment's own editable seedswarm stays invisible there).
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from ..helpers import env

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env(), timeout=600)


def test_the_wheel_holds_only_the_seedswarm_namespace(tmp_path: Path) -> None:
    build = _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
        str(tmp_path), str(REPO), cwd=tmp_path,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("seedswarm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"seedswarm", next(t for t in tops if t.endswith(".dist-info"))}
    for needed in (
        "seedswarm/protocol/codec.py",
        "seedswarm/model/engine.py",
        "seedswarm/daemon/cli/main.py",
        "seedswarm/daemon/cli/__main__.py",
        "seedswarm/daemon/relay/relay.py",
        "seedswarm/daemon/status/dashboard/index.html",
        "seedswarm/daemon/status/dashboard/uPlot.iife.min.js",
    ):
        assert needed in names
    # every module of every daemon/ subpackage (pyproject lists the subpackages one by one)
    for path in (REPO / "daemon").rglob("*.py"):
        assert f"seedswarm/daemon/{path.relative_to(REPO / 'daemon').as_posix()}" in names
    assert any(n.startswith("seedswarm/model/_zokernel") and n.endswith(".so") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert (
        "seedswarm = seedswarm.daemon.cli:main"
        in zipfile.ZipFile(wheel).read(entry_points).decode()
    )


def test_editable_install_in_a_fresh_venv(tmp_path: Path) -> None:
    root = tmp_path / "venv"
    venv.create(root, with_pip=False)
    python = root / "bin" / "python"
    purelib = _run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                   cwd=tmp_path).stdout.strip()  # fmt: skip
    # third-party packages (and pip, setuptools) from this environment, without its .pth files
    (Path(purelib) / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = _run(
        str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", str(REPO),
        cwd=tmp_path,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    ok = _run(str(python), "-c", "import seedswarm.protocol, seedswarm.model, seedswarm.daemon; "
              "print(seedswarm.protocol.__file__)", cwd=outside)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == str(REPO / "protocol" / "__init__.py")
    for bare in ("protocol", "model", "daemon"):
        missing = _run(str(python), "-c", f"import {bare}", cwd=outside)
        assert missing.returncode != 0
        assert f"No module named '{bare}'" in missing.stderr
    script = _run(str(root / "bin" / "seedswarm"), "--help", cwd=outside)
    assert script.returncode == 0, script.stderr
    assert "seedswarm" in script.stdout
