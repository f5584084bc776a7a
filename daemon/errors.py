"""Errors of the daemon and the CLI (see protocol/errors.py for the whole hierarchy).

SeedswarmError
├── ConfigError    a setting the user can fix: exit status 2, one line
├── StoreError     the log store or a snapshot cannot be read or written: fail-stop
├── StageTimeout   a stage of a command's lifecycle ran out of time (peer/lifecycle.py)
└── BenchError     a process a benchmark started failed (the run, not a setting): exit 1
"""

from __future__ import annotations

from seedswarm.protocol.errors import SeedswarmError


class ConfigError(SeedswarmError):
    """A flag, environment variable or config file value is wrong; the message says how to fix it."""


class StoreError(SeedswarmError):
    """The log store or a snapshot cannot be read or written."""


class StageTimeout(SeedswarmError):
    """A stage of a long-running command (startup, shutdown, teardown) ran out of time, or a
    second signal cut its shutdown short."""


class BenchError(SeedswarmError):
    """A process a benchmark started (a swarm, a broker) failed or disagreed; the message holds
    the end of its output."""
