"""The score definition: numpy and torch entry points, clipping at |cos| = 1, K = N, K checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from salad.errors import SaladError
from salad.scoring import MAX_K, check_k, decide, score_numpy


def _unit(rng: np.random.Generator, n: int, d: int = 200) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_embedding_equal_to_a_bank_row_has_zero_nearest_angle_despite_rounding() -> None:
    rng = np.random.default_rng(0)
    bank = _unit(rng, 50)
    # z·m can exceed 1 by rounding; without the clip arccos would return NaN.
    z = bank[:1] * np.float32(1.0000001)
    out = score_numpy(z, bank, k=1)
    assert np.isfinite(out["score"]).all() and np.isfinite(out["knn_angle"]).all()
    assert out["knn_angle"][0] == pytest.approx(0.0, abs=2e-4)
    assert out["score"][0] == pytest.approx(0.0, abs=2e-4)


def test_antipodal_embedding_has_angle_pi() -> None:
    rng = np.random.default_rng(1)
    bank = _unit(rng, 1)
    out = score_numpy(-bank, bank, k=1)
    assert out["knn_angle"][0] == pytest.approx(1.0, abs=1e-4)  # π / π
    assert out["score"][0] == pytest.approx(1.0, abs=1e-6)  # K = N: the ratio is exactly 1


def test_k_equal_to_bank_size_gives_score_one_and_mean_angle() -> None:
    rng = np.random.default_rng(2)
    bank, z = _unit(rng, 30), _unit(rng, 4)
    out = score_numpy(z, bank, k=30)
    np.testing.assert_allclose(out["score"], 1.0, rtol=1e-6)
    angles = np.arccos(np.clip(z @ bank.T, -1, 1))
    np.testing.assert_allclose(out["knn_angle"], angles.mean(axis=1) / math.pi, rtol=1e-5)


def test_score_uses_the_k_smallest_angles() -> None:
    rng = np.random.default_rng(3)
    bank, z = _unit(rng, 40), _unit(rng, 3)
    angles = np.sort(np.arccos(np.clip(z @ bank.T, -1, 1)), axis=1)
    out = score_numpy(z, bank, k=5)
    np.testing.assert_allclose(out["score"], angles[:, :5].mean(1) / angles.mean(1), rtol=1e-5)
    # more neighbours can only raise the mean of the nearest angles
    assert (score_numpy(z, bank, k=10)["knn_angle"] >= out["knn_angle"]).all()


def test_numpy_and_torch_entry_points_agree() -> None:
    torch = pytest.importorskip("torch")
    from salad.scoring import score_torch

    rng = np.random.default_rng(4)
    bank, z = _unit(rng, 300), _unit(rng, 8)
    s_t, a_t = score_torch(torch.from_numpy(z), torch.from_numpy(bank), 100)
    out = score_numpy(z, bank, 100)
    np.testing.assert_allclose(s_t.numpy(), out["score"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a_t.numpy(), out["knn_angle"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("k", "rows", "message"),
    [(0, 10, "at least one"), (11, 10, r"larger than the memory bank \(10 normal rows\)"), (MAX_K + 1, 10_000, "TopK limit")],
)
def test_bad_k_is_refused(k: int, rows: int, message: str) -> None:
    with pytest.raises(SaladError, match=message):
        check_k(k, rows)


def test_decide_is_strictly_above_threshold() -> None:
    assert decide(np.array([0.1, 0.5, 0.50001]), 0.5).tolist() == [0, 0, 1]


def test_the_score_registry_is_the_one_list_of_scores() -> None:
    from salad.runtime.parity import METRICS
    from salad.runtime.parity.render import COLUMNS
    from salad.schema import DEFAULT_TOLERANCES
    from salad.scoring import SCORE_NAMES, SCORES

    assert SCORE_NAMES == tuple(SCORES) == ("score", "knn_angle")
    for name, score in SCORES.items():
        assert {score.diff_metric("max"), score.diff_metric("p99")} <= set(METRICS)
        assert all(score.diff_metric(stat) in DEFAULT_TOLERANCES["fp32"] for stat in score.toleranced)
        assert all((f"{stat} |Δ{name}|", score.diff_metric(stat)) in COLUMNS for stat in score.columns)
