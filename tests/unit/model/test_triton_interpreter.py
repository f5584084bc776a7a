"""The Triton (CUDA) backend's kernels, run by Triton's interpreter on the CPU, give the torch
reference's state and weights bit for bit (triton_interpreted.py says what this does and does
not check). So every CI run checks the GPU kernels' logic, with or without a GPU."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None,
    reason="Triton is not installed (pip install -e '.[dev]' installs it on x86-64 Linux)",
)


def test_triton_kernels_interpreted_equal_the_torch_reference() -> None:
    script = Path(__file__).with_name("triton_interpreted.py")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=240,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.split()
    assert lines.count("True") == 10, done.stdout
    assert "False" not in lines
