"""A full disk during a run: a real node whose data directory is on a small tmpfs.

The log needs a few bytes per frame, a snapshot of the tiny model about half a megabyte, so a
disk with little room left lets the log go on while the snapshot fails. The node must keep
training and logging, say in /status that the snapshot failed, and snapshot again once there is
room.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..helpers import Broker, NodeProc, running, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.broker]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _free(path: Path) -> int:
    out = subprocess.run(["df", "-B1", "--output=avail", str(path)], capture_output=True, text=True)
    return int(out.stdout.split()[-1])


def test_a_full_disk_fails_snapshots_not_the_node(
    mosquitto: Broker, tmp_path: Path, small_disk: Path
) -> None:
    node = NodeProc("n0", small_disk, mosquitto.url, "--snapshot-every", "40", steps=-1)
    node.log_path = tmp_path / "n0.log"  # the node's own log lives elsewhere
    with running(node):
        node.start()
        node.wait_ready()
        wait_until(lambda: node.status()["snapshots"]["taken"] >= 1, timeout=120, what="a snapshot")
        # leave room for the log, not for another snapshot
        filler = small_disk / "filler"
        room = _free(small_disk) - 200_000
        filler.write_bytes(b"\0" * max(room, 0))
        taken = node.status()["snapshots"]["taken"]
        wait_until(
            lambda: node.status()["snapshots"]["failures"] >= 1,
            timeout=120,
            what="a snapshot to fail on the full disk",
        )
        st = node.status()
        assert "No space left" in st["snapshots"]["error"] or "space" in st["snapshots"]["error"]
        steps_then = st["steps"]["taken"]
        wait_until(
            lambda: node.status()["steps"]["taken"] >= steps_then + 60,
            timeout=120,
            what="training to go on",
        )
        assert node.alive(), node.tail()
        # the log still takes every record (once its frame is sealed): a restart would find them
        wait_until(
            lambda: node.status()["records"]["held"] >= steps_then + 60,
            timeout=60,
            what="the log to take the new records",
        )
        filler.unlink()
        wait_until(
            lambda: (
                node.status()["snapshots"]["taken"] > taken
                and not node.status()["snapshots"]["error"]
            ),
            timeout=120,
            what="a snapshot once there is room again",
        )
        assert node.stop() == 0, node.tail()
