"""The run manifest: everything a node must agree on to take part in a run.

A run is fixed by its manifest: the base model and the hash of its snapped weights, which
parameters train, the ZO hyper-parameters (epsilon, learning rate, update unit), the grid
headroom, the task, an adapter trained beside the frozen base (if any), and (in signed mode)
the public keys of the nodes allowed to write. The run id is derived from the manifest, so two nodes with different manifests never mix records:

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
from .manifest_fields import (
    ADAPTER_FIELDS,
    MANIFEST_FIELDS,
    TASK_FIELDS,
    check_arithmetic,
    check_completion_template,
    check_relays,
    check_schedule,
    no_unknown,
    read_bool,
    read_float,
    read_str_list,
    read_typed,
)
from .pattern import PatternError, check_pattern

# protocol 3: the state is int64 grid steps (docs/PROTOCOL.md §5); protocol 2 held fp32 weights
# that left their exact range in long runs. Frames and messages are protocol 2's (their version
# byte stays 2); a run of another protocol has another run id, so nodes of two never mix.
FORMAT = 3
RUN_DOMAIN = b"seedswarm/run/v1"
TASK_KINDS = ("causal_lm", "classify", "completion")
SCORERS = ("lm", "mlm", "embed", "head")
ADAPTER_KINDS = ("lora",)
MAX_LORA_RANK = 1024
MAX_ADAPTER_TARGETS = 64
# a target names a module by the last levels of its dotted name, as peft's target_modules do
_TARGET = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
# v1 meaning of an absent field: a manifest omits these when they hold it, so v1 run ids stay
ARITHMETIC_DEFAULTS: dict[str, Any] = {
    "estimator": "spsa",
    "directions": 1,
    "direction": "dense",
    "schedule": "constant",
    "budget": 0,
}
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What the loss is. ``kind`` is ``causal_lm``, ``classify`` or ``completion``.

    For ``completion``: prompt -> completion pairs, the loss on the completion tokens only;
    ``template`` is an optional ``str.format`` template with one ``{prompt}`` field. With
    ``chat`` the examples are conversations instead, rendered by the tokenizer's own chat
    template (and ``template`` is empty).

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
    chat: bool = False

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
        if self.chat and (self.kind != "completion" or self.template):
            raise ManifestError(
                "chat is for completion tasks, whose chats the tokenizer's chat template "
                "formats (so they take no template)"
            )
        if self.kind == "completion":
            check_completion_template(self.template)
            if self.scorer or self.labels or self.label_words or self.temperature:
                raise ManifestError(
                    "a completion task has no scorer, labels, label_words or temperature"
                )
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
        elif self.kind == "completion":
            d.update(template=self.template, chat=self.chat)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TaskSpec:
        no_unknown(d, TASK_FIELDS, "task")
        try:
            return cls(
                kind=read_typed(d, "kind", str),
                seq_len=read_typed(d, "seq_len", int),
                scorer=read_typed(d, "scorer", str, ""),
                labels=tuple(read_str_list(d, "labels")),
                label_words=tuple(read_str_list(d, "label_words")),
                template=read_typed(d, "template", str, ""),
                temperature=read_float(d, "temperature", 0.0),
                chat=read_bool(d, "chat"),
            )
        except KeyError as exc:
            raise ManifestError(f"task is missing the field {exc.args[0]!r}") from exc


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    """An adapter trained beside a frozen base (docs/PROTOCOL.md §2, "Adapters").

    ``kind`` is ``lora``: every module whose dotted name is one of ``targets`` or ends with
    ``"." + target`` gets ``W x + (alpha / rank) * B A x`` with A (rank, in) and B (out, rank);
    A is seeded from the manifest's ``init_seed``, B starts at zero. ``targets`` are sorted and
    distinct, so that one adapter has one spelling (and one run id).
    """

    kind: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ADAPTER_KINDS:
            raise ManifestError(
                f"adapter kind must be one of {', '.join(ADAPTER_KINDS)}, not {self.kind!r}"
            )
        if not 1 <= self.rank <= MAX_LORA_RANK:
            raise ManifestError(f"adapter rank must be in [1, {MAX_LORA_RANK}], got {self.rank}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ManifestError(f"adapter alpha must be a positive finite number, got {self.alpha}")
        if not 1 <= len(self.targets) <= MAX_ADAPTER_TARGETS:
            raise ManifestError(
                f"an adapter needs 1 to {MAX_ADAPTER_TARGETS} target modules, "
                f"got {len(self.targets)}"
            )
        for t in self.targets:
            if not isinstance(t, str) or not _TARGET.fullmatch(t):
                raise ManifestError(f"adapter target {t!r} is not a dotted module name")
        if list(self.targets) != sorted(set(self.targets)):
            raise ManifestError("adapter targets must be sorted and distinct")

    @property
    def scaling(self) -> float:
        """The factor of ``B A x``: ``alpha / rank``."""
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rank": self.rank,
            "alpha": float(self.alpha),
            "targets": list(self.targets),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AdapterSpec:
        if not isinstance(d, Mapping):
            raise ManifestError("manifest adapter must be a map")
        no_unknown(d, ADAPTER_FIELDS, "adapter")
        try:
            return cls(
                kind=read_typed(d, "kind", str),
                rank=read_typed(d, "rank", int),
                alpha=read_float(d, "alpha"),
                targets=tuple(read_str_list(d, "targets", "adapter")),
            )
        except KeyError as exc:
            raise ManifestError(f"adapter is missing the field {exc.args[0]!r}") from exc


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
    adapter: AdapterSpec | None = None  # None: the trainable set is the base's own tensors
    relays: tuple[str, ...] = ()  # the relays nodes may follow (docs/PROTOCOL.md §9)
    schedule: str = "constant"  # how lr falls over the run (protocol/schedule.py, §6)
    budget: int = 0  # the records the run plans; the decay reaches 0 there

    def __post_init__(self) -> None:
        try:
            check_run_name(self.name)
            for node, _ in self.keys:
                check_node_id(node)
        except DecodeError as exc:
            raise ManifestError(str(exc)) from exc
        if self.format != FORMAT:
            hint = (
                ": it was made by an older seedswarm, whose weights could leave their exact "
                "range; start a new run (its log cannot be replayed by this version)"
                if self.format < FORMAT
                else ": upgrade seedswarm"
            )
            raise ManifestError(
                f"manifest format {self.format} is not supported (this is {FORMAT}){hint}"
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
        check_arithmetic(self.estimator, self.directions, self.direction)
        check_schedule(self.schedule, self.budget)
        if self.adapter is not None and self.task.scorer == "head":
            raise ManifestError(
                "an adapter trains beside a frozen base, and a new head would stay at its "
                "random start: use the lm, mlm or embed scorer with an adapter"
            )
        try:
            check_pattern(self.trainable)  # the portable subset every language can match
        except PatternError as exc:
            raise ManifestError(
                f"trainable is not a portable regular expression (docs/PROTOCOL.md §2): {exc}"
            ) from exc
        try:
            re.compile(self.trainable)
        except (re.error, OverflowError, RecursionError) as exc:
            raise ManifestError(f"trainable is not a valid regular expression: {exc}") from exc
        if list(self.keys) != sorted(self.keys) or len({n for n, _ in self.keys}) != len(self.keys):
            raise ManifestError("keys must be sorted by node id, one key per node")
        check_relays(self.relays, dict(self.keys))
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
        return (
            {
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
            }
            | {k: getattr(self, k) for k, v in ARITHMETIC_DEFAULTS.items() if getattr(self, k) != v}
            | ({} if self.adapter is None else {"adapter": self.adapter.to_dict()})
            | ({"relays": list(self.relays)} if self.relays else {})
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        if not isinstance(d, Mapping):
            raise ManifestError("a manifest must be a map")
        no_unknown(d, MANIFEST_FIELDS, "manifest")
        try:
            keys = d.get("keys", {}) or {}
            if not isinstance(keys, Mapping):
                raise ManifestError("manifest keys must be a map of node id to hex public key")
            task = d["task"]
            if not isinstance(task, Mapping):
                raise ManifestError("manifest task must be a map")
            return cls(
                format=read_typed(d, "format", int),
                name=read_typed(d, "name", str),
                model=read_typed(d, "model", str),
                base_hash=read_typed(d, "base_hash", str),
                trainable=read_typed(d, "trainable", str, ""),
                epsilon=read_float(d, "epsilon"),
                lr=read_float(d, "lr"),
                unit_exp=read_typed(d, "unit_exp", int),
                headroom_exp=read_typed(d, "headroom_exp", int),
                grid_min_exp=read_typed(d, "grid_min_exp", int),
                init_seed=read_typed(d, "init_seed", int),
                task=TaskSpec.from_dict(task),
                keys=tuple(sorted((str(k), str(v)) for k, v in keys.items())),
                estimator=read_typed(d, "estimator", str, "spsa"),
                directions=read_typed(d, "directions", int, 1),
                direction=read_typed(d, "direction", str, "dense"),
                adapter=None if "adapter" not in d else AdapterSpec.from_dict(d["adapter"]),
                relays=tuple(read_str_list(d, "relays", "manifest")),
                schedule=read_typed(d, "schedule", str, "constant"),
                budget=read_typed(d, "budget", int, 0),
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
