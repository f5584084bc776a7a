"""The run manifest: everything a node must agree on to take part in a run.

A run is fixed by its manifest: the base model and the hash of its snapped weights, which
parameters train, the ZO hyper-parameters (epsilon, learning rate, update unit), the grid
headroom, the task, and (in signed mode) the public keys of the nodes allowed to write. The run
id is derived from the manifest, so two nodes with different manifests never mix records:

    run_id = SHA-256("seedswarm/run/v1" || canonical_msgpack(manifest.to_dict()))[:8]

The manifest is stored as JSON (``manifest.json``) for people and hashed as canonical msgpack.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import canonical
from .errors import DecodeError, ManifestError
from .ids import check_node_id, check_run_name

FORMAT = 2  # protocol 2: binary frames (a run of protocol 1 has another run id)
RUN_DOMAIN = b"seedswarm/run/v1"
TASK_KINDS = ("causal_lm", "classify")
SCORERS = ("lm", "mlm", "embed", "head")
ESTIMATORS = ("spsa", "fzoo")  # how a step turns forward passes into records (docs §6)
DIRECTIONS = ("dense", "lowrank")  # what z(seed) is for a matrix (docs §4); replay needs it
MAX_DIRECTIONS = 64
# v1 meaning of an absent field: a manifest omits these when they hold it, so v1 run ids stay
ARITHMETIC_DEFAULTS: dict[str, Any] = {"estimator": "spsa", "directions": 1, "direction": "dense"}
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What the loss is. ``kind`` is ``causal_lm`` or ``classify``.

    For ``classify``: ``scorer`` says how a class is scored (``lm``: label words under a causal
    LM head at the end of ``template``; ``mlm``: label words at the mask of ``template``;
    ``embed``: cosine similarity between the sentence embedding and the embeddings of
    ``label_words`` used as descriptions, divided by ``temperature``; ``head``: a new linear
    head seeded from the manifest). ``labels`` names the classes in id order.
    """

    kind: str
    seq_len: int = 128
    scorer: str = ""
    labels: tuple[str, ...] = ()
    label_words: tuple[str, ...] = ()
    template: str = ""
    temperature: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ManifestError(
                f"task kind must be one of {', '.join(TASK_KINDS)}, not {self.kind!r}"
            )
        if not 8 <= self.seq_len <= 1 << 16:
            raise ManifestError(f"task seq_len must be in [8, 65536], got {self.seq_len}")
        if not math.isfinite(self.temperature):
            # NaN would make the task unequal to itself (and not valid JSON)
            raise ManifestError(f"task temperature must be finite, got {self.temperature}")
        if self.kind == "classify":
            if self.scorer not in SCORERS:
                raise ManifestError(f"classify scorer must be one of {', '.join(SCORERS)}")
            if len(self.labels) < 2:
                raise ManifestError("a classification task needs at least two labels")
            if self.scorer != "head" and len(self.label_words) != len(self.labels):
                raise ManifestError("label_words must give one word or description per label")
            if self.scorer == "embed" and not (
                math.isfinite(self.temperature) and self.temperature > 0
            ):
                raise ManifestError("the embed scorer needs a positive temperature")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "seq_len": self.seq_len}
        if self.kind == "classify":
            d.update(
                scorer=self.scorer,
                labels=list(self.labels),
                label_words=list(self.label_words),
                template=self.template,
                temperature=float(self.temperature),
            )
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TaskSpec:
        _no_unknown(d, TASK_FIELDS, "task")
        try:
            return cls(
                kind=_typed(d, "kind", str),
                seq_len=_typed(d, "seq_len", int),
                scorer=_typed(d, "scorer", str, ""),
                labels=tuple(_str_list(d, "labels")),
                label_words=tuple(_str_list(d, "label_words")),
                template=_typed(d, "template", str, ""),
                temperature=_float(d, "temperature", 0.0),
            )
        except KeyError as exc:
            raise ManifestError(f"task is missing the field {exc.args[0]!r}") from exc


