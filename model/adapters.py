"""Adapters: LoRA tensors through peft, trained on the grid beside a frozen, hashed base.

An adapter is one more set of trainable tensors: peft puts a LoRA layer on every target
module (``W x + (alpha / rank) * B A x``), and the engine trains the A and B tensors exactly as
it trains any others -- the grid, the state and the records do not know the difference. The
base is not touched: its weights stay as loaded, and the run's base hash is over them alone.

Names (docs/PROTOCOL.md §2). peft names its parameters ``<module>.lora_A.default.weight`` (the
adapter's name inside), and moves the base weight to ``<module>.base_layer.weight``; neither is
a stable name. The run names

    base tensors     as the backbone's named_parameters() gives them before the adapter
    adapter tensors  <module>.lora_A.weight and <module>.lora_B.weight

where ``<module>`` is the adapted module's name in the backbone's named_modules(). These are
the keys of a PEFT adapter file without its ``base_model.model.`` prefix, so an export is a
rename and nothing else.

Initial values: B is zero (the adapted model *is* the base until records move it) and A comes
from Philox under the manifest's ``init_seed`` (protocol/adapter.py), never from torch's
generator, whose state is left as it was.

Why ZO learns with B = 0 (MeZO's LoRA variant starts the same way): the loss does not depend
on A while B is zero, so at first only the B part of a direction changes the loss; the update
moves B along its projected gradient and A by a random walk of the same small size, which
leaves the loss unchanged. Once B is non-zero A's part of the direction counts too. The change
a perturbation makes to the output is ``(alpha / rank) * (dB A + B dA)``, far smaller than a
dense perturbation of W of the same epsilon, so LoRA runs take a larger epsilon and learning
rate: MeZO's LoRA recipe for OPT-13B is lr 5e-5 and epsilon 1e-2, against 1e-7 and 1e-3 for all
weights (github.com/princeton-nlp/MeZO, large_models/README.md).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seedswarm.protocol.adapter import lora_a_init
from seedswarm.protocol.manifest import AdapterSpec

from .errors import ModelError
from .loading import GLOBAL_RNG

ADAPTER_NAME = "default"  # peft's name for the one adapter of a model
PEFT_PREFIX = "base_model.model."  # what a PEFT adapter file puts before the module names
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# peft's task types by what the backbone is (loading.py's kinds)
TASK_TYPES = {"lm": "CAUSAL_LM", "mlm": None, "embed": "FEATURE_EXTRACTION"}


@dataclass(slots=True)
class Adapter:
    """The LoRA tensors of a backbone, by the run's names, sorted."""

    spec: AdapterSpec
    fan_in_fan_out: bool  # the targets are transformers' Conv1D (GPT-2), weights (in, out)
    named: list[tuple[str, torch.nn.Parameter]]
    modules: tuple[str, ...]  # the adapted modules' names

    def lora_config(self, *, base: str | None = None, task_type: str | None = None) -> Any:
        """peft's ``LoraConfig`` of this adapter (dropout 0, no bias terms)."""
        return _lora_config(self.spec, self.fan_in_fan_out, base=base, task_type=task_type)


def default_targets(model: torch.nn.Module) -> tuple[str, ...]:
    """peft's default target modules for this architecture (GPT-2: c_attn; BERT: query,
    value; OPT, Llama: q_proj, v_proj), sorted."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    config: Any = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type or "")
    if not targets:
        raise ModelError(
            f"peft knows no default LoRA targets for model type {model_type!r}: name the "
            "modules to adapt (e.g. q_proj,v_proj)"
        )
    return tuple(sorted(set(targets)))


def matches(module_name: str, targets: Sequence[str]) -> bool:
    """peft's rule for a list of targets: the name is a target or ends with "." + target."""
    return any(module_name == t or module_name.endswith("." + t) for t in targets)


