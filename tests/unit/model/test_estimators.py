"""The estimators' arithmetic (model/estimators.py) and the manifest fields that choose them.

The q vectors here are the ones in docs/PROTOCOL.md: another implementation that
follows the text must produce exactly these gradients (bit for bit) and bytes.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from seedswarm.model.estimators import fzoo_gradients, spsa_gradient
from seedswarm.protocol.errors import ManifestError
from seedswarm.protocol.manifest import Manifest, TaskSpec
from seedswarm.protocol.quantize import quantize_gradient
from seedswarm.protocol.seeds import derive_seed

RUN_ID = bytes.fromhex("0123456789abcdef")
L0 = 0.6931471805599453
LOSSES = (0.6940, 0.6925, 0.6933, 0.6921)


def test_fzoo_test_vector() -> None:
    gs = fzoo_gradients(L0, LOSSES)
    assert [g.hex() for g in gs] == [
        "0x1.020adbb7a90fbp-2",
        "-0x1.87a466465976dp-3",
        "0x1.71ea6203c4779p-5",
        "-0x1.3cd9f2d4ff4e1p-2",
    ]
    seeds = [derive_seed(RUN_ID, "n0", 7 + i) for i in range(4)]
    assert seeds[0] == 0x5F28BDA3D531142D
    qs = [
        quantize_gradient(g, lr=1e-3, unit_exp=-17, seed=s) for g, s in zip(gs, seeds, strict=True)
    ]
    assert qs == [33, -25, 6, -40]


def test_fzoo_follows_its_written_definition() -> None:
    k = len(LOSSES)
    mean = sum(LOSSES) / k  # left to right, as the text says
    sigma = math.sqrt(sum((x - mean) * (x - mean) for x in LOSSES) / (k - 1))
    want = tuple((x - L0) / (k * sigma) for x in LOSSES)
    assert fzoo_gradients(L0, LOSSES) == want


@pytest.mark.parametrize(
    ("loss0", "losses"),
    [
        (0.5, (0.7, 0.7, 0.7)),  # sigma = 0
        (math.nan, (0.1, 0.2)),
        (0.5, (0.1, math.inf)),
        (0.5, (math.nan, 0.2, 0.3)),
        (math.inf, (0.1, 0.2)),
    ],
)
def test_fzoo_degenerate_steps_give_nan_hence_q_zero(
    loss0: float, losses: tuple[float, ...]
) -> None:
    gs = fzoo_gradients(loss0, losses)
    assert len(gs) == len(losses)
    assert all(math.isnan(g) for g in gs)
    assert all(quantize_gradient(g, lr=1.0, unit_exp=-10, seed=5) == 0 for g in gs)


def test_fzoo_needs_two_directions_and_spsa_handles_nan() -> None:
    with pytest.raises(ValueError, match="two directions"):
        fzoo_gradients(0.1, [0.2])
    assert spsa_gradient(1.0, 0.5, 0.25) == 1.0
    assert math.isnan(spsa_gradient(math.inf, 0.5, 0.25))
    assert math.isnan(spsa_gradient(math.inf, math.inf, 0.25))


# losses on a grid of 2**-30 (up to 10): no square of a difference underflows, which scaling
# by a power of two would otherwise change (hypothesis found losses (0, 5.7e-164): their
# variance underflows to 0, sigma = 0 and NaN, while 1024 times them do not)
_LOSS = st.integers(0, 10 * 2**30).map(lambda n: n / 2**30)


@given(
    loss0=_LOSS,
    losses=st.lists(_LOSS, min_size=2, max_size=16),
    scale=st.sampled_from([1.0, 2.0, 0.5, 1024.0]),
)
def test_fzoo_is_invariant_to_scaling_the_losses(
    loss0: float, losses: list[float], scale: float
) -> None:
    """sigma-normalisation: the same steps whatever the scale of the loss (powers of two keep
    every operation's rounding the same while nothing overflows or underflows, so the
    gradients are equal, not just close)."""
    a = fzoo_gradients(loss0, losses)
    b = fzoo_gradients(loss0 * scale, [x * scale for x in losses])
    assert [x.hex() for x in a] == [x.hex() for x in b]
    finite = [g for g in a if not math.isnan(g)]
    if finite:  # |g_i| <= |l_i - l0| / (K sigma): bounded unless l0 lies far from the l_i
        assert len(finite) == len(losses)


_TASK = TaskSpec(kind="causal_lm", seq_len=32)


def _manifest(**fields: object) -> Manifest:
    return Manifest(name="t", model="tiny", base_hash="0" * 64, task=_TASK, **fields)  # type: ignore[arg-type]


def test_manifest_arithmetic_fields_round_trip_and_keep_v1_run_ids() -> None:
    v1 = _manifest()
    d = v1.to_dict()
    assert not {"estimator", "directions", "direction"} & set(d)  # v1 bytes, v1 run id
    fz = _manifest(estimator="fzoo", directions=8, direction="lowrank")
    d = fz.to_dict()
    assert (d["estimator"], d["directions"], d["direction"]) == ("fzoo", 8, "lowrank")
    assert Manifest.from_json(fz.to_json()) == fz
    assert Manifest.from_dict(v1.to_dict()) == v1
    assert fz.run_id() != v1.run_id()
    assert _manifest(direction="lowrank").run_id() != v1.run_id()
    assert set(fz.differences(v1)) == {"estimator", "directions", "direction"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"estimator": "adam"}, "estimator must be one of spsa, fzoo"),
        ({"direction": "sparse"}, "direction must be one of dense, lowrank"),
        ({"estimator": "spsa", "directions": 4}, "spsa estimator takes one direction"),
        ({"estimator": "fzoo", "directions": 1}, "fzoo estimator takes 2 to 64"),
        ({"estimator": "fzoo", "directions": 65}, "fzoo estimator takes 2 to 64"),
    ],
)
def test_manifest_rejects_unknown_arithmetic(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        _manifest(**fields)
    d = _manifest().to_dict() | fields
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict(d)


def test_manifest_arithmetic_fields_are_typed() -> None:
    d = _manifest().to_dict() | {"directions": "8", "estimator": "fzoo"}
    with pytest.raises(ManifestError, match="'directions' has the wrong type"):
        Manifest.from_dict(d)
    d = _manifest().to_dict() | {"directions": True, "estimator": "fzoo"}
    with pytest.raises(ManifestError, match="wrong type"):
        Manifest.from_dict(d)