@dataclass(frozen=True, slots=True)
class Manifest:
    """A run's fixed parameters. ``unit_exp`` gives the update unit u = 2**unit_exp."""

    name: str
    model: str
    base_hash: str
    task: TaskSpec
    epsilon: float = 1e-3
    lr: float = 1e-4
    unit_exp: int = -20
    headroom_exp: int = 3
    grid_min_exp: int = -28
    trainable: str = ""
    init_seed: int = 0
    keys: tuple[tuple[str, str], ...] = field(default=())
    format: int = FORMAT
    estimator: str = "spsa"
    directions: int = 1  # records (directions) per step
    direction: str = "dense"

    def __post_init__(self) -> None:
        try:
            check_run_name(self.name)
            for node, _ in self.keys:
                check_node_id(node)
        except DecodeError as exc:
            raise ManifestError(str(exc)) from exc
        if self.format != FORMAT:
            raise ManifestError(
                f"manifest format {self.format} is not supported (this is {FORMAT})"
            )
        if not self.model:
            raise ManifestError("manifest names no model")
        if not _HEX64.fullmatch(self.base_hash):
            raise ManifestError("base_hash must be 64 lowercase hex digits")
        for name, value in (("epsilon", self.epsilon), ("lr", self.lr)):
            if not (math.isfinite(value) and value > 0):
                raise ManifestError(f"{name} must be a positive finite number, got {value}")
        if not -60 <= self.unit_exp <= 0:
            raise ManifestError(f"unit_exp must be in [-60, 0], got {self.unit_exp}")
        if not 0 <= self.headroom_exp <= 12:
            raise ManifestError(f"headroom_exp must be in [0, 12], got {self.headroom_exp}")
        if not -100 <= self.grid_min_exp <= 0:
            raise ManifestError(f"grid_min_exp must be in [-100, 0], got {self.grid_min_exp}")
        if not 0 <= self.init_seed < 2**63:
            raise ManifestError("init_seed must be in [0, 2**63)")
        _check_arithmetic(self.estimator, self.directions, self.direction)
        try:
            re.compile(self.trainable)
        except (re.error, OverflowError, RecursionError) as exc:
            raise ManifestError(f"trainable is not a valid regular expression: {exc}") from exc
        if list(self.keys) != sorted(self.keys) or len({n for n, _ in self.keys}) != len(self.keys):
            raise ManifestError("keys must be sorted by node id, one key per node")
        for node, key in self.keys:
            if not re.fullmatch(r"[0-9a-f]{64}", key):
                raise ManifestError(f"the public key of {node} must be 64 hex digits (Ed25519)")
        try:
            self.canonical_bytes()
        except UnicodeEncodeError as exc:  # lone surrogates: no UTF-8, so no run id
            raise ManifestError(f"manifest text is not valid Unicode: {exc}") from exc

    @property
    def open_mode(self) -> bool:
        """True when the run lists no keys: frames are unsigned and anyone may write."""
        return not self.keys

    @property
    def unit(self) -> float:
        return math.ldexp(1.0, self.unit_exp)

    def public_keys(self) -> dict[str, bytes]:
        return {node: bytes.fromhex(key) for node, key in self.keys}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "name": self.name,
            "model": self.model,
            "base_hash": self.base_hash,
            "trainable": self.trainable,
            "epsilon": float(self.epsilon),
            "lr": float(self.lr),
            "unit_exp": self.unit_exp,
            "headroom_exp": self.headroom_exp,
            "grid_min_exp": self.grid_min_exp,
            "init_seed": self.init_seed,
            "task": self.task.to_dict(),
            "keys": dict(self.keys),
        } | {k: getattr(self, k) for k, v in ARITHMETIC_DEFAULTS.items() if getattr(self, k) != v}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        if not isinstance(d, Mapping):
            raise ManifestError("a manifest must be a map")
        _no_unknown(d, MANIFEST_FIELDS, "manifest")
        try:
            keys = d.get("keys", {}) or {}
            if not isinstance(keys, Mapping):
                raise ManifestError("manifest keys must be a map of node id to hex public key")
            task = d["task"]
            if not isinstance(task, Mapping):
                raise ManifestError("manifest task must be a map")
            return cls(
                format=_typed(d, "format", int),
                name=_typed(d, "name", str),
                model=_typed(d, "model", str),
                base_hash=_typed(d, "base_hash", str),
                trainable=_typed(d, "trainable", str, ""),
                epsilon=_float(d, "epsilon"),
                lr=_float(d, "lr"),
                unit_exp=_typed(d, "unit_exp", int),
                headroom_exp=_typed(d, "headroom_exp", int),
                grid_min_exp=_typed(d, "grid_min_exp", int),
                init_seed=_typed(d, "init_seed", int),
                task=TaskSpec.from_dict(task),
                keys=tuple(sorted((str(k), str(v)) for k, v in keys.items())),
                estimator=_typed(d, "estimator", str, "spsa"),
                directions=_typed(d, "directions", int, 1),
                direction=_typed(d, "direction", str, "dense"),
            )
        except KeyError as exc:
            raise ManifestError(f"manifest is missing the field {exc.args[0]!r}") from exc

    def canonical_bytes(self) -> bytes:
        return canonical.packb(self.to_dict())

    def run_id(self) -> bytes:
        """The 8-byte run id: a hash of the whole manifest."""
        return canonical.sha256(RUN_DOMAIN, self.canonical_bytes())[:8]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, deep nesting
            raise ManifestError(f"manifest is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)

    def differences(self, other: Manifest) -> list[str]:
        """Names of the top-level fields in which two manifests differ."""
        a, b = self.to_dict(), other.to_dict()
        return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _typed(d: Mapping[str, Any], key: str, types: Any, *default: Any) -> Any:
    if key not in d:
        if default:
            return default[0]
        raise KeyError(key)
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, types):
        raise ManifestError(f"manifest field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _float(d: Mapping[str, Any], key: str, *default: float) -> float:
    value = _typed(d, key, (int, float), *default)
    try:
        return float(value)
    except OverflowError as exc:  # an integer beyond float64
        raise ManifestError(f"manifest field {key!r} is out of range") from exc


def _str_list(d: Mapping[str, Any], key: str) -> list[str]:
    value = d.get(key, [])
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ManifestError(f"task field {key!r} must be a list of strings")
    return list(value)


TASK_FIELDS = frozenset(
    {"kind", "seq_len", "scorer", "labels", "label_words", "template", "temperature"}
)
MANIFEST_FIELDS = frozenset(
    {
        "format", "name", "model", "base_hash", "trainable", "epsilon", "lr", "unit_exp",
        "headroom_exp", "grid_min_exp", "init_seed", "task", "keys", "estimator", "directions",
        "direction",
    }
)  # fmt: skip


def _check_arithmetic(estimator: str, directions: int, direction: str) -> None:
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


def _no_unknown(d: Mapping[str, Any], known: frozenset[str], what: str) -> None:
    """A typo must not silently drop a setting out of the run id."""
    unknown = sorted(str(k) for k in d if k not in known)
    if unknown:
        raise ManifestError(f"{what} has an unknown field {unknown[0]!r}")
