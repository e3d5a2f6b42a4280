"""ASAP's collection distance, the ranking and the EQC (numpy only, no torch)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from salad.errors import DataError
from salad.onsite.distance import collection_distance, eqc, per_film_distance, rank, spread


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


def test_eqc_salad_edge_v1_is_spread_over_centroid_distance() -> None:
    square = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    s = spread(square)
    assert s == pytest.approx((4 * 1.0 + 2 * math.sqrt(2)) / 6)
    v1 = "salad-edge-v1"
    assert eqc({"a": square, "b": square + [10.0, 0.0]}, v1) == pytest.approx(s / 10.0)
    assert eqc({"a": square, "b": square + [10.0, 0.0]}, v1) < eqc({"a": square, "b": square + [2.0, 0.0]}, v1)


def test_eqc_paper_is_the_spreads_over_the_mean_pairwise_distance() -> None:
    square = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    far, near = square + [10.0, 0.0], square + [2.0, 0.0]
    assert eqc({"a": square, "b": far}) == pytest.approx(2 * spread(square) / brute(square, far), rel=1e-12)
    assert eqc({"a": square, "b": far}) < eqc({"a": square, "b": near})
    with pytest.raises(DataError, match="expected one of paper, salad-edge-v1"):
        eqc({"a": square, "b": far}, "centroids")


def test_non_finite_points_are_refused_naming_the_problem() -> None:
    with pytest.raises(DataError, match="non-finite"):
        collection_distance(np.array([[np.nan, 0.0]]), np.zeros((1, 2)))


