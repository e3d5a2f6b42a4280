"""The bundle threshold: chosen on the run's validation scores at a stated operating point.

Never on test data (docs/architecture.md §2). The threshold is put half-way between the validation score that
fixes the operating point and its nearest neighbour on the other side, so a reference image never
sits exactly on it and float32 rounding in another runtime cannot flip a validation decision.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from salad.drift import exposure as film_exposure
from salad.errors import ConfigError, DataError, RunError
from salad.preprocess import PreprocessConfig, load_image
from salad.scoring import DEFAULT_SCORE, SCORE_NAMES, decide

OPERATING_POINTS = ("specificity", "sensitivity")
VAL_SCORES = "val_scores.npz"
#: Validation normals' scores kept in the manifest for the score drift check (a seeded sample beyond this many).
DRIFT_SAMPLE = 2000
#: Offset used when the boundary score has no neighbour on the other side (scores live in [0, 1]).
_EDGE_MARGIN = 1e-3


def parse_operating_point(text: str) -> tuple[str, float]:
    """'specificity:0.95' → ('specificity', 0.95); a clear error for anything else."""
    name, sep, value = str(text).partition(":")
    name = name.strip().lower()
    try:
        target = float(value) if sep else math.nan
    except ValueError:
        target = math.nan
    if name not in OPERATING_POINTS or not 0.0 < target <= 1.0:
        raise ConfigError(
            f"--operating-point {text!r}: expected NAME:VALUE with NAME one of {OPERATING_POINTS} and "
            "VALUE in (0, 1], e.g. specificity:0.95 or sensitivity:0.9."
        )
    return name, target


def read_val_scores(run: Path) -> dict[str, np.ndarray]:
    """run/val_scores.npz (score, knn_angle, label, path) as written at the end of training."""
    path = run / VAL_SCORES
    if not path.is_file():
        raise DataError(
            f"{path}: missing. The threshold is chosen on the run's validation scores, written when training "
            "finishes with validation images; let the run finish, or retrain with --val."
        )
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in (*SCORE_NAMES, "label", "path") if k not in data.files]
        if missing:
            raise DataError(f"{path}: missing arrays {missing}; found {data.files}. Re-run training to rewrite it.")
        out = {k: data[k] for k in (*SCORE_NAMES, "label", "path")}
    if not np.isfinite(out["score"]).all():
        raise RunError(f"{path}: {int((~np.isfinite(out['score'])).sum())} validation scores are NaN/Inf; the run diverged.")
    return out


def _between(lo: float | None, hi: float | None) -> float:
    """A float32-exact threshold t with lo ≤ t < hi, half-way where float32 allows; a margin past a missing side."""
    if hi is None:
        assert lo is not None
        return float(np.float32(lo + _EDGE_MARGIN))
    if lo is None:
        return float(np.float32(hi - _EDGE_MARGIN))
    t = float(np.float32((lo + hi) / 2.0))
    return t if lo <= t < hi else lo


def choose_threshold(
    scores: np.ndarray, labels: np.ndarray, operating_point: str, score_name: str = DEFAULT_SCORE
) -> dict[str, Any]:
    """The manifest's threshold block for validation `scores` (of output `score_name`) and `labels` (0 normal, 1 abnormal).

    specificity:p → the lowest threshold leaving ≥ p of the validation normals normal;
    sensitivity:p → the highest threshold flagging ≥ p of the validation abnormals.
    Decisions follow salad.scoring.decide (abnormal when score > threshold).
    """
    name, target = parse_operating_point(operating_point)
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    normal, abnormal = np.sort(scores[labels == 0]), np.sort(scores[labels == 1])
    values = np.unique(scores)
    if name == "specificity":
        if normal.size == 0:
            raise DataError("operating point specificity needs normal validation images; the run's validation has none.")
        m = min(normal.size, max(1, math.ceil(target * normal.size - 1e-9)))
        lo = float(normal[m - 1])  # the m-th lowest normal must stay normal
        above = values[values > lo]
        value = _between(lo, float(above[0]) if above.size else None)
    else:
        if abnormal.size == 0:
            raise DataError(
                "operating point sensitivity needs abnormal validation images, and the run's validation has none. "
                "Use --operating-point specificity:X, or retrain with --val pointing at labelled normal/abnormal folders."
            )
        m = min(abnormal.size, max(1, math.ceil(target * abnormal.size - 1e-9)))
        hi = float(abnormal[::-1][m - 1])  # the m-th highest abnormal must be flagged
        below = values[values < hi]
        value = _between(float(below[-1]) if below.size else None, hi)
    achieved_spec = float((decide(normal, value) == 0).mean()) if normal.size else None
    achieved_sens = float((decide(abnormal, value) == 1).mean()) if abnormal.size else None
    return {
        "score": score_name,
        "value": value,
        "rule": f"abnormal if {score_name} > value",
        "operating_point": {name: target},
        "achieved": {"specificity": achieved_spec, "sensitivity": achieved_sens},
        "validation": {"n_normal": int(normal.size), "n_abnormal": int(abnormal.size), "source": VAL_SCORES},
    }


def drift_calibration(val: dict[str, np.ndarray], score_name: str, config: PreprocessConfig, seed: int = 0) -> dict[str, Any]:
    """What the drift checks calibrate on (onsite/drift.py): the validation normals' operating scores and exposures.

    Exposure is salad.drift.exposure of the film as the detector sees it (after the bundle's preprocessing). All normals, or a
    seeded DRIFT_SAMPLE of them; a film that cannot be read any more is left out of the exposure list (and counted).
    """
    idx = np.flatnonzero(np.asarray(val["label"]) == 0)
    if idx.size > DRIFT_SAMPLE:
        idx = np.sort(np.random.default_rng(seed).choice(idx, DRIFT_SAMPLE, replace=False))
    exposure, unreadable = [], 0
    for path in val["path"][idx]:
        try:
            exposure.append(film_exposure(load_image(str(path), config)))
        except (DataError, OSError):
            unreadable += 1
    return {"normal_scores": sorted(float(x) for x in np.asarray(val[score_name], dtype=np.float64)[idx]),
            "normal_exposure": sorted(exposure), "unreadable_films": unreadable}
