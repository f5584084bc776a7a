"""Names that travel on the wire and in MQTT topics: node ids and run names.

They are restricted to ``[A-Za-z0-9_-]`` so that they are safe as MQTT topic levels (no
``/``, ``+``, ``#``), as file names, and as Prometheus label values.
"""

from __future__ import annotations

import re

from .errors import DecodeError

NODE_ID_MAX = 32
RUN_NAME_MAX = 64
_NAME = re.compile(r"[A-Za-z0-9_-]+")


def check_node_id(value: object) -> str:
    """Return ``value`` if it is a valid node id, else raise ``DecodeError``."""
    if not isinstance(value, str):
        raise DecodeError(
            f"node id must be a string, got {type(value).__name__}", reason="bad_type"
        )
    if not 1 <= len(value) <= NODE_ID_MAX or not _NAME.fullmatch(value):
        raise DecodeError(
            f"node id {value[:40]!r} must be 1-{NODE_ID_MAX} characters of A-Z a-z 0-9 _ -",
            reason="bad_range",
        )
    return value


def check_run_name(value: object) -> str:
    """Return ``value`` if it is a valid run name, else raise ``DecodeError``."""
    if not isinstance(value, str):
        raise DecodeError(
            f"run name must be a string, got {type(value).__name__}", reason="bad_type"
        )
    if not 1 <= len(value) <= RUN_NAME_MAX or not _NAME.fullmatch(value):
        raise DecodeError(
            f"run name {value[:70]!r} must be 1-{RUN_NAME_MAX} characters of A-Z a-z 0-9 _ -",
            reason="bad_range",
        )
    return value
