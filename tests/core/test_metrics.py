"""salad.metrics: the one implementation of the comparison and detection metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from salad import metrics


def test_cosines_and_differences_per_row() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    b = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(metrics.cosines(a, b), [1.0, 0.0, 0.0])  # a zero row is cosine 0, not NaN
    np.testing.assert_allclose(metrics.row_abs_diff(a, b), [0.0, 2.0, 0.0])
    assert metrics.max_p99(np.array([0.0, 1.0])) == (1.0, pytest.approx(0.99))
    assert metrics.max_p99(np.zeros(0)) == (0.0, 0.0)
    assert all(math.isnan(v) for v in metrics.max_p99(np.array([0.0, np.nan])))
    assert metrics.min_mean(np.zeros(0)) == (None, None)


def test_a_nan_score_never_agrees() -> None:
    got, want = np.array([0.1, 0.9, np.nan]), np.array([0.1, 0.9, 0.1])
    assert metrics.agreeing(got, want, 0.5).tolist() == [True, True, False]
    assert metrics.label_agreement(got, want, 0.5) == pytest.approx(2 / 3)
    assert metrics.label_agreement(np.zeros(0), np.zeros(0), 0.5) is None


def test_auc_and_auprc_are_sklearns() -> None:
    rng = np.random.default_rng(0)
    labels, scores = rng.integers(0, 2, 50), rng.random(50)
    assert metrics.detection_metrics(labels, scores) == (roc_auc_score(labels, scores), average_precision_score(labels, scores))
    assert metrics.auc(labels, scores) == roc_auc_score(labels, scores)
    assert metrics.auc(np.zeros(5), scores[:5]) is None  # one class: undefined, not an exception
