"""Shared builders for the model tests (no fakes: real torch, real transformers models)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from seedswarm.model.data import RawData
from seedswarm.model.engine import Engine
from seedswarm.model.errors import ModelError
from seedswarm.model.hyper import Hyper
from seedswarm.model.kernels import CpuKernelBackend
from seedswarm.model.loading import Loaded, load
from seedswarm.protocol.manifest import TaskSpec
from seedswarm.protocol.philox import signs
from seedswarm.protocol.records import Record


def _c_kernel_error() -> str:
    try:
        CpuKernelBackend(threads=1)
    except ModelError as exc:
        return str(exc)
    return ""


C_KERNEL_ERROR = _c_kernel_error()
requires_c = pytest.mark.skipif(
    bool(C_KERNEL_ERROR),
    reason=f"the C extension seedswarm.model._zokernel is not importable: {C_KERNEL_ERROR}",
)

CAUSAL = TaskSpec(kind="causal_lm", seq_len=32)
HYPER = Hyper(lr=3e-3, unit_exp=-12)


KERNEL_THREADS = 2  # the C kernel's multi-threaded path, while forward passes use one thread


def tiny_engine(kernel: str = "auto", hyper: Hyper = HYPER, task: TaskSpec = CAUSAL) -> Engine:
    """A fresh replica of the built-in tiny GPT-2 on its grid."""
    return Engine.build("t", "tiny", task, hyper, kernel=kernel, kernel_threads=KERNEL_THREADS)


def random_records(
    n: int, *, rng_seed: int, nodes: tuple[str, ...] = ("a", "b", "c")
) -> list[Record]:
    """``n`` records spread over ``nodes`` (contiguous seqs per node), q in [-127, 127] incl. 0."""
    rng = random.Random(rng_seed)
    next_seq = dict.fromkeys(nodes, 0)
    out = []
    for clock in range(n):
        node = rng.choice(nodes)
        q = 0 if rng.random() < 0.1 else rng.randint(-127, 127)
        out.append(Record(node, next_seq[node], q, clock))
        next_seq[node] += 1
    return out


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits (so -0.0 and +0.0, or two NaNs, are told apart); int64 state as it is."""
    if t.dtype == torch.int64:
        return t.detach().contiguous()
    assert t.dtype == torch.float32
    return t.detach().contiguous().view(torch.int32)


def assert_same_bits(a: torch.Tensor, b: torch.Tensor, what: str = "") -> None:
    assert a.shape == b.shape, what
    assert a.dtype == b.dtype, what
    diff = int((bits(a) != bits(b)).sum())
    assert diff == 0, f"{what}: {diff} of {a.numel()} elements differ in their bits"


def assert_same_state(a: Engine, b: Engine, what: str = "") -> None:
    """Same fingerprint, the same state and the same weight bits in every trainable tensor."""
    sa, sb = a.trainable_state(), b.trainable_state()
    assert list(sa) == list(sb), what
    for name in sa:
        assert_same_bits(sa[name], sb[name], f"{what} {name} (state)")
    for (name, pa), (_, pb) in zip(a.trainable, b.trainable, strict=True):
        assert_same_bits(pa.data, pb.data, f"{what} {name} (weights)")
    assert a.fingerprint() == b.fingerprint(), what


def reference_accumulate(
    n: npt.NDArray[np.int64], tensor_id: int, seeds: list[int], steps: list[int], exp: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The state ``n + sum_r steps[r] * z(seeds[r])`` (wrapping modulo 2**64) and its weights
    ``fp32(n) * 2**exp``, from the numpy Philox reference, independent of every backend.

    numpy's int64 -> float32 is IEEE's round to nearest even (checked against the integer
    reference of protocol/grid.py in test_grid.py); the power-of-two scale is then exact."""
    acc = np.zeros(n.size, dtype=np.int64)
    for s, k in zip(seeds, steps, strict=True):
        acc += k * signs(s, tensor_id, n.size).astype(np.int64)
    with np.errstate(over="ignore"):
        state = n.astype(np.int64) + acc  # wraps modulo 2**64, as the state does
    weights = np.ldexp(state.astype(np.float32).astype(np.float64), exp).astype(np.float32)
    return state, weights


def save_tiny_bert(out: Path, *, masked_lm: bool) -> Path:
    """A tiny BERT (MLM head or bare encoder) with the real MiniLM tokenizer, saved to ``out``."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertModel

    from seedswarm.model.loading import minilm_path

    tok: Any = AutoTokenizer.from_pretrained(str(minilm_path()))
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model: Any = BertForMaskedLM(config) if masked_lm else BertModel(config)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


# -- prompt -> completion data on the tiny model ---------------------------------------------------

# A chat template for the tiny model's byte tokenizer (it has none of its own): each turn is
# "<|role|>content", an answer ends with the end-of-sequence token, and the generation prompt
# opens the assistant's turn.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}<|eos|>{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
COLOURS = {
    "sky": "blue",
    "grass": "green",
    "snow": "white",
    "coal": "black",
    "blood": "red",
    "sun": "yellow",
}


def colour_data(n: int, *, chat: bool = False, seed: int = 0) -> RawData:
    """``n`` questions about the colour of things, as prompt -> completion pairs or chats."""
    rng = random.Random(seed)
    things = [rng.choice(sorted(COLOURS)) for _ in range(n)]
    if chat:
        return RawData(
            (),
            None,
            chats=tuple(
                (("user", f"what colour is the {t}?"), ("assistant", COLOURS[t])) for t in things
            ),
        )
    return RawData(
        (),
        None,
        prompts=tuple(f"what colour is the {t}?" for t in things),
        completions=tuple(f" {COLOURS[t]}" for t in things),
    )


def tiny_with_chat_template(init_seed: int = 0) -> Loaded:
    """The built-in tiny model, its byte tokenizer given CHAT_TEMPLATE."""
    loaded = load("tiny", init_seed=init_seed)
    loaded.tokenizer.chat_template = CHAT_TEMPLATE
    return loaded


def run_outside(script: str, cwd: Path, *, timeout: float = 240.0) -> dict[str, Any]:
    """Run ``script`` in a fresh Python that must never import seedswarm; the script leaves
    its findings in the dict ``result``, which comes back (with ``seedswarm_modules``: the
    seedswarm modules that were imported there, which must be none)."""
    import json
    import os
    import subprocess
    import sys

    out = cwd / "result.json"
    epilogue = (
        "\nimport json as _json, sys as _sys\n"
        "result['seedswarm_modules'] = sorted(m for m in _sys.modules if m == 'seedswarm' "
        "or m.startswith('seedswarm.'))\n"
        f"open({str(out)!r}, 'w').write(_json.dumps(result))\n"
    )
    path = cwd / "outside.py"
    path.write_text("result = {}\n" + script + epilogue, encoding="utf-8")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-I", str(path)],  # -I: no user site, no cwd on sys.path
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"the outside script failed:\n{proc.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    assert result["seedswarm_modules"] == [], result["seedswarm_modules"]
    return result


def save_tiny_llama(out: Path) -> Path:
    """A 2-layer, 64-wide Llama (rotary positions, RMSNorm, gated MLP, untied head) with the
    byte tokenizer, saved to ``out``: a causal LM of another family than GPT-2."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from seedswarm.model.loading import byte_tokenizer

    tok = byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4321)
        model: Any = LlamaForCausalLM(config)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out
