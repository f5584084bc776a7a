"""Reading and checking a manifest's fields (protocol/manifest.py): typed reads of the decoded
map, the limits and cross-field rules of docs/PROTOCOL.md §2, and the sets of known keys (an
unknown key makes a manifest invalid)."""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from .errors import DecodeError, ManifestError
from .ids import check_node_id
from .schedule import SCHEDULES

ESTIMATORS = ("spsa", "fzoo")  # how a step turns forward passes into records (docs §6)
DIRECTIONS = ("dense", "lowrank")  # what z(seed) is for a matrix (docs §4); replay needs it
MAX_DIRECTIONS = 64


def read_typed(d: Mapping[str, Any], key: str, types: Any, *default: Any) -> Any:
    if key not in d:
        if default:
            return default[0]
        raise KeyError(key)
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, types):
        raise ManifestError(f"manifest field {key!r} has the wrong type ({type(value).__name__})")
    return value


def read_bool(d: Mapping[str, Any], key: str) -> bool:
    """An optional true/false field, absent meaning false."""
    value = d.get(key, False)
    if not isinstance(value, bool):
        raise ManifestError(f"manifest field {key!r} has the wrong type ({type(value).__name__})")
    return value


def read_float(d: Mapping[str, Any], key: str, *default: float) -> float:
    value = read_typed(d, key, (int, float), *default)
    try:
        return float(value)
    except OverflowError as exc:  # an integer beyond float64
        raise ManifestError(f"manifest field {key!r} is out of range") from exc


def read_str_list(d: Mapping[str, Any], key: str, what: str = "task") -> list[str]:
    value = d.get(key, [])
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ManifestError(f"{what} field {key!r} must be a list of strings")
    return list(value)


MAX_RELAYS = 64


def check_relays(relays: tuple[str, ...], keys: Mapping[str, str]) -> None:
    """Relay ids: valid node ids, sorted, distinct, at most MAX_RELAYS; in a signed run each
    one holds a key (a relay signs its presence and bundles' heartbeat)."""
    try:
        for r in relays:
            check_node_id(r)
    except DecodeError as exc:
        raise ManifestError(f"relays: {exc}") from exc
    if list(relays) != sorted(set(relays)):
        raise ManifestError("relays must be sorted node ids, each once")
    if len(relays) > MAX_RELAYS:
        raise ManifestError(f"a run names at most {MAX_RELAYS} relays")
    if keys:
        missing = [r for r in relays if r not in keys]
        if missing:
            raise ManifestError(
                f"a signed run lists a key for every relay: {', '.join(missing)} has none"
            )


TASK_FIELDS = frozenset(
    {"kind", "seq_len", "scorer", "labels", "label_words", "template", "temperature", "chat"}
)
ADAPTER_FIELDS = frozenset({"kind", "rank", "alpha", "targets"})
MANIFEST_FIELDS = frozenset(
    {
        "format", "name", "model", "base_hash", "trainable", "epsilon", "lr", "unit_exp",
        "headroom_exp", "grid_min_exp", "init_seed", "task", "keys", "estimator", "directions",
        "direction", "adapter", "relays", "schedule", "budget",
    }
)  # fmt: skip


def check_schedule(schedule: str, budget: int) -> None:
    if schedule not in SCHEDULES:
        raise ManifestError(f"schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
    if schedule == "constant" and budget != 0:
        raise ManifestError("a budget goes with schedule decay (a constant rate plans none)")
    if schedule != "constant" and not 1 <= budget < 2**63:
        raise ManifestError(f"schedule {schedule} needs a budget of 1 or more records")


def check_arithmetic(estimator: str, directions: int, direction: str) -> None:
    if estimator not in ESTIMATORS:
        raise ManifestError(f"estimator must be one of {', '.join(ESTIMATORS)}, not {estimator!r}")
    if direction not in DIRECTIONS:
        raise ManifestError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
    if estimator == "spsa" and directions != 1:
        raise ManifestError(f"the spsa estimator takes one direction per step, not {directions}")
    if estimator == "fzoo" and not 2 <= directions <= MAX_DIRECTIONS:
        raise ManifestError(
            f"the fzoo estimator takes 2 to {MAX_DIRECTIONS} directions per step, not {directions}"
        )


def check_completion_template(template: str) -> None:
    """Empty (the prompt as it is), or a ``str.format`` template whose one field is
    ``{prompt}``."""
    if not template:
        return
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        template.format(prompt="")
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        raise ManifestError(f"completion template {template!r} is not valid: {exc}") from exc
    if fields != {"prompt"}:
        raise ManifestError(
            f"a completion template has exactly the field {{prompt}}, not {sorted(fields)}"
        )


def no_unknown(d: Mapping[str, Any], known: frozenset[str], what: str) -> None:
    """A typo must not silently drop a setting out of the run id."""
    unknown = sorted(str(k) for k in d if k not in known)
    if unknown:
        raise ManifestError(f"{what} has an unknown field {unknown[0]!r}")
