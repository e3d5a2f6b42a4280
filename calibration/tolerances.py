"""Default parity tolerances of the fp16 and int8 variants (manifest.parity["fp16"], ["int8"]).

Same keys as the fp32 ones in salad.manifest.DEFAULT_TOLERANCES, so `salad parity` checks every
precision on the same metrics. The decision-level bounds (label agreement, ΔAUC) are the issue's
acceptance figures; the tensor-level bounds were set from measurements on real bundles with a
margin, and calibration/TOLERANCES.md records the measurements and the reasoning. A bundle keeps
tolerances it already has for a precision: calibration writes these only where none are set.
"""

from __future__ import annotations

from salad.manifest import DEFAULT_TOLERANCES

VARIANT_TOLERANCES: dict[str, dict[str, float]] = {
    # Worst measured (three real bundles): |Δscore| 5.4e-4, |Δknn_angle| 1.6e-4, cosine 0.9999976,
    # Spearman 0.99988, |ΔAUC| 0.0019, |ΔAUPRC| 6.5e-4.
    "fp16": {
        "max_abs_score_diff": 0.005,
        "p99_abs_score_diff": 0.003,
        "max_abs_knn_angle_diff": 0.001,
        "embedding_cosine_min": 0.9999,
        "label_agreement": 0.995,
        "spearman": 0.999,
        "delta_auc": 0.002,
        "delta_auprc": 0.005,
    },
    # Worst measured with the defaults (minmax, per-channel, < 16 channels float; three real bundles):
    # |Δscore| 0.020 (p99 0.018), |Δknn_angle| 0.011, cosine 0.9924, Spearman 0.9952, |ΔAUC| 0.0044, |ΔAUPRC| 0.0014.
    "int8": {
        "max_abs_score_diff": 0.05,
        "p99_abs_score_diff": 0.04,
        "max_abs_knn_angle_diff": 0.03,
        "embedding_cosine_min": 0.98,
        "label_agreement": 0.99,
        "spearman": 0.98,
        "delta_auc": 0.005,
        "delta_auprc": 0.01,
    },
}

assert all(set(v) == set(DEFAULT_TOLERANCES["fp32"]) for v in VARIANT_TOLERANCES.values()), "keys must match the fp32 tolerances"


def default_tolerances(precision: str) -> dict[str, float]:
    return dict(VARIANT_TOLERANCES[precision])
