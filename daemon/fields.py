"""Settings as dataclass fields that are also command-line options.

``setting`` makes a field carry its help, choices and check; ``options_of`` turns a settings
dataclass into options (options.py resolves flag > environment > config file > default), and
``build`` turns the resolved values back into the dataclass, nested settings included.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import field
from typing import Any, TypeVar

from .options import Option

T = TypeVar("T")
Check = Callable[[Any], str | None]


def setting(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    check: Check | None = None,
    advanced: bool = False,
) -> Any:
    """A dataclass field that is also a command-line option. ``advanced``: left out of the
    short ``--help`` (``--help-all`` shows it)."""
    meta = {"help": help, "choices": choices, "check": check, "advanced": advanced}
    return field(default=default, metadata=meta)


def _is_settings(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def options_of(cls: type) -> list[Option]:
    """The command-line options of a settings dataclass (nested settings are left out)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if _is_settings(kind) or "help" not in f.metadata:
            continue
        out.append(
            Option(
                f.name,
                kind,
                f.default,
                f.metadata["help"],
                choices=f.metadata["choices"],
                check=f.metadata["check"],
                advanced=f.metadata.get("advanced", False),
            )
        )
    return out


def build(cls: type[T], values: Mapping[str, Any]) -> T:
    """The dataclass from resolved values (nested settings from the same values)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        kind = hints[f.name]
        if _is_settings(kind):
            kwargs[f.name] = build(kind, values)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)
