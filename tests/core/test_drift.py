"""The batch-level drift test (salad/drift.py): the order-statistic bound, calibration, verdicts, the α split."""

from __future__ import annotations

import numpy as np
import pytest

from salad.drift import CHECKS, Calibration, DriftPolicy, judge, judge_windows, window_statistic
from salad.errors import DataError


def test_abnormal_films_cannot_raise_the_statistic_beyond_the_normals_quantile() -> None:
    """The order-statistic bound the threshold relies on, with abnormal films as far away as possible."""
    policy = DriftPolicy()
    rng = np.random.default_rng(2)
    for _ in range(200):
        n = 50
        a = rng.integers(0, n // 2 + 1)
        normal = rng.gamma(4.0, 0.2, size=n - a)
        window = np.concatenate([normal, np.full(a, 1e6)])
        assert window_statistic(window, policy) <= np.sort(normal)[policy.rank(n) - 1]


def test_two_checks_keep_false_alarms_within_alpha_at_half_abnormal_and_catch_a_shift() -> None:
    """Both checks calibrated on held-out normals: any-warns stays under α with 50 % far-out abnormal films."""
    rng = np.random.default_rng(3)
    policy = DriftPolicy(false_alarm=0.02, draws=4000)
    cals = {"score": Calibration.fit(rng.gamma(4.0, 0.05, 3000), policy, seed=1),
            "style": Calibration.fit(rng.normal(1.0, 0.2, 3000), policy, seed=2)}
    assert set(cals["score"].thresholds) == set(policy.sizes) and policy.false_alarm_per_check == 0.02 / len(CHECKS)

    def window(shift: float, abnormal: int, n: int = 50) -> dict[str, np.ndarray]:
        score = np.concatenate([rng.gamma(4.0, 0.05, n - abnormal) + shift, np.full(abnormal, 5.0)])
        style = np.concatenate([rng.normal(1.0, 0.2, n - abnormal), np.full(abnormal, 9.0)])
        return {"score": score, "style": style}

    same = [judge(window(0.0, 25), cals, policy).warn for _ in range(2000)]
    assert np.mean(same) <= 0.02 + 3 * np.sqrt(0.02 / 2000)
    moved = [judge(window(0.15, 10), cals, policy) for _ in range(200)]
    assert all(v.warn and v.checks["score"].warn and not v.checks["style"].warn for v in moved)
    assert moved[0].calibrated_size == 50 and moved[0].to_dict()["checks"]["score"]["warn"] is True


def test_windows_and_too_few_films() -> None:
    rng = np.random.default_rng(4)
    policy = DriftPolicy()
    cal = {"score": Calibration.fit(rng.random(500), policy)}
    wins = judge_windows({"score": rng.random(125)}, cal, policy, 50)
    assert [(w.start, w.stop, w.calibrated_size) for w in wins] == [(0, 50, 50), (50, 100, 50), (100, 125, 20)]
    few = judge({"score": rng.random(5)}, cal, policy)
    assert few.calibrated_size is None and not few.warn and not few.checks and "too few films" in few.note
    again = Calibration.from_dict(cal["score"].to_dict())
    assert again == cal["score"]


def test_a_policy_that_lets_abnormal_films_decide_is_refused() -> None:
    with pytest.raises(DataError, match="q ≤ 1 − max_abnormal"):
        DriftPolicy(quantile=0.6, max_abnormal=0.5)


def test_calibration_refuses_non_finite_values() -> None:
    with pytest.raises(DataError, match="finite per-film values"):
        Calibration.fit(np.array([0.1, np.nan]), DriftPolicy())


def test_a_fall_check_mirrors_a_rise_check() -> None:
    """lower=True judges the k-th largest value against a lower threshold; abnormal films far *below* cannot trip it."""
    rng = np.random.default_rng(5)
    policy = DriftPolicy()
    held = rng.normal(0.5, 0.05, 400)
    fall = Calibration.fit(held, policy, lower=True)
    rise = Calibration.fit(held, policy)
    # the fall check's usual value is near the 75th percentile (k-th largest), the rise check's near the 25th
    assert all(fall.thresholds[n] < fall.usual[n] and rise.usual[n] < rise.thresholds[n] and rise.usual[n] < fall.usual[n]
               for n in policy.sizes)
    normal = rng.normal(0.5, 0.05, 25)
    window = np.concatenate([normal, np.full(25, -9.0)])  # half the films far darker than any normal
    assert fall.statistic(window, policy) >= np.sort(normal)[::-1][policy.rank(50) - 1]
    assert not judge({"darker": window}, {"darker": fall}, policy).warn
    assert judge({"darker": rng.normal(0.38, 0.05, 50)}, {"darker": fall}, policy).warn
    assert Calibration.from_dict(fall.to_dict()) == fall