def attach(model: torch.nn.Module, spec: AdapterSpec, *, init_seed: int) -> Adapter:
    """Put LoRA layers on ``model``'s target modules (in place), seeded from ``init_seed``."""
    from transformers.pytorch_utils import Conv1D

    found = [
        (name, module)
        for name, module in model.named_modules()
        if name and matches(name, spec.targets)
    ]
    if not found:
        raise ModelError(f"no module of this model matches the adapter targets {spec.targets}")
    kinds = {type(m) for _, m in found}
    if kinds <= {Conv1D}:
        fan_in_fan_out = True
    elif all(issubclass(k, torch.nn.Linear) for k in kinds):
        fan_in_fan_out = False
    else:
        names = ", ".join(sorted({k.__name__ for k in kinds}))
        raise ModelError(
            f"LoRA targets must all be linear layers (or all GPT-2 Conv1D layers); "
            f"{spec.targets} match {names}"
        )
    from peft import inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    config = _lora_config(spec, fan_in_fan_out)
    with GLOBAL_RNG, _quiet_peft(), torch.random.fork_rng(devices=[]):
        # peft initialises A from torch's global generator; those values are overwritten
        # below, and the generator's state is restored (under the lock: another thread's
        # seeded initialisation must not see these draws)
        inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    if sorted(n for n, _ in layers) != sorted(n for n, _ in found):
        raise ModelError("peft adapted other modules than the adapter targets name")
    named: list[tuple[str, torch.nn.Parameter]] = []
    for name, layer in layers:
        a: Any = layer.lora_A[ADAPTER_NAME]
        b: Any = layer.lora_B[ADAPTER_NAME]
        named += [(f"{name}.lora_A.weight", a.weight), (f"{name}.lora_B.weight", b.weight)]
    named.sort(key=lambda np_: np_[0])
    with torch.no_grad():
        for index, (name, p) in enumerate(named):
            if name.endswith(".lora_A.weight"):
                rows, cols = p.shape
                p.copy_(torch.from_numpy(lora_a_init(init_seed, index, rows, cols)))
            else:
                p.zero_()
    model.requires_grad_(False)
    return Adapter(spec, fan_in_fan_out, named, tuple(sorted(n for n, _ in found)))


def save_adapter(
    adapter: Adapter, out: Path, *, base: str | None, task_type: str | None
) -> list[Path]:
    """Write ``adapter`` as a PEFT adapter directory: ``adapter_config.json`` and
    ``adapter_model.safetensors`` (``PeftModel.from_pretrained(base, out)`` loads it)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    config = adapter.lora_config(base=base, task_type=task_type)
    with _quiet_peft():
        config.save_pretrained(str(out))
    tensors = {
        PEFT_PREFIX + name: p.detach().to("cpu", copy=True).contiguous()
        for name, p in adapter.named
    }
    save_file(tensors, str(out / ADAPTER_FILE), metadata={"format": "pt"})
    return [out / ADAPTER_CONFIG, out / ADAPTER_FILE]


def read_adapter_config(path: Path) -> dict[str, Any]:
    """A PEFT adapter directory's ``adapter_config.json``."""
    try:
        data = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: no readable {ADAPTER_CONFIG}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path / ADAPTER_CONFIG} is not a JSON object")
    return data


def _lora_config(
    spec: AdapterSpec, fan_in_fan_out: bool, *, base: str | None = None, task_type: Any = None
) -> Any:
    from peft import LoraConfig

    alpha: float | int = int(spec.alpha) if spec.alpha.is_integer() else spec.alpha
    with _quiet_peft():
        return LoraConfig(
            r=spec.rank,
            lora_alpha=alpha,  # type: ignore[arg-type]  # peft's annotation says int; it divides
            target_modules=list(spec.targets),
            lora_dropout=0.0,
            bias="none",
            fan_in_fan_out=fan_in_fan_out,
            base_model_name_or_path=base,
            task_type=task_type,
        )


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft warns about things that are as intended here (e.g. a base without a config
    name); the run's own checks say what matters."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
