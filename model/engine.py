"""The exact ZO engine: a model on its grid, records applied to it, and the ZO step.

One ``Engine`` owns one replica: the task model, the grids of its trainable tensors and a
kernel backend. Every change to the weights goes through ``_accumulate``, which adds whole
numbers of grid steps times Rademacher directions, so the weights after any set of records are
the same bits in any order, in any batching, on any device.

A ZO step with the fewest passes over the weights. SPSA / MeZO (``estimator = "spsa"``), one
direction and record:

    pass 1   theta += eps*z  - sum_peers u*q_r*z_r      (pending peer records ride along)
             L+ = loss(batch)
    pass 2   theta -= 2*eps*z
             L- = loss(batch)
             g = (L+ - L-) / (2*eps);  q = quantise(lr*g/u)
    pass 3   theta += eps*z - u*q*z                      (restore fused with the update)

FZOO (``estimator = "fzoo"``), K one-sided directions, each its own record (estimators.py):

    pass 0   theta -= sum_peers u*q_r*z_r               (only when peer records are pending)
             l0 = loss(batch)
    pass 1   theta += eps*z_1;               l_1 = loss(batch)
    pass i   theta += eps*z_i - eps*z_(i-1); l_i = loss(batch)          (i = 2 .. K)
             g_i = (l_i - l0) / (K*sigma);  q_i = quantise(lr*g_i/u)
    pass K+1 theta -= eps*z_K + sum_i u*q_i*z_i         (restore fused with all K updates)

Each pass regenerates z from the seed in the kernel; z is never stored.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from seedswarm.protocol.errors import ManifestError
from seedswarm.protocol.manifest import Manifest, TaskSpec
from seedswarm.protocol.quantize import quantize_gradient
from seedswarm.protocol.records import Record
from seedswarm.protocol.seeds import derive_seed

from .errors import ModelError
from .estimators import fzoo_gradients, spsa_gradient
from .grid import TensorGrid, headroom_bits, make_grid, snap_
from .kernels import Backend, make_backend
from .layout import exact_batches, pack_
from .loading import Loaded, load
from .tasks import Examples, TaskModel

WEIGHTS_DOMAIN = b"seedswarm/weights/v1"
BASE_DOMAIN = b"seedswarm/base/v1"


@dataclass(frozen=True, slots=True)
class Hyper:
    """The run's ZO hyper-parameters (they end up in the manifest)."""

    epsilon: float = 1e-3
    lr: float = 1e-4
    unit_exp: int = -20
    headroom_exp: int = 3
    grid_min_exp: int | None = None  # default: unit_exp - 8
    trainable: str = ""
    init_seed: int = 0
    estimator: str = "spsa"  # or "fzoo" (K one-sided directions per step)
    directions: int = 1  # K: records per step
    direction: str = "dense"  # or "lowrank" (rank-1 signs for matrices)


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one step produced: one record byte per direction, in the order of its seeds.

    ``losses`` are the forward passes' losses in the order they ran (SPSA: L+, L-; FZOO: l0,
    l_1 .. l_K); ``loss`` is the step's training loss as shown to people (their mean).
    """

    qs: tuple[int, ...]
    gs: tuple[float, ...]
    losses: tuple[float, ...]

    @property
    def loss(self) -> float:
        return sum(self.losses) / len(self.losses)


def hash_tensors(
    domain: bytes, named: Iterable[tuple[str, torch.Tensor]], prefix: bytes = b""
) -> str:
    """SHA-256 over names, shapes and little-endian fp32 bytes, in the order given."""
    h = hashlib.sha256(domain + prefix)
    for name, t in named:
        raw = name.encode()
        h.update(struct.pack("<H", len(raw)) + raw)
        h.update(struct.pack(f"<B{t.dim()}Q", t.dim(), *t.shape))
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().data)  # no copy
    return h.hexdigest()


class Engine:
    """One replica: the model on its grid and the operations on it."""

    def __init__(
        self,
        manifest: Manifest,
        task_model: TaskModel,
        *,
        device: torch.device,
        kernel: str,
        grids: Sequence[TensorGrid] | None = None,
        kernel_threads: int = 0,
    ) -> None:
        """``grids``: the grids already chosen for these weights (by a probe that snapped them).

        Grids come from the base *as loaded* (docs/PROTOCOL.md §5); recomputing them from
        snapped weights can give a coarser grid where snapping rounded the maximum up to a
        power of two.
        """
        self.manifest = manifest
        self.run_id = manifest.run_id()
        self.task_model = task_model
        self.device = device
        pattern = re.compile(manifest.trainable)
        named = task_model.named_weights()
        self.trainable = [(n, p) for n, p in named if pattern.search(n)]
        if not self.trainable:
            raise ModelError(f"no parameter matches trainable={manifest.trainable!r}")
        if grids is None:
            grids = make_grid(
                self.trainable,
                epsilon=manifest.epsilon,
                unit_exp=manifest.unit_exp,
                headroom_exp=manifest.headroom_exp,
                grid_min_exp=manifest.grid_min_exp,
            )
        if [g.name for g in grids] != [n for n, _ in self.trainable]:
            raise ModelError("the grids do not match the run's trainable parameters")
        self.grids = list(grids)
        for (_, p), grid in zip(self.trainable, self.grids, strict=True):
            snap_(p.data, grid.exp)
        # all trainable weights become views of one buffer: every update is one kernel call
        lowrank = manifest.direction == "lowrank"
        self.flat, self.layout = pack_([p for _, p in self.trainable], self.grids, lowrank=lowrank)
        self.backend: Backend = make_backend(kernel, device, threads=kernel_threads)
        self.numel = sum(g.numel for g in self.grids)

    # -- construction ------------------------------------------------------------------------

    @staticmethod
    def build(
        name: str,
        model_ref: str,
        task: TaskSpec,
        hyper: Hyper,
        *,
        keys: Sequence[tuple[str, str]] = (),
        device: torch.device | str = "cpu",
        kernel: str = "auto",
        kernel_threads: int = 0,
        loaded: Loaded | None = None,
    ) -> Engine:
        """A new run: load the base, snap it to its grids, and write the manifest around it."""
        kind = _backbone_kind(task)
        loaded = loaded or load(model_ref, kind=kind, init_seed=hyper.init_seed)
        grid_min = hyper.unit_exp - 8 if hyper.grid_min_exp is None else hyper.grid_min_exp
        draft = Manifest(
            name=name,
            model=loaded.portable_ref,
            base_hash="0" * 64,
            task=task,
            epsilon=hyper.epsilon,
            lr=hyper.lr,
            unit_exp=hyper.unit_exp,
            headroom_exp=hyper.headroom_exp,
            grid_min_exp=grid_min,
            trainable=hyper.trainable,
            init_seed=hyper.init_seed,
            keys=tuple(sorted(keys)),
            estimator=hyper.estimator,
            directions=hyper.directions,
            direction=hyper.direction,
        )
        tm = TaskModel(loaded, task, init_seed=hyper.init_seed)
        engine = Engine(draft, tm, device=torch.device("cpu"), kernel="torch")
        manifest = draft.replace(base_hash=engine.base_hash())
        return Engine._finish(manifest, tm, device, kernel, engine.grids, kernel_threads)

    @staticmethod
    def open(
        manifest: Manifest,
        *,
        model_ref: str | None = None,
        device: torch.device | str = "cpu",
        kernel: str = "auto",
        kernel_threads: int = 0,
    ) -> Engine:
        """Join a run: load the base the manifest names and check it is the same, bit for bit."""
        kind = _backbone_kind(manifest.task)
        loaded = load(model_ref or manifest.model, kind=kind, init_seed=manifest.init_seed)
        tm = TaskModel(loaded, manifest.task, init_seed=manifest.init_seed)
        probe = Engine(manifest, tm, device=torch.device("cpu"), kernel="torch")
        got = probe.base_hash()
        if got != manifest.base_hash:
            raise ManifestError(
                f"base model mismatch: {model_ref or manifest.model} hashes to {got[:16]} after "
                f"snapping, the run's base is {manifest.base_hash[:16]}; refusing to join"
            )
        return Engine._finish(manifest, tm, device, kernel, probe.grids, kernel_threads)

    @staticmethod
    def _finish(
        manifest: Manifest,
        tm: TaskModel,
        device: torch.device | str,
        kernel: str,
        grids: Sequence[TensorGrid],
        kernel_threads: int,
    ) -> Engine:
        dev = torch.device(device)
        tm.to(dev)
        return Engine(
            manifest, tm, device=dev, kernel=kernel, grids=grids, kernel_threads=kernel_threads
        )

    # -- hashes --------------------------------------------------------------------------------

    def base_hash(self) -> str:
        """Hash of every parameter (trainable ones snapped); call it on the base model only."""
        return hash_tensors(BASE_DOMAIN, self.task_model.named_weights())

    def fingerprint(self) -> str:
        """Hash of the trainable weights now (and of the base they started from)."""
        return hash_tensors(WEIGHTS_DOMAIN, self.trainable, bytes.fromhex(self.manifest.base_hash))

    # -- updates -------------------------------------------------------------------------------

    def _accumulate(self, terms: Sequence[tuple[int, int, int]]) -> None:
        """Add ``sum (eps_mult * eps_t - du_t(q)) * z(seed)`` to every trainable tensor.

        terms: (seed, eps_mult, q) triples; a peer record is (seed, 0, q).
        """
        terms = [t for t in terms if t[1] or t[2]]
        if not terms:
            return
        steps = self.layout.steps_matrix(terms)  # (R, n_tensors) int32
        seeds = [s for s, _, _ in terms]
        for lo, hi in exact_batches(steps):
            self.backend.accumulate_flat(self.flat, self.layout, seeds[lo:hi], steps[lo:hi])

    def seed_of(self, node: str, seq: int) -> int:
        return derive_seed(self.run_id, node, seq)

    def apply(self, records: Sequence[Record], *, batch: int = 256) -> None:
        """Apply records (any order, any batching: the result is the same bits)."""
        terms = [(self.seed_of(r.node, r.seq), 0, r.q) for r in records if r.q]
        for i in range(0, len(terms), batch):
            self._accumulate(terms[i : i + batch])

    @property
    def records_per_step(self) -> int:
        """How many records (directions, each with its own seq and seed) one step produces."""
        return self.manifest.directions

    @property
    def forwards_per_step(self) -> int:
        """Forward passes of one step: 2 for SPSA, K + 1 for FZOO."""
        return 2 if self.manifest.estimator == "spsa" else self.manifest.directions + 1

    def step(
        self, seeds: Sequence[int], batch: dict[str, torch.Tensor], pending: Sequence[Record] = ()
    ) -> StepResult:
        """One ZO step on ``batch``, one direction per seed (``records_per_step`` of them);
        ``pending`` peer records are applied in the first pass."""
        if len(seeds) != self.records_per_step:
            raise ValueError(f"a step takes {self.records_per_step} seeds, got {len(seeds)}")
        peers = [(self.seed_of(r.node, r.seq), 0, r.q) for r in pending if r.q]
        if self.manifest.estimator == "fzoo":
            return self._fzoo_step(list(seeds), batch, peers)
        (seed,) = seeds
        m = self.manifest
        self._accumulate([*peers, (seed, 1, 0)])
        loss_plus = self.task_model.loss(batch)
        self._accumulate([(seed, -2, 0)])
        loss_minus = self.task_model.loss(batch)
        # NaN (a non-finite loss) quantises to q = 0: the step is recorded but moves nothing
        g = spsa_gradient(loss_plus, loss_minus, m.epsilon)
        q = quantize_gradient(g, lr=m.lr, unit_exp=m.unit_exp, seed=seed)
        self._accumulate([(seed, 1, q)])
        return StepResult((q,), (g,), (loss_plus, loss_minus))

    def _fzoo_step(
        self,
        seeds: list[int],
        batch: dict[str, torch.Tensor],
        peers: list[tuple[int, int, int]],
    ) -> StepResult:
        m = self.manifest
        self._accumulate(peers)
        loss0 = self.task_model.loss(batch)
        losses = []
        for i, seed in enumerate(seeds):
            # +eps*z_i, and take the previous direction off in the same pass
            self._accumulate([(seed, 1, 0)] + ([(seeds[i - 1], -1, 0)] if i else []))
            losses.append(self.task_model.loss(batch))
        gs = fzoo_gradients(loss0, losses)
        qs = tuple(
            quantize_gradient(g, lr=m.lr, unit_exp=m.unit_exp, seed=s)
            for g, s in zip(gs, seeds, strict=True)
        )
        # restore the last perturbation fused with the updates of all K records
        last = len(seeds) - 1
        self._accumulate(
            [(s, -1 if i == last else 0, q) for i, (s, q) in enumerate(zip(seeds, qs, strict=True))]
        )
        return StepResult(qs, gs, (loss0, *losses))

    # -- state ---------------------------------------------------------------------------------

    def headroom(self) -> tuple[float, str]:
        """(fewest doublings left before a tensor leaves its exact range, that tensor's name)."""
        return min(
            (
                (headroom_bits(p, g), n)
                for (n, p), g in zip(self.trainable, self.grids, strict=True)
            ),
            key=lambda x: x[0],
        )

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """CPU copies of the trainable tensors (for snapshots)."""
        return {n: p.detach().to("cpu", copy=True) for n, p in self.trainable}

    def check_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Raise ``ModelError`` unless ``state`` has exactly the run's trainable tensors."""
        names = [n for n, _ in self.trainable]
        if sorted(state) != sorted(names):
            raise ModelError("snapshot tensors do not match the run's trainable parameters")
        for n, p in self.trainable:
            src = state[n]
            if src.shape != p.shape or src.dtype != torch.float32:
                raise ModelError(
                    f"snapshot tensor {n} has shape {tuple(src.shape)} {src.dtype}, want "
                    f"{tuple(p.shape)} float32"
                )

    def fingerprint_of(self, state: dict[str, torch.Tensor]) -> str:
        """The fingerprint the weights would have if they were ``state`` (checked first)."""
        self.check_trainable_state(state)
        named = [(n, state[n]) for n, _ in self.trainable]
        return hash_tensors(WEIGHTS_DOMAIN, named, bytes.fromhex(self.manifest.base_hash))

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.check_trainable_state(state)  # before anything changes
        with torch.no_grad():
            for n, p in self.trainable:
                p.copy_(state[n])

    # -- evaluation and export ---------------------------------------------------------------

    def evaluate(self, examples: Examples, *, batch_size: int = 64) -> dict[str, float]:
        """Mean loss (and accuracy for classification) over ``examples``."""
        return evaluate(self.task_model, examples, batch_size=batch_size)

    def save_pretrained(self, out: Path) -> None:
        """Write the fine-tuned backbone (and tokenizer, and a new head) with save_pretrained."""
        out.mkdir(parents=True, exist_ok=True)
        tm = self.task_model
        model = tm.backbone
        # The packed parameters share one storage, which save_pretrained would take for tied
        # weights; give it standalone copies for the duration of the save.
        views = [(p, p.data) for _, p in self.trainable]
        try:
            for p, view in views:
                p.data = view.clone()
            model.save_pretrained(str(out))  # type: ignore[operator]
        finally:
            for p, view in views:
                p.data = view
        tm.tokenizer.save_pretrained(str(out))
        if tm.head is not None:
            from safetensors.torch import save_file

            save_file(
                {k: v.detach().cpu().contiguous() for k, v in tm.head.state_dict().items()},
                str(out / "seedswarm_head.safetensors"),
            )


def evaluate(tm: TaskModel, examples: Examples, *, batch_size: int = 64) -> dict[str, float]:
    """Mean loss (and accuracy for classification) of ``tm`` over ``examples``."""
    total, correct, n = 0.0, 0, 0
    for i in range(0, len(examples), batch_size):
        part = examples.subset(range(i, min(i + batch_size, len(examples))))
        batch = tm.make_batch(part)
        size = len(part)
        if tm.spec.kind == "classify":
            logits = tm.logits(batch)
            total += float(
                torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum")
            )
            correct += int((logits.argmax(-1) == batch["labels"]).sum())
        else:
            total += tm.loss(batch) * size
        n += size
    out = {"loss": total / max(n, 1), "examples": float(n)}
    if tm.spec.kind == "classify":
        out["accuracy"] = correct / max(n, 1)
    return out


def _backbone_kind(task: TaskSpec) -> str:
    if task.kind == "causal_lm":
        return "lm"
    return {"lm": "lm", "mlm": "mlm", "embed": "embed", "head": "embed"}[task.scorer]
