"""The CUDA path must give the CPU reference's bits: signs, kernels, replicas, ZO steps.

These run only where a CUDA device exists (they skip with that reason elsewhere, since the
project must build and pass its tests without a GPU). On a GPU they compare every CUDA backend
(plain torch ops on the device, and the Triton kernel) with the numpy reference and with the
CPU engine, bit for bit.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from seedswarm.model.engine import Engine
from seedswarm.model.hyper import Hyper
from seedswarm.model.kernels import TorchBackend, available_backends, make_backend
from seedswarm.model.signs import signs_torch
from seedswarm.protocol.manifest import TaskSpec
from seedswarm.protocol.philox import signs
from seedswarm.protocol.records import Record

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]

CUDA = torch.device("cuda")
SIZES = [1, 127, 128, 129, 1000, 4097, 65536 + 3, 1_000_003]


@pytest.mark.parametrize("numel", SIZES)
def test_cuda_signs_equal_the_numpy_reference(numel: int) -> None:
    for seed in (0, 2**64 - 1, 0x5F28BDA3D531142D):
        ref = signs(seed, 3, numel)
        got = signs_torch(seed, 3, numel, CUDA).cpu().numpy()
        assert np.array_equal(ref, got)


def _state(n: int, gen: torch.Generator) -> torch.Tensor:
    """int64 states: most below 2**20 grid steps, every eighth far beyond 2**24 (up to 2**62),
    where the weights' fp32 rounding (nearest, ties to even) is exercised."""
    n_ = torch.randint(-(2**20), 2**20, (n,), generator=gen, dtype=torch.int64)
    n_[::8] = torch.randint(-(2**62), 2**62, (len(n_[::8]),), generator=gen, dtype=torch.int64)
    return n_


def _apply(
    backend: str, device: torch.device, n: torch.Tensor, lowrank: bool, *args: object
) -> tuple[torch.Tensor, torch.Tensor]:
    state = n.clone().to(device)
    w = torch.full(n.shape, 0.25, device=device)  # stale: every touched weight is rewritten
    k = TorchBackend() if backend == "reference" else make_backend(backend, device)
    (k.accumulate_lowrank if lowrank else k.accumulate)(state, w, *args)  # type: ignore[arg-type]
    return state.cpu(), w.cpu()


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("numel", SIZES)
def test_cuda_accumulate_equals_cpu_reference(backend: str, numel: int) -> None:
    if backend not in available_backends(CUDA):
        pytest.skip("Triton is not installed")
    gen = torch.Generator().manual_seed(numel)
    base = _state(numel, gen)
    for records in (1, 16, 300):
        seeds = [int(x) for x in torch.randint(0, 2**62, (records,), generator=gen)] + [2**64 - 1]
        steps = [int(x) for x in torch.randint(-5000, 5000, (records + 1,), generator=gen)]
        args = (7, seeds, steps, 2.0**-20)
        ref = _apply("reference", torch.device("cpu"), base, False, *args)
        got = _apply(backend, CUDA, base, False, *args)
        assert torch.equal(got[0], ref[0]), (backend, numel, records, "state")
        assert torch.equal(got[1].view(torch.int32), ref[1].view(torch.int32)), "weights"


def _tiny(device: str, kernel: str) -> Engine:
    return Engine.build(
        "gpu", "tiny", TaskSpec(kind="causal_lm", seq_len=32), Hyper(lr=3e-3, unit_exp=-12),
        device=device, kernel=kernel,
    )  # fmt: skip


def _batch(engine: Engine, seq: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seq)
    ids = torch.randint(0, 256, (8, 32), generator=gen)
    return {"input_ids": ids.to(engine.device)}


@pytest.mark.parametrize("kernel", ["torch", "triton"])
def test_cuda_replica_of_cpu_records_has_the_cpu_fingerprint(kernel: str) -> None:
    if kernel not in available_backends(CUDA):
        pytest.skip("Triton is not installed")
    cpu = _tiny("cpu", "torch")
    records = []
    for seq in range(40):
        result = cpu.step([cpu.seed_of("n0", seq)], _batch(cpu, seq))
        records.append(Record("n0", seq, result.qs[0], 1))
    gpu = Engine.open(cpu.manifest, device="cuda", kernel=kernel)
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    gpu.apply(shuffled, batch=7)
    assert gpu.fingerprint() == cpu.fingerprint()


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-autocast"])
def test_cuda_steps_leave_weights_a_cpu_replay_reproduces(amp: bool) -> None:
    gpu = _tiny("cuda", "auto")
    gpu.task_model.amp_dtype = torch.bfloat16 if amp else None
    records = []
    for seq in range(30):
        result = gpu.step([gpu.seed_of("g", seq)], _batch(gpu, seq))
        records.append(Record("g", seq, result.qs[0], 1))
    assert any(r.q for r in records)
    cpu = Engine.open(gpu.manifest, device="cpu", kernel="torch")
    cpu.apply(records)
    # perturb, restore and update on the GPU are exact: the master weights are what a CPU
    # replay of the same bytes gives, whatever precision the forward passes ran in
    assert cpu.fingerprint() == gpu.fingerprint()


