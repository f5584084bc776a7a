"""The run manifest: round trips, the run id, and validation that only ever says ManifestError."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seedswarm.protocol import canonical
from seedswarm.protocol.errors import ManifestError
from seedswarm.protocol.manifest import RUN_DOMAIN, AdapterSpec, Manifest, TaskSpec

from .strategies import KEY_A, KEY_B

HASH = "ab" * 32

CLASSIFY = TaskSpec(
    kind="classify",
    seq_len=64,
    scorer="embed",
    labels=("negative", "positive"),
    label_words=("a negative review", "a positive review"),
    template="{text}",
    temperature=0.05,
)


def manifest(**changes: Any) -> Manifest:
    base = Manifest(name="run-1", model="tiny-gpt2", base_hash=HASH, task=TaskSpec("causal_lm"))
    return base.replace(**changes)


def signed_manifest() -> Manifest:
    keys = tuple(sorted([("alice", KEY_A.public_hex()), ("bob", KEY_B.public_hex())]))
    return manifest(task=CLASSIFY, keys=keys, trainable=r"layers\.[0-9]+\.attn")


COMPLETION = TaskSpec(kind="completion", seq_len=256, template="Question: {prompt}\nAnswer:")
LORA = AdapterSpec(kind="lora", rank=8, alpha=16.0, targets=("q_proj", "v_proj"))

EXAMPLES = [
    manifest(),
    signed_manifest(),
    manifest(epsilon=1e-2, lr=3e-5, unit_exp=-33),
    manifest(task=COMPLETION, adapter=LORA, trainable="lora_B"),
]


@pytest.mark.parametrize("m", EXAMPLES)
def test_round_trips(m: Manifest) -> None:
    assert Manifest.from_dict(m.to_dict()) == m
    assert Manifest.from_json(m.to_json()) == m
    assert Manifest.from_json(m.to_json()).run_id() == m.run_id()
    # The dict survives canonical msgpack too (it is how the manifest travels by its hash).
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m


def test_run_id_is_the_documented_hash() -> None:
    m = manifest()
    expected = canonical.sha256(b"seedswarm/run/v1", canonical.packb(m.to_dict()))[:8]
    assert RUN_DOMAIN == b"seedswarm/run/v1"
    assert m.run_id() == expected
    assert len(m.run_id()) == 8
    # Pinned: a change here changes every run id, and nodes of old and new code stop mixing.
    assert m.run_id().hex() == GOLDEN_RUN_ID


GOLDEN_RUN_ID = "b56bccb13a929d57"  # manifest format 3 (protocol 3)


def test_run_id_is_stable() -> None:
    a, b = manifest(), manifest()
    assert a.run_id() == b.run_id()
    assert a.canonical_bytes() == b.canonical_bytes()
    # Key order in the JSON text does not matter.
    shuffled = json.dumps(dict(reversed(list(manifest().to_dict().items()))))
    assert Manifest.from_json(shuffled).run_id() == a.run_id()


def test_int_and_float_spellings_give_one_run_id() -> None:
    # JSON may spell 1.0 as 1; the run id must not depend on it.
    a = manifest(epsilon=1, lr=1)
    b = manifest(epsilon=1.0, lr=1.0)
    assert a == b
    assert a.run_id() == b.run_id()
    assert Manifest.from_json(a.to_json()).run_id() == a.run_id()


CHANGES: list[tuple[str, Any]] = [
    ("name", "run-2"),
    ("model", "tiny-gpt2-b"),
    ("base_hash", "cd" * 32),
    ("task", TaskSpec("causal_lm", seq_len=256)),
    ("task", CLASSIFY),
    ("epsilon", 2e-3),
    ("lr", 2e-4),
    ("unit_exp", -21),
    ("headroom_exp", 4),
    ("grid_min_exp", -30),
    ("trainable", "mlp"),
    ("init_seed", 1),
    ("keys", (("alice", KEY_A.public_hex()),)),
    ("adapter", LORA),
]


@pytest.mark.parametrize(("field", "value"), CHANGES)
def test_run_id_changes_with_every_field(field: str, value: Any) -> None:
    base = manifest()
    changed = base.replace(**{field: value})
    assert changed.run_id() != base.run_id()
    assert base.differences(changed) == [field]
    assert changed.differences(base) == [field]


@pytest.mark.parametrize(
    "task",
    [
        dataclasses.replace(CLASSIFY, temperature=0.1),
        dataclasses.replace(CLASSIFY, labels=("neg", "pos")),
        dataclasses.replace(CLASSIFY, label_words=("bad", "good")),
        dataclasses.replace(CLASSIFY, template="Review: {text}"),
        dataclasses.replace(CLASSIFY, scorer="lm"),
        dataclasses.replace(CLASSIFY, seq_len=65),
        COMPLETION,
        dataclasses.replace(COMPLETION, template=""),
        dataclasses.replace(COMPLETION, template="", chat=True),
    ],
)
def test_run_id_changes_with_every_task_field(task: TaskSpec) -> None:
    base = manifest(task=CLASSIFY)
    changed = base.replace(task=task)
    assert changed.run_id() != base.run_id()
    assert base.differences(changed) == ["task"]
    assert Manifest.from_json(changed.to_json()) == changed


@pytest.mark.parametrize(
    "adapter",
    [
        dataclasses.replace(LORA, rank=4),
        dataclasses.replace(LORA, alpha=32.0),
        dataclasses.replace(LORA, targets=("q_proj",)),
    ],
)
def test_run_id_changes_with_every_adapter_field(adapter: AdapterSpec) -> None:
    base = manifest(adapter=LORA)
    changed = base.replace(adapter=adapter)
    assert changed.run_id() != base.run_id()
    assert base.differences(changed) == ["adapter"]
    assert Manifest.from_json(changed.to_json()) == changed


def test_a_manifest_without_an_adapter_has_no_adapter_field() -> None:
    """An absent adapter keeps the bytes (and run ids) of manifests that never had one."""
    assert "adapter" not in manifest().to_dict()
    assert manifest(adapter=LORA).to_dict()["adapter"] == {
        "kind": "lora",
        "rank": 8,
        "alpha": 16.0,
        "targets": ["q_proj", "v_proj"],
    }
    assert LORA.scaling == 2.0


def test_a_completion_task_is_kind_seq_len_and_template() -> None:
    assert COMPLETION.to_dict() == {
        "kind": "completion",
        "seq_len": 256,
        "template": "Question: {prompt}\nAnswer:",
        "chat": False,
    }
    assert TaskSpec.from_dict(COMPLETION.to_dict()) == COMPLETION
    chat = TaskSpec(kind="completion", seq_len=64, chat=True)
    assert chat.to_dict() == {"kind": "completion", "seq_len": 64, "template": "", "chat": True}
    assert TaskSpec.from_dict(chat.to_dict()) == chat
    assert "chat" not in CLASSIFY.to_dict()


def test_differences() -> None:
    a = manifest()
    assert a.differences(manifest()) == []
    b = a.replace(lr=5e-4, name="other", task=CLASSIFY)
    assert a.differences(b) == ["lr", "name", "task"]


def test_properties() -> None:
    assert manifest().open_mode
    signed = signed_manifest()
    assert not signed.open_mode
    assert signed.public_keys() == {"alice": KEY_A.public_bytes(), "bob": KEY_B.public_bytes()}
    assert manifest(unit_exp=-20).unit == 2.0**-20


# --- validation -----------------------------------------------------------------------------

BAD_TOP: list[tuple[str, Any]] = [
    ("format", 1),  # protocol 1: its nodes could not read our frames
    ("format", 2),  # protocol 2: fp32 weights that left their exact range in long runs
    ("format", 4),
    ("format", "3"),
    ("name", ""),
    ("name", "a/b"),
    ("name", "x" * 65),
    ("name", 7),
    ("model", ""),
    ("model", None),
    ("model", "\ud800"),  # a lone surrogate has no UTF-8 form, so no run id
    ("base_hash", "AB" * 32),
    ("base_hash", "ab" * 31),
    ("base_hash", 5),
    ("epsilon", 0),
    ("epsilon", -1.0),
    ("epsilon", float("nan")),
    ("epsilon", float("inf")),
    ("epsilon", "0.1"),
    ("epsilon", True),
    ("epsilon", 10**400),
    ("lr", 0.0),
    ("lr", None),
    ("lr", -(10**400)),
    ("unit_exp", 1),
    ("unit_exp", -61),
    ("unit_exp", 1.5),
    ("unit_exp", False),
    ("headroom_exp", -1),
    ("headroom_exp", 13),
    ("grid_min_exp", 1),
    ("grid_min_exp", -101),
    ("init_seed", -1),
    ("init_seed", 2**63),
    ("init_seed", 10**400),
    ("trainable", "("),
    ("trainable", "a{4294967296}"),
    ("trainable", "(" * 5000 + ")" * 5000),
    ("trainable", 3),
    ("trainable", "\udfff"),
    ("keys", [["alice", "00" * 32]]),
    ("keys", "alice"),
    ("keys", {"alice": "00" * 31}),
    ("keys", {"alice": "GG" * 32}),
    ("keys", {"a/b": "00" * 32}),
    ("keys", {"alice": 5}),
    ("task", []),
    ("task", None),
    ("task", {}),
    ("task", {"kind": "translate", "seq_len": 64}),
    # A lone surrogate is caught by the manifest, which needs UTF-8 to hash its task.
    ("task", {"kind": "classify", "seq_len": 128, "scorer": "head", "labels": ["a", "\ud800"]}),
    ("adapter", None),
    ("adapter", []),
    ("adapter", {}),
    ("adapter", {"kind": "lora", "rank": 8, "alpha": 16.0}),
    ("adapter", {"kind": "ia3", "rank": 8, "alpha": 16.0, "targets": ["q"]}),
    ("adapter", {"kind": "lora", "rank": 0, "alpha": 16.0, "targets": ["q"]}),
    ("adapter", {"kind": "lora", "rank": 1025, "alpha": 16.0, "targets": ["q"]}),
    ("adapter", {"kind": "lora", "rank": 8.0, "alpha": 16.0, "targets": ["q"]}),
    ("adapter", {"kind": "lora", "rank": 8, "alpha": 0.0, "targets": ["q"]}),
    ("adapter", {"kind": "lora", "rank": 8, "alpha": float("inf"), "targets": ["q"]}),
    ("adapter", {"kind": "lora", "rank": 8, "alpha": 16.0, "targets": []}),
    ("adapter", {"kind": "lora", "rank": 8, "alpha": 16.0, "targets": ["v", "q"]}),
    ("adapter", {"kind": "lora", "rank": 8, "alpha": 16.0, "targets": ["q", "q"]}),
    ("adapter", {"kind": "lora", "rank": 8, "alpha": 16.0, "targets": ["a b"]}),
    ("adapter", {"kind": "lora", "rank": 8, "alpha": 16.0, "targets": [".q"]}),
    ("adapter", {"kind": "lora", "rank": 8, "alpha": 16.0, "targets": [3]}),
    ("adapter", {"kind": "lora", "rank": 8, "alpha": 16.0, "targets": ["q"] * 65}),
    ("adapter", {"kind": "lora", "rank": 8, "alpha": 16.0, "targets": ["q"], "dropout": 0.1}),
]

BAD_TASK: list[dict[str, Any]] = [
    {"kind": "causal_lm", "seq_len": 7},
    {"kind": "causal_lm", "seq_len": 65537},
    {"kind": "causal_lm", "seq_len": 10**400},
    {"kind": "causal_lm", "seq_len": "128"},
    {"kind": "causal_lm"},
    {"kind": 1, "seq_len": 128},
    {"kind": "classify", "seq_len": 128, "scorer": "vibes", "labels": ["a", "b"]},
    {"kind": "classify", "seq_len": 128, "scorer": "head", "labels": ["a"]},
    {"kind": "classify", "seq_len": 128, "scorer": "lm", "labels": ["a", "b"]},
    {"kind": "classify", "seq_len": 128, "scorer": "lm", "labels": "ab", "label_words": "ab"},
    {"kind": "classify", "seq_len": 128, "scorer": "lm", "labels": ["a", 2], "label_words": []},
    {"kind": "classify", "seq_len": 128, "scorer": "embed", "labels": ["a", "b"],
     "label_words": ["x", "y"], "temperature": 0.0},
    {"kind": "classify", "seq_len": 128, "scorer": "embed", "labels": ["a", "b"],
     "label_words": ["x", "y"], "temperature": 10**400},
    {"kind": "classify", "seq_len": 128, "scorer": "head", "labels": ["a", "b"],
     "temperature": float("nan")},
    {"kind": "completion", "seq_len": 128, "template": "{question}"},
    {"kind": "completion", "seq_len": 128, "template": "{prompt} {other}"},
    {"kind": "completion", "seq_len": 128, "template": "no field"},
    {"kind": "completion", "seq_len": 128, "template": "{prompt"},
    {"kind": "completion", "seq_len": 128, "template": "{0}"},
    {"kind": "completion", "seq_len": 128, "template": "{prompt.upper}"},
    {"kind": "completion", "seq_len": 128, "scorer": "lm"},
    {"kind": "completion", "seq_len": 128, "labels": ["a", "b"]},
    {"kind": "completion", "seq_len": 128, "temperature": 0.5},
    {"kind": "completion", "seq_len": 128, "chat": True, "template": "{prompt}"},
    {"kind": "completion", "seq_len": 128, "chat": 1},
    {"kind": "causal_lm", "seq_len": 128, "chat": True},
    {"kind": "classify", "seq_len": 128, "scorer": "head", "labels": ["a", "b"], "chat": True},
]  # fmt: skip


@pytest.mark.parametrize(
    ("field", "value"), BAD_TOP, ids=[f"{field}-{i}" for i, (field, _) in enumerate(BAD_TOP)]
)
def test_invalid_field_is_a_manifest_error(field: str, value: Any) -> None:
    d = manifest().to_dict()
    d[field] = value
    with pytest.raises(ManifestError):
        Manifest.from_dict(d)


@pytest.mark.parametrize("task", BAD_TASK, ids=[f"task-{i}" for i in range(len(BAD_TASK))])
def test_invalid_task_is_a_manifest_error(task: dict[str, Any]) -> None:
    d = manifest().to_dict()
    d["task"] = task
    with pytest.raises(ManifestError):
        Manifest.from_dict(d)
    with pytest.raises(ManifestError):
        TaskSpec.from_dict(task)


@pytest.mark.parametrize(
    "field",
    ["format", "name", "model", "base_hash", "epsilon", "lr", "unit_exp", "headroom_exp",
     "grid_min_exp", "init_seed", "task"],
)  # fmt: skip
def test_missing_field_is_a_manifest_error(field: str) -> None:
    d = manifest().to_dict()
    del d[field]
    with pytest.raises(ManifestError, match=field):
        Manifest.from_dict(d)


def test_optional_fields_have_defaults() -> None:
    d = manifest().to_dict()
    del d["keys"], d["trainable"]
    assert Manifest.from_dict(d) == manifest()


def test_an_adapter_cannot_train_a_new_head() -> None:
    head = TaskSpec(kind="classify", seq_len=64, scorer="head", labels=("a", "b"))
    with pytest.raises(ManifestError, match="adapter"):
        manifest(task=head, adapter=LORA)


def test_unsorted_or_duplicate_keys_rejected_by_the_constructor() -> None:
    a, b = ("alice", KEY_A.public_hex()), ("bob", KEY_B.public_hex())
    with pytest.raises(ManifestError):
        manifest(keys=(b, a))
    with pytest.raises(ManifestError):
        manifest(keys=(a, ("alice", KEY_B.public_hex())))


BAD_JSON = ["", "{", "[]", "null", "42", '"manifest"', "[" * 100_000, '{"task": ' * 50_000, "NaN"]


@pytest.mark.parametrize("text", BAD_JSON, ids=[f"json-{i}" for i in range(len(BAD_JSON))])
def test_bad_json_is_a_manifest_error(text: str) -> None:
    with pytest.raises(ManifestError):
        Manifest.from_json(text)


@settings(max_examples=200, deadline=None)
@given(
    field=st.sampled_from(sorted(manifest().to_dict())),
    value=st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats()
        | st.text(max_size=70)
        | st.sampled_from(["ab" * 32, "causal_lm", "classify", "embed"]),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=12,
    ),
)
def test_any_field_value_gives_a_manifest_or_a_manifest_error(field: str, value: Any) -> None:
    d = manifest().to_dict()
    d[field] = value
    try:
        m = Manifest.from_dict(d)
    except ManifestError:
        return
    # Whatever was accepted is a usable manifest: it hashes and round-trips.
    assert len(m.run_id()) == 8
    assert Manifest.from_json(m.to_json()) == m


@pytest.mark.parametrize("where", ["manifest", "task"])
def test_unknown_fields_are_refused(where: str) -> None:
    """A misspelt field must not drop out of the run id silently."""
    d = manifest().to_dict()
    if where == "manifest":
        d["learning_rate"] = 0.1
    else:
        d["task"]["seqlen"] = 5
    with pytest.raises(ManifestError, match="unknown field"):
        Manifest.from_dict(d)
    d = manifest(adapter=LORA).to_dict()
    d["adapter"]["lora_dropout"] = 0.0
    with pytest.raises(ManifestError, match="unknown field"):
        Manifest.from_dict(d)
