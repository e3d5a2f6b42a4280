"""ASAP's collection distance, the ranking, the EQC and the drift statistic (numpy only, no torch)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from salad.errors import DataError
from salad.similarity.distance import collection_distance, eqc, per_film_distance, rank, spread
from salad.similarity.drift import DriftPolicy, calibrate, judge, window_statistic


def brute(t: np.ndarray, a: np.ndarray) -> float:
    return sum(math.dist(x, y) for x in t for y in a) / (len(t) * len(a))


def test_distance_is_the_mean_over_all_pairs() -> None:
    rng = np.random.default_rng(0)
    t, a = rng.normal(size=(7, 2)), rng.normal(3.0, 1.0, size=(5, 2))
    assert collection_distance(t, a) == pytest.approx(brute(t, a), rel=1e-12)
    assert collection_distance(t, a) == pytest.approx(collection_distance(a, t), rel=1e-12)
    big = rng.normal(size=(2500, 2))  # more rows than one block
    np.testing.assert_allclose(per_film_distance(big, a), [brute(x[None], a) for x in big], rtol=1e-9)


def test_distance_of_a_hand_made_case() -> None:
    t = np.array([[0.0, 0.0]])
    a = np.array([[3.0, 4.0], [0.0, 1.0]])
    assert collection_distance(t, a) == pytest.approx((5.0 + 1.0) / 2)


def test_ranking_is_ascending_and_names_every_candidate() -> None:
    rng = np.random.default_rng(1)
    target = rng.normal(0.0, 0.3, size=(50, 2))
    cands = {"far": target + 5.0, "near": target + 0.5, "middle": target + 2.0}
    ranked = rank(target, cands)
    assert [r.candidate for r in ranked] == ["near", "middle", "far"]
    assert [r.distance for r in ranked] == sorted(r.distance for r in ranked)
    with pytest.raises(DataError, match="no candidates"):
        rank(target, {})


def test_eqc_is_spread_over_centroid_distance() -> None:
    square = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    s = spread(square)
    assert s == pytest.approx((4 * 1.0 + 2 * math.sqrt(2)) / 6)
    assert eqc({"a": square, "b": square + [10.0, 0.0]}) == pytest.approx(s / 10.0)
    assert eqc({"a": square, "b": square + [10.0, 0.0]}) < eqc({"a": square, "b": square + [2.0, 0.0]})


def test_non_finite_points_are_refused_naming_the_problem() -> None:
    with pytest.raises(DataError, match="non-finite"):
        collection_distance(np.array([[np.nan, 0.0]]), np.zeros((1, 2)))


def test_abnormal_films_cannot_raise_the_statistic_beyond_the_normals_quantile() -> None:
    """The order-statistic bound the threshold relies on, with abnormal films as far away as possible."""
    policy = DriftPolicy()
    rng = np.random.default_rng(2)
    for _ in range(200):
        n = 50
        a = rng.integers(0, n // 2 + 1)
        normal = rng.gamma(4.0, 0.2, size=n - a)
        window = np.concatenate([normal, np.full(a, 1e6)])
        k = policy.rank(n)
        assert window_statistic(window, policy) <= np.sort(normal)[k - 1]


def test_calibrated_thresholds_keep_false_alarms_low_and_catch_a_shift() -> None:
    rng = np.random.default_rng(3)
    reference, held = rng.normal(size=(300, 2)), rng.normal(size=(200, 2))
    policy = DriftPolicy(draws=2000)
    thr = calibrate(reference, held, policy)
    assert set(thr) == set(policy.sizes)
    usual = {n: 0.0 for n in policy.sizes}
    same = [judge(rng.normal(size=(50, 2)), reference, thr, usual, policy).warn for _ in range(200)]
    moved = [judge(rng.normal(size=(50, 2)) + [2.5, 0.0], reference, thr, usual, policy).warn for _ in range(50)]
    assert np.mean(same) <= 0.03 and np.mean(moved) == 1.0
    few = judge(rng.normal(size=(5, 2)), reference, thr, usual, policy)
    assert few.threshold is None and not few.warn and "too few films" in few.note


def test_a_policy_that_lets_abnormal_films_decide_is_refused() -> None:
    with pytest.raises(DataError, match="q ≤ 1 − max_abnormal"):
        DriftPolicy(quantile=0.6, max_abnormal=0.5)
