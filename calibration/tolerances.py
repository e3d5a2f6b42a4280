"""Default parity tolerances of the fp16 and int8 variants (manifest.parity["fp16"], ["int8"]).

The figures live with their metrics (salad/verdict.py, and salad/scoring.py for the score |Δ|s), so
`salad parity` checks every precision on the same metrics as fp32. The decision-level bounds (label
agreement, ΔAUC) are the issue's acceptance figures; the tensor-level bounds were set from
measurements on real bundles with a margin, and calibration/TOLERANCES.md records the measurements
and the reasoning:
- fp16, worst measured (three real bundles): |Δscore| 5.4e-4, |Δknn_angle| 1.6e-4, cosine 0.9999976,
  Spearman 0.99988, |ΔAUC| 0.0019, |ΔAUPRC| 6.5e-4.
- int8, worst measured with the defaults (minmax, per-channel, < 16 channels float; three real bundles):
  |Δscore| 0.020 (p99 0.018), |Δknn_angle| 0.011, cosine 0.9924, Spearman 0.9952, |ΔAUC| 0.0044, |ΔAUPRC| 0.0014.
A bundle keeps tolerances it already has for a precision: calibration writes these only where none are set.
"""

from __future__ import annotations

from salad import verdict

VARIANT_TOLERANCES: dict[str, dict[str, float]] = {p: verdict.default_tolerances(p) for p in ("fp16", "int8")}


def default_tolerances(precision: str) -> dict[str, float]:
    """The precision's default tolerance of every metric it checks (salad.verdict.default_tolerances)."""
    return verdict.default_tolerances(precision)
