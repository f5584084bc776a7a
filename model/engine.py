"""The exact ZO engine: a model on its grid, records applied to it, and the ZO step.

One ``Engine`` owns one replica: the task model, the grids of its trainable tensors, their
state (int64 grid steps, model/grid.py) and a kernel backend. Every change goes through
``accumulate``, which adds whole numbers of grid steps times Rademacher directions to the state
and rewrites the weights from it, so the state and the weights after any set of records are the
same bits in any order, in any batching, on any device, for any run length.

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

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from seedswarm.protocol.errors import ManifestError
from seedswarm.protocol.manifest import Manifest, TaskSpec
from seedswarm.protocol.quantize import quantize_gradient
from seedswarm.protocol.records import Record
from seedswarm.protocol.schedule import lr_at
from seedswarm.protocol.seeds import derive_seed

from .adapters import TASK_TYPES, save_adapter
from .errors import ModelError
from .estimators import fzoo_gradients, spsa_gradient
from .evaluation import evaluate
from .grid import Headroom, TensorGrid, headroom, make_grid, weights_of_
from .hashing import BASE_DOMAIN, STATE_DOMAIN, hash_tensors
from .hyper import Hyper, StepResult
from .kernels import Backend, make_backend
from .layout import EXACT_SUM, exact_batches, pack_
from .loading import Loaded, load
from .tasks import Examples, TaskModel


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
        # with an adapter only its tensors train; the base stays as loaded
        named = task_model.trainable_candidates()
        self.trainable = [(n, p) for n, p in named if pattern.search(n)]
        if not self.trainable:
            what = "adapter tensor" if task_model.adapter is not None else "parameter"
            raise ModelError(f"no {what} matches trainable={manifest.trainable!r}")
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
        for g in self.grids:
            if abs(g.update_steps(127)) >= EXACT_SUM or g.eps_steps >= EXACT_SUM:
                raise ModelError(
                    f"the grid of {g.name} (2**{g.exp}) is too fine for the update unit and "
                    f"epsilon: one record or perturbation would move it by 2**24 grid steps or "
                    f"more; raise grid_min_exp or headroom_exp, or lower epsilon or unit_exp"
                )
        # all trainable weights become views of one buffer, and their state (int64 grid steps)
        # a second one of the same layout: every update is one kernel call; the weights come
        # out snapped to the grid
        lowrank = manifest.direction == "lowrank"
        self.flat, self.state, self.layout = pack_(
            [p for _, p in self.trainable], self.grids, lowrank=lowrank
        )
        self.backend: Backend = make_backend(kernel, device, threads=kernel_threads)
        self.numel = sum(g.numel for g in self.grids)
        # a guaranteed bound of max |n| per tensor (for the headroom): exact now, then grown by
        # the |du| of every record applied, so it costs nothing per step
        self._bound = self._max_steps()

    # -- construction ------------------------------------------------------------------------

    @staticmethod
    def build(
        name: str,
        model_ref: str,
        task: TaskSpec,
        hyper: Hyper,
        *,
        keys: Sequence[tuple[str, str]] = (),
        relays: Sequence[str] = (),
        device: torch.device | str = "cpu",
        kernel: str = "auto",
        kernel_threads: int = 0,
        loaded: Loaded | None = None,
    ) -> Engine:
        """A new run: load the base, snap it to its grids, and write the manifest around it
        (``keys``: a signed run's public keys; ``relays``: the relays its nodes may follow)."""
        kind = _backbone_kind(task)
        loaded = loaded or load(model_ref, kind=kind, init_seed=hyper.init_seed)
        adapter = hyper.adapter_spec(loaded.model)
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
            relays=tuple(sorted(set(relays))),
            estimator=hyper.estimator,
            directions=hyper.directions,
            direction=hyper.direction,
            adapter=adapter,
            schedule=hyper.schedule,
            budget=hyper.budget,
        )
        tm = TaskModel(loaded, task, init_seed=hyper.init_seed, adapter=adapter)
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
        tm = TaskModel(
            loaded, manifest.task, init_seed=manifest.init_seed, adapter=manifest.adapter
        )
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
        """Hash of every base parameter (trainable ones snapped; an adapter's tensors are not
        part of the base); call it on the base model only."""
        return hash_tensors(BASE_DOMAIN, self.task_model.base_weights())

    def fingerprint(self) -> str:
        """Hash of the state now (and of the base it started from): equal fingerprints, equal
        state, and so equal weights."""
        return hash_tensors(
            STATE_DOMAIN, self._named_state(), bytes.fromhex(self.manifest.base_hash), torch.int64
        )

    def _named_state(self) -> list[tuple[str, torch.Tensor]]:
        """(name, int64 state view shaped like the parameter), in tensor-id order."""
        lay = self.layout
        return [
            (n, self.state[off : off + g.numel].view(p.shape))
            for (n, p), g, off in zip(self.trainable, self.grids, lay.offsets, strict=True)
        ]

    # -- updates -------------------------------------------------------------------------------

    def accumulate(self, terms: Sequence[tuple[int, int, int]]) -> None:
        """Add ``sum (eps_mult * eps_t - du_t(q)) * z(seed)`` to the state of every trainable
        tensor and rewrite its weights: the one primitive every update is made of.

        terms: (seed, eps_mult, q) triples; a peer record is (seed, 0, q), a perturbation
        (seed, m, 0). Perturbations must cancel within a step (they are not counted in the
        headroom bound); records are.
        """
        terms = [t for t in terms if t[1] or t[2]]
        if not terms:
            return
        steps = self.layout.steps_matrix(terms)  # (R, n_tensors) int32
        seeds = [s for s, _, _ in terms]
        for lo, hi in exact_batches(steps):
            self.backend.accumulate_flat(
                self.state, self.flat, self.layout, seeds[lo:hi], steps[lo:hi]
            )
        moved = [q for _, _, q in terms if q]
        if moved:
            du = self.layout.steps_matrix([(0, 0, q) for q in moved]).astype(np.int64)
            self._bound += np.abs(du).sum(axis=0)

    def seed_of(self, node: str, seq: int) -> int:
        return derive_seed(self.run_id, node, seq)

    def apply(self, records: Sequence[Record], *, batch: int = 256) -> None:
        """Apply records (any order, any batching: the result is the same bits)."""
        terms = [(self.seed_of(r.node, r.seq), 0, r.q) for r in records if r.q]
        for i in range(0, len(terms), batch):
            self.accumulate(terms[i : i + batch])

    @property
    def records_per_step(self) -> int:
        """How many records (directions, each with its own seq and seed) one step produces."""
        return self.manifest.directions

    @property
    def forwards_per_step(self) -> int:
        """Forward passes of one step: 2 for SPSA, K + 1 for FZOO."""
        return 2 if self.manifest.estimator == "spsa" else self.manifest.directions + 1

    def rate_fraction(self, held: int) -> float:
        """The learning rate of a step on a model that holds ``held`` records, as a fraction
        of the run's ``lr`` (1 for a constant schedule; 0 past a decay's budget)."""
        m = self.manifest
        return lr_at(1.0, m.schedule, m.budget, held)

    def step(
        self,
        seeds: Sequence[int],
        batch: dict[str, torch.Tensor],
        pending: Sequence[Record] = (),
        *,
        held: int = 0,
    ) -> StepResult:
        """One ZO step on ``batch``, one direction per seed (``records_per_step`` of them);
        ``pending`` peer records are applied in the first pass. ``held``: the records the model
        holds for this step (its version vector's total with ``pending``, without the step's
        own), which the run's learning-rate schedule reads (protocol/schedule.py)."""
        if len(seeds) != self.records_per_step:
            raise ValueError(f"a step takes {self.records_per_step} seeds, got {len(seeds)}")
        peers = [(self.seed_of(r.node, r.seq), 0, r.q) for r in pending if r.q]
        m = self.manifest
        lr = lr_at(m.lr, m.schedule, m.budget, held)
        if m.estimator == "fzoo":
            return self._fzoo_step(list(seeds), batch, peers, lr)
        (seed,) = seeds
        self.accumulate([*peers, (seed, 1, 0)])
        loss_plus = self.task_model.loss(batch)
        self.accumulate([(seed, -2, 0)])
        loss_minus = self.task_model.loss(batch)
        # NaN (a non-finite loss) quantises to q = 0: the step is recorded but moves nothing
        g = spsa_gradient(loss_plus, loss_minus, m.epsilon)
        q = quantize_gradient(g, lr=lr, unit_exp=m.unit_exp, seed=seed)
        self.accumulate([(seed, 1, q)])
        return StepResult((q,), (g,), (loss_plus, loss_minus))

    def _fzoo_step(
        self,
        seeds: list[int],
        batch: dict[str, torch.Tensor],
        peers: list[tuple[int, int, int]],
        lr: float,
    ) -> StepResult:
        m = self.manifest
        self.accumulate(peers)
        loss0 = self.task_model.loss(batch)
        losses = []
        for i, seed in enumerate(seeds):
            # +eps*z_i, and take the previous direction off in the same pass
            self.accumulate([(seed, 1, 0)] + ([(seeds[i - 1], -1, 0)] if i else []))
            losses.append(self.task_model.loss(batch))
        gs = fzoo_gradients(loss0, losses)
        qs = tuple(
            quantize_gradient(g, lr=lr, unit_exp=m.unit_exp, seed=s)
            for g, s in zip(gs, seeds, strict=True)
        )
        # restore the last perturbation fused with the updates of all K records
        last = len(seeds) - 1
        self.accumulate(
            [(s, -1 if i == last else 0, q) for i, (s, q) in enumerate(zip(seeds, qs, strict=True))]
        )
        return StepResult(qs, gs, (loss0, *losses))

    # -- state ---------------------------------------------------------------------------------

    def _max_steps(self) -> npt.NDArray[np.int64]:
        """The exact max |n| of every trainable tensor (one pass over the state)."""
        out = np.zeros(len(self.grids), dtype=np.int64)
        for t, (_, n) in enumerate(self._named_state()):
            if n.numel():  # max and -min, not abs: |-2**63| does not fit
                out[t] = min((1 << 63) - 1, max(int(n.max()), -int(n.min())))
        return out

    def headroom(self, *, measure: bool = False) -> Headroom:
        """How far the state is from the end of its exact range (a guaranteed bound, kept
        up to date by every record at no cost; ``measure``: take it from the state now)."""
        if measure:
            self._bound = self._max_steps()
        return headroom(self.grids, [int(b) for b in self._bound])

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """CPU copies of the state of the trainable tensors: int64 grid steps, shaped like the
        parameters (what snapshots hold; the weights follow from it)."""
        return {n: t.to("cpu", copy=True) for n, t in self._named_state()}

    def trainable_weights(self) -> dict[str, torch.Tensor]:
        """CPU copies of the trainable weights (fp32), as the forward pass sees them."""
        return {n: p.detach().to("cpu", copy=True) for n, p in self.trainable}

    def check_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Raise ``ModelError`` unless ``state`` has exactly the run's trainable tensors."""
        names = [n for n, _ in self.trainable]
        if sorted(state) != sorted(names):
            raise ModelError("snapshot tensors do not match the run's trainable parameters")
        for n, p in self.trainable:
            src = state[n]
            if src.shape != p.shape or src.dtype != torch.int64:
                raise ModelError(
                    f"snapshot tensor {n} has shape {tuple(src.shape)} {src.dtype}, want "
                    f"{tuple(p.shape)} int64 (grid steps)"
                )

    def fingerprint_of(self, state: dict[str, torch.Tensor]) -> str:
        """The fingerprint the state would have if it were ``state`` (checked first)."""
        self.check_trainable_state(state)
        named = [(n, state[n]) for n, _ in self.trainable]
        return hash_tensors(
            STATE_DOMAIN, named, bytes.fromhex(self.manifest.base_hash), torch.int64
        )

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Take ``state`` (int64 grid steps) as the state and rewrite the weights from it."""
        self.check_trainable_state(state)  # before anything changes
        with torch.no_grad():
            for (_, n), (name, p), g in zip(
                self._named_state(), self.trainable, self.grids, strict=True
            ):
                n.copy_(state[name])
                weights_of_(p.data, n, g.exp)
        self._bound = self._max_steps()

    # -- evaluation and export ---------------------------------------------------------------

    def evaluate(
        self, examples: Examples, *, batch_size: int = 64, generate: bool | None = None
    ) -> dict[str, float]:
        """Mean loss (and accuracy for classification; exact match and F1 for completions
        with short answers) over ``examples``; see ``evaluate``."""
        return evaluate(self.task_model, examples, batch_size=batch_size, generate=generate)

    def save_pretrained(self, out: Path) -> None:
        """Write the fine-tuned backbone (and tokenizer, and a new head) with save_pretrained;
        with an adapter, the adapter as a PEFT adapter directory (and the tokenizer)."""
        out.mkdir(parents=True, exist_ok=True)
        tm = self.task_model
        if tm.adapter is not None:
            save_adapter(tm.adapter, out, base=self.manifest.model, task_type=TASK_TYPES[tm.kind])
            tm.tokenizer.save_pretrained(str(out))
            return
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


def _backbone_kind(task: TaskSpec) -> str:
    if task.kind in ("causal_lm", "completion"):
        return "lm"
    return {"lm": "lm", "mlm": "mlm", "embed": "embed", "head": "embed"}[task.scorer]
