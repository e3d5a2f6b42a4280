"""Every parity metric of a runtime's outputs against the reference's (through salad.metrics)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from salad.bundle import EMBEDDING
from salad.metrics import (
    agreeing,
    cosines,
    detection_metrics,
    has_both_classes,
    label_agreement,
    max_p99,
    min_mean,
    row_abs_diff,
    spearman,
)
from salad.scoring import SCORES, with_derived
from salad.verdict import metrics as verdict_metrics

from .checks import COMPARED_OUTPUTS, LABELLED_METRICS

# -- metrics -----------------------------------------------------------------------------------------


def measure(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    threshold: float,
    threshold_score: str = "score",
    labels: np.ndarray | None = None,
) -> tuple[dict[str, float | None], np.ndarray]:
    """Every parity metric of `candidate` against `reference` (same films, same order).

    Decisions use `threshold_score` at `threshold` through salad.scoring.decide. `labels` (0/1, or
    -1 for an unlabelled film) give AUC/AUPRC on the labelled films when both classes are present.
    A NaN anywhere makes the metrics it enters NaN (their checks fail) and is counted in `nonfinite`.
    Returns the metrics and the indices of the films whose labels disagree.
    """
    ref = with_derived({k: np.asarray(reference[k], np.float64) for k in COMPARED_OUTPUTS})  # + plug-in scores
    got = with_derived({k: np.asarray(candidate[k], np.float64) for k in COMPARED_OUTPUTS})
    m: dict[str, float | None] = dict.fromkeys(verdict_metrics())
    m.update(dict.fromkeys(LABELLED_METRICS))
    m["embedding_cosine_min"], m["embedding_cosine_mean"] = min_mean(cosines(got[EMBEDDING], ref[EMBEDDING]))
    for name, score in SCORES.items():
        if name in got and name in ref:  # a registered score the graphs neither output nor derive stays "not measured"
            m[score.diff_metric("max")], m[score.diff_metric("p99")] = max_p99(row_abs_diff(got[name], ref[name]))
    decided = got[threshold_score]
    same = agreeing(decided, ref[threshold_score], threshold)
    m["label_agreement"] = label_agreement(decided, ref[threshold_score], threshold)
    m["spearman"] = spearman(decided, ref[threshold_score])
    if labels is not None:
        known = np.asarray(labels) >= 0
        y = np.asarray(labels)[known]
        if has_both_classes(y):
            ref_auc, ref_ap = detection_metrics(y, ref[threshold_score][known])
            if np.all(np.isfinite(decided[known])):
                auc, ap = detection_metrics(y, decided[known])
            else:
                auc = ap = float("nan")
            m.update(auc=auc, auprc=ap, reference_auc=ref_auc, reference_auprc=ref_ap,
                     delta_auc=auc - ref_auc, delta_auprc=ap - ref_ap)
    m["nonfinite"] = float(sum(int((~np.isfinite(got[k])).sum()) for k in COMPARED_OUTPUTS))
    return m, np.flatnonzero(~same)
