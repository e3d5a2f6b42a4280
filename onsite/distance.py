"""Distances between collections of 2-D latent points, the ranking of candidates and the EQC (numpy only).

A collection is an (n, d) array of latent points of its films (d = 2 for the ASAP estimator). The distance
between a target T and a known collection A is the mean Euclidean distance over all pairs (t, a), t ∈ T,
a ∈ A (docs/similarity.md §2): the paper's ψ, the same in both forms. Candidates are ranked by it, smallest first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from salad.errors import DataError

from .forms import DEFAULT_FORM, PAPER, check_form

#: Pairs are computed in blocks of this many target rows, so 10⁴ × 10⁵ points never build one huge matrix.
_BLOCK = 1024


def _points(x: np.ndarray, what: str) -> np.ndarray:
    """x as a finite float64 (n, d) array with n ≥ 1; a DataError naming `what` otherwise."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        raise DataError(f"{what}: expected an (n, d) array of latent points with n ≥ 1, received shape {a.shape}.")
    if not np.isfinite(a).all():
        raise DataError(f"{what}: {int((~np.isfinite(a)).sum())} non-finite coordinate(s); the estimator output is broken.")
    return a


def pairwise_distances(t: np.ndarray, a: np.ndarray) -> np.ndarray:
    """The (|T|, |A|) Euclidean distances between two point sets (float64)."""
    t, a = _points(t, "target points"), _points(a, "collection points")
    if t.shape[1] != a.shape[1]:
        raise DataError(f"target points have {t.shape[1]} coordinates, the collection's {a.shape[1]}; same estimator?")
    d2 = (t * t).sum(1)[:, None] + (a * a).sum(1)[None, :] - 2.0 * t @ a.T
    return np.sqrt(np.maximum(d2, 0.0))


def per_film_distance(t: np.ndarray, a: np.ndarray) -> np.ndarray:
    """For each target point, its mean Euclidean distance to every point of A (shape (|T|,))."""
    t = _points(t, "target points")
    return np.concatenate([pairwise_distances(t[i : i + _BLOCK], a).mean(1) for i in range(0, len(t), _BLOCK)])


def collection_distance(t: np.ndarray, a: np.ndarray) -> float:
    """ASAP's distance: the mean Euclidean distance over all pairs (t ∈ T, a ∈ A)."""
    return float(per_film_distance(t, a).mean())


@dataclass(frozen=True)
class Ranked:
    """One candidate of a ranking: its name and its distance to the target."""

    candidate: str
    distance: float


def rank(target: np.ndarray, candidates: Mapping[str, np.ndarray]) -> list[Ranked]:
    """Candidates by ascending distance to the target (ties keep the given order)."""
    if not candidates:
        raise DataError("no candidates to rank; pass at least one --candidate NAME=BUNDLE_OR_DATA.")
    scored = [Ranked(name, collection_distance(target, pts)) for name, pts in candidates.items()]
    return sorted(scored, key=lambda r: r.distance)


def spread(points: np.ndarray) -> float:
    """Intra-collection spread: the mean Euclidean distance over distinct pairs of its points (0 for one point)."""
    p = _points(points, "collection points")
    if len(p) < 2:
        return 0.0
    d = pairwise_distances(p, p)
    return float(d.sum() / (len(p) * (len(p) - 1)))


def eqc(points_by_dataset: Mapping[str, np.ndarray], form: str = DEFAULT_FORM) -> float:
    """ASAP's embedding quality criterion over pairs of datasets (i, k); lower is better. Needs ≥ 2 datasets.

    paper: EQC = 2/(I² − I) · Σ_{i<k} (ξ_i + ξ_k) / ψ_ik, ξ the spread and ψ_ik the collection distance (mean over
    every pair of their points). salad-edge-v1: the mean over pairs of (ξ_i + ξ_k) / (2 · ‖centroid_i − centroid_k‖).
    """
    check_form(form)
    if len(points_by_dataset) < 2:
        raise DataError(f"EQC needs at least 2 datasets, received {len(points_by_dataset)}.")
    spreads = {k: spread(v) for k, v in points_by_dataset.items()}
    ratios = []
    for i, j in combinations(points_by_dataset, 2):
        if form == PAPER:
            gap = collection_distance(points_by_dataset[i], points_by_dataset[j])
            ratios.append((spreads[i] + spreads[j]) / max(gap, 1e-12))
        else:
            ci, cj = _points(points_by_dataset[i], i).mean(0), _points(points_by_dataset[j], j).mean(0)
            gap = float(np.linalg.norm(ci - cj))
            ratios.append((spreads[i] + spreads[j]) / (2.0 * max(gap, 1e-12)))
    return float(np.mean(ratios))
