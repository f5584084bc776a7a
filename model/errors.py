"""Errors raised by the torch side (see protocol/errors.py for the whole hierarchy)."""

from __future__ import annotations

from seedswarm.protocol.errors import SeedswarmError


class ModelError(SeedswarmError):
    """A model, tokenizer or task cannot be loaded or does not fit the run."""


class DataError(ModelError):
    """A data file is missing, unreadable, or not in a supported shape."""
