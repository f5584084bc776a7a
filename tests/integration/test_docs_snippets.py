"""Every Python snippet of README.md's "Use your fine-tuned model" section and of
docs/using-the-model.md runs as written, in a Python that never imports seedswarm, against
exports made here -- and the model each one loads computes what the run's engine computes.

The snippets name their directories as a user's would be named (``my-model``, ``my-chat-model``,
``my-encoder``, ``my-adapter``); the test writes an export of each kind under those names in
the snippets' working directory, with records applied so that the weights are not the base's.
All snippets run in one outside process (each in a namespace of its own), which then records
what its ``model`` computes on fixed inputs: logits for the transformers and PEFT models,
label scores for the sentence-transformers model.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from seedswarm.model.engine import Engine
from seedswarm.model.export import export
from seedswarm.model.hyper import Hyper
from seedswarm.model.tasks import Examples
from seedswarm.protocol.manifest import TaskSpec

from ..unit.model.helpers import (
    random_records,
    run_outside,
    save_tiny_bert,
    tiny_with_chat_template,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Use your fine-tuned model"
HYPER = Hyper(lr=1e-3, unit_exp=-12)
LORA = Hyper(lr=3e-2, unit_exp=-12, adapter="lora", lora_rank=4, lora_alpha=8.0)
TEXTS = ["a wonderful, moving film", "dull and far too long", "ok"]
IDS = [list(range(2, 22)), list(range(40, 60))]
TOLERANCE = 1e-4


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, re.S)


def readme_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start : end if end >= 0 else len(text)]


def _snippets() -> list[tuple[str, str]]:
    doc = (ROOT / "docs" / "using-the-model.md").read_text(encoding="utf-8")
    return [("README", code) for code in python_blocks(readme_section())] + [
        ("docs/using-the-model.md", code) for code in python_blocks(doc)
    ]


def _directory(code: str) -> str:
    """The export a snippet loads (each loads exactly one)."""
    names = set(re.findall(r"\"(my-[a-z-]+)[/\"]", code))
    assert len(names) == 1, f"a snippet loads one export, this one {sorted(names)}:\n{code}"
    return str(names.pop())


def _exports(cwd: Path) -> dict[str, Engine]:
    """An export of each kind under the name the snippets use; the engines that made them."""
    qa = TaskSpec(kind="completion", seq_len=64, template="Q: {prompt}\nA:")
    chat = TaskSpec(kind="completion", seq_len=64, chat=True)
    embed = TaskSpec(
        kind="classify", seq_len=64, scorer="embed", labels=("negative", "positive"),
        label_words=("a negative review", "a positive review"), temperature=0.05,
    )  # fmt: skip
    bert = save_tiny_bert(cwd / "tiny-bert", masked_lm=False)
    engines = {
        "my-model": Engine.build("qa", "tiny", qa, HYPER),
        "my-chat-model": Engine.build("chat", "tiny", chat, HYPER, loaded=tiny_with_chat_template()),
        "my-encoder": Engine.build("sst", str(bert), embed, HYPER),
        "my-adapter": Engine.build("qa-lora", "tiny", qa, LORA),
    }  # fmt: skip
    for name, engine in engines.items():
        records = random_records(40, rng_seed=len(name))
        engine.apply(records)
        vv = {r.node: r.seq + 1 for r in records}
        export(engine, cwd / name, vv=vv, include_base=True if name == "my-adapter" else None)
    return engines


def _outside(snippets: list[tuple[str, str]]) -> str:
    """One script that runs every snippet in a namespace of its own and records its model's
    outputs (and what it printed)."""
    return (
        "import contextlib, io, torch\n"
        f"SNIPPETS = {[code for _, code in snippets]!r}\n"
        "result['runs'] = []\n"
        "for code in SNIPPETS:\n"
        "    ns = {'__name__': '__snippet__'}\n"
        "    printed = io.StringIO()\n"
        "    with contextlib.redirect_stdout(printed):\n"
        "        exec(compile(code, '<snippet>', 'exec'), ns)\n"
        "    model, run = ns['model'], {'printed': printed.getvalue()}\n"
        "    if type(model).__name__ == 'SentenceTransformer':\n"
        "        task = ns['task']\n"
        "        d = model.encode(task['label_descriptions'], convert_to_tensor=True)\n"
        f"        e = model.encode({TEXTS!r}, convert_to_tensor=True)\n"
        "        run['scores'] = (e @ d.T / task['temperature']).tolist()\n"
        "        run['labels'] = task['labels']\n"
        "    else:\n"
        "        with torch.no_grad():\n"
        f"            run['logits'] = model(input_ids=torch.tensor({IDS!r})).logits.tolist()\n"
        "        run['type'] = type(model).__name__\n"
        "    result['runs'].append(run)\n"
    )


def _engine_output(engine: Engine) -> torch.Tensor:
    tm = engine.task_model
    if tm.kind == "embed":
        return tm.logits(tm.make_batch(Examples(texts=tuple(TEXTS), labels=(0,) * len(TEXTS))))
    with torch.no_grad():
        logits: torch.Tensor = tm.backbone(input_ids=torch.tensor(IDS)).logits
    return logits


def test_every_loading_snippet_runs_outside_seedswarm_and_loads_the_runs_model(
    tmp_path: Path,
) -> None:
    snippets = _snippets()
    assert any(where == "README" for where, _ in snippets), "the README's snippet"
    engines = _exports(tmp_path)
    used = {_directory(code) for _, code in snippets}
    assert used == set(engines), f"snippets use {sorted(used)}, the test exports {sorted(engines)}"
    got: list[dict[str, Any]] = run_outside(_outside(snippets), tmp_path, timeout=600)["runs"]
    for (where, code), run in zip(snippets, got, strict=True):
        name = _directory(code)
        want = _engine_output(engines[name])
        what = f"{where}'s snippet for {name}:\n{code}"
        if "scores" in run:
            torch.testing.assert_close(
                torch.tensor(run["scores"]), want, rtol=TOLERANCE, atol=20 * TOLERANCE, msg=what
            )
            assert any(label in run["printed"] for label in run["labels"]), what
        else:
            if name == "my-adapter":
                assert run["type"] == "PeftModelForCausalLM", what
            torch.testing.assert_close(
                torch.tensor(run["logits"]), want, rtol=TOLERANCE, atol=TOLERANCE, msg=what
            )
            assert run["printed"].endswith("\n"), what  # it printed its answer
