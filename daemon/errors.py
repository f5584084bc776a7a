"""Errors of the daemon and the CLI (see protocol/errors.py for the whole hierarchy)."""

from __future__ import annotations

from seedswarm.protocol.errors import SeedswarmError


class ConfigError(SeedswarmError):
    """A flag, environment variable or config file value is wrong; the message says how to fix it."""


class StoreError(SeedswarmError):
    """The log store or a snapshot cannot be read or written."""


class JoinRefused(SeedswarmError):
    """The swarm runs a different manifest (base model, task or hyper-parameters)."""
