"""Data references: local files, the builtin corpus, datasets saved to disk; shards and batches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seedswarm.model import data
from seedswarm.model.data import RawData, read, sample_batch, shard_indices
from seedswarm.model.errors import DataError


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_txt_is_one_document(tmp_path: Path) -> None:
    ref = _write(tmp_path / "a.txt", "line one\nline two ✓\n")
    got = read(ref)
    assert got == RawData(("line one\nline two ✓\n",), None)
    assert not got.is_classification
    upper = _write(tmp_path / "b.TXT", "x")
    assert read(upper).texts == ("x",)


def test_jsonl_with_labels_and_sentence_column(tmp_path: Path) -> None:
    lines = [
        {"sentence": "good", "label": 1},
        {"sentence": "bad", "label": 0, "extra": [1, 2]},
        {"sentence": " spaced ", "label": " positive "},
    ]
    ref = _write(tmp_path / "d.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    got = read(ref)
    assert got.texts == ("good", "bad", " spaced ")
    assert got.labels == ("1", "0", "positive")
    assert got.is_classification


def test_jsonl_text_without_labels(tmp_path: Path) -> None:
    ref = _write(tmp_path / "d.jsonl", '{"text": "one"}\n{"text": "two", "sentence": "ignored?"}\n')
    got = read(ref)
    assert got == RawData(("one", "two"), None)


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    ref = _write(tmp_path / "bad.jsonl", '{"text": "ok"}\n\n{"text": broken}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: not valid JSON"):
        read(ref)
    ref = _write(tmp_path / "arr.jsonl", '{"text": "ok"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"arr\.jsonl:2: each line must be a JSON object"):
        read(ref)
    with pytest.raises(DataError, match="holds no examples"):
        read(_write(tmp_path / "empty.jsonl", "\n\n"))
    with pytest.raises(DataError, match="needs a 'sentence' or 'text' column"):
        read(_write(tmp_path / "cols.jsonl", '{"review": "x", "label": 1}\n'))


@pytest.mark.parametrize(("suffix", "sep"), [(".csv", ","), (".tsv", "\t")])
def test_tables(tmp_path: Path, suffix: str, sep: str) -> None:
    rows = ["sentence" + sep + "label", "good film" + sep + "1", "bad, really" + sep + "0"]
    if sep == ",":
        rows[2] = '"bad, really",0'
    got = read(_write(tmp_path / f"t{suffix}", "\n".join(rows) + "\n"))
    assert got.texts == ("good film", "bad, really")
    assert got.labels == ("1", "0")
    text_only = read(_write(tmp_path / f"u{suffix}", f"id{sep}text\n1{sep}hello\n2{sep}world\n"))
    assert text_only == RawData(("hello", "world"), None)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty_label.csv", "text,label\ngood,1\nbad,\n"),
        ("short_row.csv", "text,label\ngood,1\nbad\n"),  # the label cell is missing altogether
        ("null.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": null}\n'),
        ("missing.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n'),
        ("blank.tsv", "text\tlabel\ngood\t1\nbad\t  \n"),
    ],
)
def test_rows_without_a_label_are_refused(tmp_path: Path, name: str, content: str) -> None:
    with pytest.raises(DataError, match="rows without a label"):
        read(_write(tmp_path / name, content))


def test_unsupported_missing_and_undecodable_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unsupported data format \.parquet"):
        read(_write(tmp_path / "x.parquet", "x"))
    with pytest.raises(DataError, match=r"unsupported data format \(none\)"):
        read(_write(tmp_path / "noext", "x"))
    with pytest.raises(DataError, match="does not exist"):
        read(str(tmp_path / "missing.txt"))
    with pytest.raises(DataError, match="does not exist"):
        read(str(tmp_path))  # a directory is not a data file
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(DataError, match="not UTF-8"):
        read(str(tmp_path / "latin1.txt"))
    with pytest.raises(DataError, match="unknown builtin"):
        read("builtin:nothing")
    for exc_ref in (str(tmp_path / "missing.txt"), str(tmp_path / "x.parquet")):
        with pytest.raises(DataError) as info:
            read(exc_ref)
        assert "\n" not in str(info.value)


def test_builtin_patterns_is_deterministic() -> None:
    a, b = read("builtin:patterns"), read("builtin:patterns")
    assert a == b
    assert a.labels is None
    (text,) = a.texts
    lines = text.splitlines()
    assert len(lines) == 4000
    assert len(set(lines)) > 500
    assert all(line.endswith(".") for line in lines)
    assert lines[0].split()[0] in {"the", "a", "my"}


def test_shard_indices() -> None:
    assert shard_indices(10, (0, 1)) == list(range(10))
    assert shard_indices(10, (1, 3)) == [1, 4, 7]
    assert shard_indices(10, (2, 3)) == [2, 5, 8]
    parts = [shard_indices(11, (i, 4)) for i in range(4)]
    assert sorted(x for p in parts for x in p) == list(range(11))
    for bad in ((3, 3), (-1, 2), (0, 0)):
        with pytest.raises(DataError, match="not valid"):
            shard_indices(10, bad)
    with pytest.raises(DataError, match="empty"):
        shard_indices(2, (3, 4))


def test_sample_batch_is_a_function_of_the_seed() -> None:
    a = sample_batch(12345, 1000, 64)
    assert a == sample_batch(12345, 1000, 64)
    assert a != sample_batch(12346, 1000, 64)
    assert sample_batch(12345, 1000, 16) == a[:16]  # a prefix: the i-th draw uses counter i
    assert len(set(a)) > 50
    assert sample_batch(2**64 - 1, 1, 5) == [0] * 5
    # two seeds' draws over a small population cover it
    assert set(sample_batch(1, 7, 200)) == set(range(7))


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**64 - 1),
    population=st.integers(min_value=1, max_value=2**40),
    size=st.integers(min_value=1, max_value=50),
)
def test_sample_batch_in_range(seed: int, population: int, size: int) -> None:
    got = sample_batch(seed, population, size)
    assert len(got) == size
    assert all(isinstance(i, int) and 0 <= i < population for i in got)


# -- hf: datasets saved to disk (the optional extra seedswarm[datasets]) ---------------------------


def _datasets() -> Any:
    return pytest.importorskip(
        "datasets", reason="the optional extra seedswarm[datasets] is not installed"
    )


def test_hf_dataset_saved_to_disk(tmp_path: Path) -> None:
    datasets = _datasets()
    ds = datasets.Dataset.from_dict(
        {"sentence": ["good", "bad", "fine"], "label": [1, 0, 1], "idx": [0, 1, 2]}
    )
    ds.save_to_disk(str(tmp_path / "plain"))
    got = read(f"hf:{tmp_path / 'plain'}")
    assert got == RawData(("good", "bad", "fine"), ("1", "0", "1"))

    dd = datasets.DatasetDict({"train": ds, "validation": ds.select([1])})
    dd.save_to_disk(str(tmp_path / "dict"))
    assert read(f"hf:{tmp_path / 'dict'}") == got  # the train split by default
    assert read(f"hf:{tmp_path / 'dict'}@validation") == RawData(("bad",), ("0",))
    with pytest.raises(DataError, match="cannot load dataset"):
        read(f"hf:{tmp_path / 'dict'}@test")

    text = datasets.Dataset.from_dict({"text": ["one", "two"]})
    text.save_to_disk(str(tmp_path / "text"))
    assert read(f"hf:{tmp_path / 'text'}") == RawData(("one", "two"), None)


def test_hf_errors_are_one_line(tmp_path: Path) -> None:
    _datasets()
    for ref in (f"hf:{tmp_path / 'nothing'}", "hf:no-such-org-seedswarm/no-such-set"):
        with pytest.raises(DataError, match="cannot load dataset") as info:
            read(ref)
        assert "\n" not in str(info.value)


def test_module_has_the_documented_text_columns() -> None:
    assert data.TEXT_COLUMNS == ("sentence", "text")


def test_jsonl_rows_may_differ_in_their_keys(tmp_path: Path) -> None:
    ref = _write(
        tmp_path / "d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 0, "x": 2}\n'
    )
    assert read(ref) == RawData(("a", "b"), ("1", "0"))
    partial = _write(tmp_path / "p.jsonl", '{"text": "a"}\n{"text": "b", "label": 0}\n')
    with pytest.raises(DataError, match="without a label"):
        read(partial)


def test_no_batch_from_an_empty_population() -> None:
    with pytest.raises(DataError, match="no examples"):
        sample_batch(1, 0, 4)


# -- prompt -> completion data ---------------------------------------------------------------------


def _jsonl(path: Path, rows: list[Any]) -> str:
    return _write(path, "".join(json.dumps(r) + "\n" for r in rows))


def test_prompt_completion_rows(tmp_path: Path) -> None:
    ref = _jsonl(
        tmp_path / "qa.jsonl",
        [
            {"prompt": "Q: 2+2?\nA:", "completion": " 4"},
            {"prompt": "Q: sky?", "completion": "blue"},
        ],
    )
    got = read(ref)
    assert got == RawData((), None, prompts=("Q: 2+2?\nA:", "Q: sky?"), completions=(" 4", "blue"))
    assert got.is_completion
    assert not got.is_classification
    assert len(got) == 2
    # a CSV with the same columns is the same data
    csv_ref = _write(tmp_path / "qa.csv", "prompt,completion\nQ: sky?,blue\n")
    assert read(csv_ref).prompts == ("Q: sky?",)


def test_chat_rows_and_trl_conversational_rows(tmp_path: Path) -> None:
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
    ]
    got = read(_jsonl(tmp_path / "chat.jsonl", [{"messages": chat}]))
    assert got.chats == (
        (("system", "Be brief."), ("user", "Capital of France?"), ("assistant", "Paris")),
    )
    assert got.is_completion
    assert got.prompts is None
    assert len(got) == 1
    # TRL's conversational prompt-completion: the same conversation, split in two lists
    split = {"prompt": chat[:2], "completion": chat[2:]}
    assert read(_jsonl(tmp_path / "trl.jsonl", [split])).chats == got.chats


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([{"prompt": "a"}], "both 'prompt' and 'completion'"),
        ([{"prompt": "a", "completion": "b"}, {"completion": "c"}], "both 'prompt' and 'completion'"),
        ([{"prompt": "a", "completion": ""}], "row 1: the completion is empty"),
        ([{"prompt": "a", "completion": 3}], "must be text"),
        ([{"prompt": "a", "completion": "b", "label": 1}], "take no 'label'"),
        ([{"messages": []}], "non-empty list"),
        ([{"messages": [{"role": "user", "content": "hi"}]}], "assistant's answer"),
        ([{"messages": [{"role": "assistant", "content": ""}]}], "answer is empty"),
        ([{"messages": [{"role": "robot", "content": "x"}]}], "unknown role 'robot'"),
        ([{"messages": [{"role": "assistant", "content": None}]}], "text 'content'"),
        ([{"messages": ["hi"]}], "an object with a 'role'"),
        ([{"messages": [{"role": "assistant", "content": "x"}], "prompt": "p"}], "without 'prompt'"),
        (
            [{"prompt": [{"role": "user", "content": "q"}], "completion": [
                {"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]}],
            "one assistant message",
        ),
    ],
)  # fmt: skip
def test_bad_prompt_completion_rows_name_the_row(
    tmp_path: Path, rows: list[Any], match: str
) -> None:
    with pytest.raises(DataError, match=match):
        read(_jsonl(tmp_path / "bad.jsonl", rows))
