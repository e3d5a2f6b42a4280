"""Threshold choice on validation scores at an operating point (pure numpy, no export)."""

from __future__ import annotations

import numpy as np
import pytest

from salad.errors import SaladError
from salad.export.threshold import choose_threshold, parse_operating_point
from salad.scoring import decide


def test_parse_operating_point() -> None:
    assert parse_operating_point("specificity:0.95") == ("specificity", 0.95)
    assert parse_operating_point(" Sensitivity:1 ") == ("sensitivity", 1.0)
    for bad in ("specificity", "specificity:", "specificity:1.5", "specificity:0", "recall:0.9", "specificity:x"):
        with pytest.raises(SaladError, match=r"--operating-point .*: expected NAME:VALUE"):
            parse_operating_point(bad)


def test_specificity_threshold_sits_between_scores() -> None:
    normal = np.arange(40, dtype=np.float32) / 100  # 0.00 … 0.39
    abnormal = np.array([0.375, 0.5, 0.6], dtype=np.float32)
    t = choose_threshold(np.concatenate([normal, abnormal]), np.r_[np.zeros(40), np.ones(3)], "specificity:0.95")
    # 38 of 40 normals (0.00…0.37) stay normal; the next score above 0.37 is the abnormal 0.375
    assert 0.37 < t["value"] < 0.375 and t["value"] == float(np.float32(t["value"]))
    assert t["achieved"] == {"specificity": 0.95, "sensitivity": 1.0}
    assert t["operating_point"] == {"specificity": 0.95}
    assert t["validation"]["n_normal"] == 40 and t["validation"]["n_abnormal"] == 3


def test_specificity_without_abnormal_images_and_at_one() -> None:
    scores = np.linspace(0.2, 0.6, 20, dtype=np.float32)
    t = choose_threshold(scores, np.zeros(20), "specificity:1.0")
    assert t["value"] > scores.max() and t["achieved"] == {"specificity": 1.0, "sensitivity": None}
    assert decide(scores, t["value"]).sum() == 0


def test_sensitivity_threshold_is_the_highest_reaching_it() -> None:
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.uniform(0.2, 0.6, 50), rng.uniform(0.4, 0.9, 30)]).astype(np.float32)
    labels = np.r_[np.zeros(50), np.ones(30)]
    t = choose_threshold(scores, labels, "sensitivity:0.9")
    sens = decide(scores[labels == 1], t["value"]).mean()
    assert sens >= 0.9 and t["achieved"]["sensitivity"] == sens
    higher = np.sort(scores[scores > t["value"]])[0]  # raising the threshold past the next score loses it
    assert decide(scores[labels == 1], higher).mean() < 0.9
    assert t["value"] not in scores.tolist()


def test_operating_points_that_validation_cannot_support() -> None:
    with pytest.raises(SaladError, match=r"sensitivity needs abnormal validation images"):
        choose_threshold(np.array([0.1, 0.2]), np.array([0, 0]), "sensitivity:0.9")
    with pytest.raises(SaladError, match=r"specificity needs normal validation images"):
        choose_threshold(np.array([0.1, 0.2]), np.array([1, 1]), "specificity:0.9")