def test_two_cuda_replicas_step_identically() -> None:
    a, b = _tiny("cuda", "auto"), _tiny("cuda", "auto")
    for seq in range(10):
        ra = a.step([a.seed_of("n", seq)], _batch(a, seq))
        rb = b.step([b.seed_of("n", seq)], _batch(b, seq))
        assert ra.qs == rb.qs
    assert a.fingerprint() == b.fingerprint()


# -- low-rank directions and K-direction steps ---------------------------------------------------

LOWRANK_SHAPES = [(1, 1), (3, 5), (127, 129), (768, 768), (3072, 768), (50272, 64)]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize(("rows", "cols"), LOWRANK_SHAPES)
def test_cuda_lowrank_equals_cpu_reference(backend: str, rows: int, cols: int) -> None:
    if backend not in available_backends(CUDA):
        pytest.skip("Triton is not installed")
    gen = torch.Generator().manual_seed(rows * 7 + cols)
    base = _state(rows * cols, gen).view(rows, cols)
    for records in (1, 16, 300):
        seeds = [int(x) for x in torch.randint(0, 2**62, (records,), generator=gen)] + [2**64 - 1]
        steps = [int(x) for x in torch.randint(-5000, 5000, (records + 1,), generator=gen)]
        args = (7, seeds, steps, 2.0**-20)
        ref = _apply("reference", torch.device("cpu"), base, True, *args)
        got = _apply(backend, CUDA, base, True, *args)
        assert torch.equal(got[0], ref[0]), (backend, rows, cols, records, "state")
        assert torch.equal(got[1].view(torch.int32), ref[1].view(torch.int32)), "weights"


def _tiny_k(device: str, kernel: str, direction: str) -> Engine:
    hyper = Hyper(lr=3e-3, unit_exp=-12, estimator="fzoo", directions=4, direction=direction)
    return Engine.build(
        "gpu", "tiny", TaskSpec(kind="causal_lm", seq_len=32), hyper, device=device, kernel=kernel
    )


@pytest.mark.parametrize("kernel", ["torch", "triton"])
@pytest.mark.parametrize("direction", ["dense", "lowrank"])
def test_cuda_replays_cpu_fzoo_records_exactly(kernel: str, direction: str) -> None:
    if kernel not in available_backends(CUDA):
        pytest.skip("Triton is not installed")
    cpu = _tiny_k("cpu", "auto", direction)
    records = []
    for step in range(10):
        seeds = [cpu.seed_of("n0", 4 * step + j) for j in range(4)]
        result = cpu.step(seeds, _batch(cpu, step))
        records += [Record("n0", 4 * step + j, q, 1) for j, q in enumerate(result.qs)]
    gpu = Engine.open(cpu.manifest, device="cuda", kernel=kernel)
    shuffled = records[:]
    random.Random(2).shuffle(shuffled)
    gpu.apply(shuffled, batch=9)
    assert gpu.fingerprint() == cpu.fingerprint()


@pytest.mark.parametrize("direction", ["dense", "lowrank"])
def test_cuda_fzoo_steps_leave_what_a_cpu_replay_reproduces(direction: str) -> None:
    gpu = _tiny_k("cuda", "auto", direction)
    records = []
    for step in range(8):
        seeds = [gpu.seed_of("g", 4 * step + j) for j in range(4)]
        result = gpu.step(seeds, _batch(gpu, step))
        records += [Record("g", 4 * step + j, q, 1) for j, q in enumerate(result.qs)]
    assert any(r.q for r in records)
    cpu = Engine.open(gpu.manifest, device="cpu", kernel="torch")
    cpu.apply(records[::-1])
    assert cpu.fingerprint() == gpu.fingerprint()


@pytest.mark.parametrize("kernel", ["torch", "triton"])
@pytest.mark.parametrize("direction", ["dense", "lowrank"])
def test_cuda_replays_a_long_run_past_two_to_the_24_like_the_cpu(
    kernel: str, direction: str
) -> None:
    """A coarse update unit takes the tensors far past 2**24 grid steps in 2,000 records (see
    tests/unit/model/test_long_runs.py): the CUDA replica still has the CPU's fingerprint."""
    if kernel not in available_backends(CUDA):
        pytest.skip("Triton is not installed")
    hyper = Hyper(
        lr=3e-3, unit_exp=-5, grid_min_exp=-21, direction=direction,
        trainable=r"ln_f|h\.0\.attn\.c_proj\.weight",
    )  # fmt: skip
    cpu = Engine.build("gpu", "tiny", TaskSpec(kind="causal_lm", seq_len=32), hyper)
    rng = random.Random(4)
    records = [Record("n", i, rng.randint(-127, 127), 1) for i in range(2000)]
    cpu.apply(records)
    assert cpu.headroom(measure=True).coarse > 0
    gpu = Engine.open(cpu.manifest, device="cuda", kernel=kernel)
    shuffled = records[:]
    random.Random(5).shuffle(shuffled)
    gpu.apply(shuffled, batch=64)
    assert gpu.fingerprint() == cpu.fingerprint()
    for (name, a), (_, b) in zip(cpu.trainable, gpu.trainable, strict=True):
        assert torch.equal(a.detach().view(torch.int32), b.detach().cpu().view(torch.int32)), name
