"""Settings: every option is a flag, an environment variable and a config-file key.

    --batch-size 16   ==   SEEDSWARM_BATCH_SIZE=16   ==   batch_size = 16   (in node.toml)

Precedence: flag, then environment, then the config file, then the default. Values from the
environment and the file are parsed and checked like flags, and a bad value gets one line that
names where it came from and what is expected.
"""

from __future__ import annotations

import argparse
import difflib
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

ENV_PREFIX = "SEEDSWARM_"


@dataclass(frozen=True, slots=True)
class Option:
    name: str  # python name: batch_size
    kind: type  # str, int, float, bool
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], str | None] | None = None  # returns an error message or None
    advanced: bool = False  # shown by --help-all only

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


def positive(v: Any) -> str | None:
    return None if v > 0 else "must be positive"


def at_least_one(v: Any) -> str | None:
    return None if v >= 1 else "must be at least 1 (1: no growth)"


def non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must not be negative"


def port_number(v: Any) -> str | None:
    return None if 0 <= v <= 65535 else "is not a port: use 0..65535 (0 picks a free one)"


def steps_limit(v: Any) -> str | None:
    return None if v >= -1 else "must be a number of steps, or -1 for no limit"


def suggest(word: str, known: Sequence[str]) -> str:
    """`` (did you mean X?)`` for the known word closest to ``word``, or ``""``."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def add_options(
    parser: argparse.ArgumentParser,
    options: Sequence[Option],
    title: str,
    *,
    show_all: bool = True,
) -> None:
    """The options as flags of ``parser``, in a group ``title``; an advanced option is taken
    either way but shown in the help only when ``show_all`` (``--help-all``)."""
    group = parser.add_argument_group(title)
    for opt in options:
        if opt.advanced and not show_all:
            text = argparse.SUPPRESS
        else:
            default_note = (
                f" (default: {opt.default})" if opt.default not in (None, "", False) else ""
            )
            # the environment variable of every option follows one rule, said once in the
            # short help's epilog; --help-all names each
            text = opt.help + default_note + (f" [env {opt.env}]" if show_all else "")
        if opt.kind is bool:
            group.add_argument(
                opt.flag,
                dest=opt.name,
                default=None,
                action=argparse.BooleanOptionalAction,
                help=text,
            )
        else:
            group.add_argument(
                opt.flag, dest=opt.name, default=None, metavar=opt.name.upper(), help=text
            )


def _parse(opt: Option, raw: Any, where: str) -> Any:
    if opt.kind is bool:
        if isinstance(raw, bool):
            value: Any = raw
        elif isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on"):
            value = True
        elif isinstance(raw, str) and raw.lower() in ("0", "false", "no", "off", ""):
            value = False
        else:
            raise ConfigError(f"{where}: {raw!r} is not a boolean (use true or false)")
    elif opt.kind in (int, float):
        if isinstance(raw, bool):
            raise ConfigError(f"{where}: expected a number, got {raw!r}")
        try:
            value = opt.kind(raw) if not isinstance(raw, str) else opt.kind(raw.strip())
        except (TypeError, ValueError):
            noun = "an integer" if opt.kind is int else "a number"
            raise ConfigError(f"{where}: expected {noun}, got {raw!r}") from None
        if opt.kind is int and isinstance(raw, float) and raw != int(raw):
            raise ConfigError(f"{where}: expected an integer, got {raw!r}")
    else:
        if not isinstance(raw, str):
            raise ConfigError(f"{where}: expected a string, got {raw!r}")
        value = raw
    if opt.choices is not None and value not in opt.choices:
        raise ConfigError(f"{where}: {value!r} is not one of: {', '.join(opt.choices)}")
    if opt.check is not None and (msg := opt.check(value)) is not None:
        raise ConfigError(f"{where}: {value!r} {msg}")
    return value


def load_config_file(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    p = Path(path).expanduser()
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    # Keys may sit at the top level or under [node]; dashes and underscores both work.
    flat = dict(data.get("node", {})) if isinstance(data.get("node"), dict) else {}
    flat.update({k: v for k, v in data.items() if k != "node"})
    return {k.replace("-", "_"): v for k, v in flat.items()}


def resolve(
    options: Sequence[Option],
    args: argparse.Namespace,
    *,
    config: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_name: str = "config file",
) -> dict[str, Any]:
    """Final values: flag > environment > config file > default."""
    env = os.environ if environ is None else environ
    config = dict(config or {})
    known = {o.name for o in options}
    unknown = sorted(k for k in config if k not in known)
    if unknown:
        hint = suggest(unknown[0], sorted(known)) or " (the keys are the flags without --, _ for -)"
        raise ConfigError(f"{config_name}: unknown setting {unknown[0]!r}{hint}")
    out: dict[str, Any] = {}
    for opt in options:
        flag_value = getattr(args, opt.name, None)
        if flag_value is not None:
            out[opt.name] = _parse(opt, flag_value, opt.flag)
        elif opt.env in env:
            out[opt.name] = _parse(opt, env[opt.env], opt.env)
        elif opt.name in config:
            out[opt.name] = _parse(opt, config[opt.name], f"{config_name}: {opt.name}")
        else:
            out[opt.name] = opt.default
    return out


KERNELS = ("auto", "torch", "cpu", "triton")  # the sign/apply kernels (model/kernels.py)
