"""A real Chromium for the dashboard tests: Debian's ``chromium`` package driven by Playwright.

Playwright's own browser download cannot work here (only package registries are reachable),
so the browser is the system one at ``CHROMIUM``. Where it or Playwright is missing, the tests
skip and say why (``-ra`` prints it); ``.ci/run`` installs both, and checks that the browser
starts, so CI never skips them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = Path(os.environ.get("SEEDSWARM_CHROMIUM", "/usr/bin/chromium"))
# headless and quiet: no sandbox (CI runs as root), no GPU, and nothing that calls home
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def chromium() -> Iterator[Browser]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
