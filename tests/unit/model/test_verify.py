"""verify_export: yes for a true export, no -- naming the tensor -- for anything else."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from seedswarm.model.engine import Engine
from seedswarm.model.errors import ModelError
from seedswarm.model.export import export
from seedswarm.model.hyper import Hyper
from seedswarm.model.verify import verify_export
from seedswarm.protocol.manifest import TaskSpec
from seedswarm.protocol.records import Record

from .helpers import random_records

TASK = TaskSpec(kind="completion", seq_len=64)
HYPER = Hyper(lr=1e-3, unit_exp=-12)
LORA = Hyper(lr=1e-3, unit_exp=-12, adapter="lora", lora_rank=4, lora_alpha=8.0)
RECORDS = random_records(30, rng_seed=4)
VV = {"a": 0, "b": 0, "c": 0}
for _r in RECORDS:
    VV[_r.node] = _r.seq + 1


def _exported(
    tmp_path: Path, hyper: Hyper = HYPER, *, include_base: bool = False
) -> tuple[Engine, Path]:
    e = Engine.build("v", "tiny", TASK, hyper)
    e.apply(RECORDS)
    out = tmp_path / "export"
    export(e, out, vv=VV, include_base=include_base)
    return e, out


def _replayed(e: Engine, extra: int = 0) -> Engine:
    """What a checker has: the run opened from its manifest, the log replayed (and ``extra``
    records more)."""
    other = Engine.open(e.manifest)
    other.apply(RECORDS[::-1] + [Record("z", i, 5, 0) for i in range(extra)])
    return other


def _change_one_weight(file: Path, key: str) -> None:
    tensors = load_file(str(file))
    t = tensors[key].clone()
    flat = t.view(-1)
    flat[3] = torch.nextafter(flat[3], torch.tensor(float("inf")))  # one ulp
    tensors[key] = t
    save_file(tensors, str(file), metadata={"format": "pt"})


def test_a_true_export_verifies_against_a_replay(tmp_path: Path) -> None:
    e, out = _exported(tmp_path)
    v = verify_export(out, _replayed(e), vv=VV)
    assert v.ok, v.reason
    assert v.kind == "causal_lm"
    assert v.mismatch is None
    assert v.tensors == len(load_file(str(out / "model.safetensors")))
    assert v.fingerprint == v.claimed_fingerprint == e.fingerprint()
    assert "exactly what the log makes" in v.reason


def test_one_changed_weight_is_named(tmp_path: Path) -> None:
    e, out = _exported(tmp_path)
    name = "transformer.h.1.mlp.c_fc.weight"
    _change_one_weight(out / "model.safetensors", name)
    v = verify_export(out, _replayed(e), vv=VV)
    assert not v.ok
    assert v.mismatch == name
    assert v.reason == f"tensor {name} differs from the replay in 1 of 16384 elements"


def test_a_missing_or_an_extra_tensor_is_named(tmp_path: Path) -> None:
    e, out = _exported(tmp_path)
    file = out / "model.safetensors"
    tensors = load_file(str(file))
    del tensors["transformer.ln_f.bias"]
    tensors["transformer.zz_extra"] = torch.zeros(3)
    save_file(tensors, str(file))
    v = verify_export(out, _replayed(e))
    assert (v.ok, v.mismatch) == (False, "transformer.ln_f.bias")
    assert "missing from the export" in v.reason
    tensors["transformer.ln_f.bias"] = dict(e.task_model.base_weights())["transformer.ln_f.bias"]
    save_file(tensors, str(file))
    v = verify_export(out, _replayed(e))
    assert (v.ok, v.mismatch) == (False, "transformer.zz_extra")
    assert "not in the model" in v.reason


def test_another_log_is_not_this_export(tmp_path: Path) -> None:
    e, out = _exported(tmp_path)
    longer = _replayed(e, extra=1)
    v = verify_export(out, longer, vv={**VV, "z": 1})
    assert not v.ok
    assert "replay the log up to the export's version vector" in v.reason
    v = verify_export(out, longer)  # without the vector: the weights tell
    assert not v.ok
    assert v.mismatch is not None
    other_run = Engine.build("w", "tiny", TASK, HYPER)
    v = verify_export(out, other_run)
    assert not v.ok
    assert v.reason.startswith("the export is of run")


def test_a_false_fingerprint_claim_is_caught(tmp_path: Path) -> None:
    e, out = _exported(tmp_path)
    info = json.loads((out / "seedswarm.json").read_text())
    info["fingerprint"] = "0" * 64
    (out / "seedswarm.json").write_text(json.dumps(info))
    v = verify_export(out, _replayed(e))
    assert not v.ok
    assert v.mismatch is None
    assert "claims fingerprint 0000000000000000" in v.reason


def test_sharded_weights_are_read_through_their_index(tmp_path: Path) -> None:
    e, out = _exported(tmp_path)
    tensors = load_file(str(out / "model.safetensors"))
    keys = sorted(tensors)
    halves = {
        "model-00001-of-00002.safetensors": keys[::2],
        "model-00002-of-00002.safetensors": keys[1::2],
    }
    for name, part in halves.items():
        save_file({k: tensors[k] for k in part}, str(out / name), metadata={"format": "pt"})
    (out / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {k: n for n, part in halves.items() for k in part}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    assert verify_export(out, _replayed(e)).ok
    _change_one_weight(out / "model-00002-of-00002.safetensors", keys[1])
    assert verify_export(out, _replayed(e)).mismatch == keys[1]


def test_an_adapter_export_and_its_base(tmp_path: Path) -> None:
    e, out = _exported(tmp_path, LORA, include_base=True)
    assert verify_export(out, _replayed(e), vv=VV).ok
    assert verify_export(out / "base", _replayed(e)).ok
    saved = tmp_path / "saved"
    shutil.copytree(out, saved)
    name = "transformer.h.0.attn.c_attn.lora_B.weight"
    _change_one_weight(out / "adapter_model.safetensors", "base_model.model." + name)
    v = verify_export(out, _replayed(e))
    assert (v.ok, v.mismatch) == (False, "base_model.model." + name)
    # the base beside the adapter is checked too: it must be the base the manifest names
    shutil.rmtree(out)
    shutil.copytree(saved, out)
    _change_one_weight(out / "base" / "model.safetensors", "transformer.wpe.weight")
    v = verify_export(out, _replayed(e))
    assert (v.ok, v.mismatch) == (False, "base/transformer.wpe.weight")
    assert verify_export(out / "base", _replayed(e)).mismatch == "transformer.wpe.weight"


def test_a_sentence_transformers_head_is_checked(tmp_path: Path, bert_embed_dir: Path) -> None:
    task = TaskSpec(kind="classify", seq_len=32, scorer="head", labels=("a", "b"))
    e = Engine.build("h", str(bert_embed_dir), task, HYPER)
    e.apply(RECORDS)
    out = tmp_path / "st"
    export(e, out, vv=VV)
    other = Engine.open(e.manifest, model_ref=str(bert_embed_dir))
    other.apply(RECORDS)
    assert verify_export(out, other, vv=VV).ok
    _change_one_weight(out / "2_Dense" / "model.safetensors", "linear.weight")
    v = verify_export(out, other, vv=VV)
    assert (v.ok, v.mismatch) == (False, "2_Dense/linear.weight")


def test_not_an_export(tmp_path: Path) -> None:
    e = Engine.build("v", "tiny", TASK, HYPER)
    with pytest.raises(ModelError, match="not a seedswarm export"):
        verify_export(tmp_path, e)
    (tmp_path / "seedswarm.json").write_text("{}")
    with pytest.raises(ModelError, match="not a seedswarm export of format 1"):
        verify_export(tmp_path, e)


def test_export_refuses_a_directory_that_is_not_empty(tmp_path: Path) -> None:
    e = Engine.build("v", "tiny", TASK, HYPER)
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(ModelError, match="not an empty directory"):
        export(e, tmp_path, vv={})


def test_an_adapter_export_includes_a_base_that_is_not_on_the_hub(tmp_path: Path) -> None:
    e = Engine.build("v", "tiny", TASK, LORA)
    (adapter, base) = export(e, tmp_path / "a", vv={})
    assert (adapter.kind, base.kind) == ("peft_adapter", "base")
    assert base.path == tmp_path / "a" / "base"
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())[
        "base_model_name_or_path"
    ] == str(base.path)
    (alone,) = export(e, tmp_path / "b", vv={}, include_base=False)
    assert not (tmp_path / "b" / "base").exists()
    assert "base hash" in alone.notes[0]
    assert verify_export(tmp_path / "b", e).ok
