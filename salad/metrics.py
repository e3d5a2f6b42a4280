"""The comparison and detection metrics, once: export validation, Triton's chain check, parity, training, evaluation.

Everything is numpy in float64 and defined for a NaN: a NaN enters the values it touches (so the
check built on it fails) instead of being skipped. AUC and AUPRC come from scikit-learn, imported
only when asked for, since a console (salad-edge[runtime]) does not have it.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from salad.errors import BackendUnavailableError
from salad.scoring import decide

#: Floor of the norm product in a cosine, so that a zero vector gives cosine 0 rather than NaN.
COSINE_EPS = 1e-30


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity of two [n, D] arrays (float64; NaN where a row has a NaN)."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return (x * y).sum(axis=1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), COSINE_EPS)


def row_abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row max |a − b| of two arrays with the same first axis (a row of a vector is its one value)."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(x.reshape(len(x), -1) - y.reshape(len(y), -1)).max(axis=1, initial=0.0)


def max_p99(diff: np.ndarray) -> tuple[float, float]:
    """(max, 99th percentile) of per-row differences; (0, 0) for none, (NaN, NaN) if any is not finite."""
    if not diff.size:
        return 0.0, 0.0
    if not np.all(np.isfinite(diff)):
        return float("nan"), float("nan")
    return float(diff.max()), float(np.percentile(diff, 99))


def min_mean(values: np.ndarray) -> tuple[float | None, float | None]:
    """(min, mean) of per-row values; (None, None) for none, (NaN, NaN) if any is not finite."""
    if not values.size:
        return None, None
    if not np.all(np.isfinite(values)):
        return float("nan"), float("nan")
    return float(values.min()), float(values.mean())


def agreeing(got: np.ndarray, want: np.ndarray, threshold: float) -> np.ndarray:
    """Per film: do `got` and `want` scores give the same label at `threshold` (salad.scoring.decide)?

    A non-finite `got` score is no decision, so it never agrees (decide would call it normal).
    """
    got = np.asarray(got)
    return (decide(got, threshold) == decide(want, threshold)) & np.isfinite(got)


def label_agreement(got: np.ndarray, want: np.ndarray, threshold: float) -> float | None:
    """The fraction of films whose labels agree (see `agreeing`); None for no films."""
    same = agreeing(got, want, threshold)
    return float(same.mean()) if same.size else None


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation of two score vectors; None when undefined (< 2 films or a constant vector).

    The Pearson correlation of tie-averaged ranks, in numpy: the same statistic as
    scipy.stats.spearmanr (the tests hold it to scipy), without scipy, which a console
    (salad-edge[runtime]) does not have and whose import costs seconds, more than a comparison.
    """
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(x) < 2:
        return None
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return float("nan")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(average_ranks(x), average_ranks(y))[0, 1])


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their mean rank (scipy.stats.rankdata(method="average"))."""
    ranks = np.empty(len(x), np.float64)
    ranks[np.argsort(x, kind="stable")] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]


def require_sklearn() -> None:
    """BackendUnavailableError naming the package when scikit-learn (AUC, AUPRC) is not installed."""
    if importlib.util.find_spec("sklearn") is None:
        raise BackendUnavailableError(
            "AUC and AUPRC need scikit-learn, which is not installed: `pip install 'salad-edge[train]'` "
            "(or scikit-learn), or run parity without --data."
        )


def has_both_classes(labels: np.ndarray) -> bool:
    """Whether `labels` hold normal (0) and abnormal (1) films, so that AUC and AUPRC are defined."""
    return len(np.unique(np.asarray(labels))) == 2


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC with abnormal (label 1) as the positive class; None unless both classes are present."""
    if not has_both_classes(labels):
        return None
    require_sklearn()
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def detection_metrics(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(AUC, AUPRC) with abnormal (label 1) as the positive class, via scikit-learn."""
    require_sklearn()
    from sklearn.metrics import average_precision_score, roc_auc_score

    return float(roc_auc_score(labels, scores)), float(average_precision_score(labels, scores))
