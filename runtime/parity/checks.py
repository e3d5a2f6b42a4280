"""Parity's metrics, their bounds and fixed tolerances, and one metric checked against its tolerance (`Check`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np

from salad.bundle import EMBEDDING
from salad.scoring import DIFF_STATISTICS, SCORE_NAMES, SCORES

Outputs: TypeAlias = "dict[str, np.ndarray]"
Bound: TypeAlias = Literal["max", "min", "abs"]

#: The runtime whose fp32 outputs every other runtime and precision is held to.
REFERENCE_RUNTIME = "torch"
#: Outputs every compared graph must produce (the bundle's merged "model" graph).
COMPARED_OUTPUTS = (EMBEDDING, *SCORE_NAMES)

#: Every checked metric and how its value meets a tolerance: "max" value ≤ tol, "min" value ≥ tol,
#: "abs" |value| ≤ tol (signed differences such as ΔAUC).
METRICS: dict[str, Bound] = {
    "embedding_cosine_min": "min",
    "embedding_cosine_mean": "min",
    **{score.diff_metric(stat): "max" for score in SCORES.values() for stat in DIFF_STATISTICS},  # salad.scoring.SCORES
    "label_agreement": "min",
    "spearman": "min",
    "delta_auc": "abs",
    "delta_auprc": "abs",
    "nonfinite": "max",
}
#: NaN or infinite outputs are never acceptable, whatever a manifest or caller says.
FIXED_TOLERANCES = {"nonfinite": 0.0}
#: Metrics measured on the labelled --data films only.
LABELLED_METRICS = ("auc", "auprc", "reference_auc", "reference_auprc", "delta_auc", "delta_auprc")


# -- the report ------------------------------------------------------------------------------------


def _safe_round(value: float, upper: bool) -> float:
    """`value` in as few significant digits (≥ 3) as still pass: rounded up for an upper bound, down for a lower."""
    for digits in range(3, 18):
        rounded = float(f"{value:.{digits}g}")
        if (rounded >= value) if upper else (rounded <= value):
            return rounded
    return value


def format_value(value: float | None) -> str:
    """A metric for people: 6 significant digits, more for values just below 1 (cosines), '-' when absent."""
    if value is None:
        return "-"
    if math.isnan(value):
        return "NaN"
    if 0.999 < value < 1.0:  # "1" would hide how far a cosine or correlation is from 1
        return f"{value:.{min(15, 2 + math.ceil(-math.log10(1.0 - value)))}f}".rstrip("0").rstrip(".")
    return f"{value:.6g}"


@dataclass(frozen=True)
class Check:
    """One metric of one runtime × precision against its tolerance.

    `tolerance` None means the precision has no tolerance for the metric (reported, not checked);
    `value` None means the metric could not be measured (e.g. ΔAUC without labelled data).
    """

    metric: str
    value: float | None
    tolerance: float | None
    bound: Bound

    @property
    def checked(self) -> bool:
        return self.value is not None and self.tolerance is not None

    @property
    def passed(self) -> bool:
        """False only for a measured, toleranced metric outside its tolerance (NaN always fails)."""
        if not self.checked:
            return True
        assert self.value is not None and self.tolerance is not None
        if self.bound == "min":
            return self.value >= self.tolerance
        return (abs(self.value) if self.bound == "abs" else self.value) <= self.tolerance

    @property
    def passing_tolerance(self) -> float | None:
        """The tightest tolerance this value meets (the smallest for "max"/"abs", the largest for "min")."""
        if self.value is None or math.isnan(self.value):
            return None
        if self.bound == "min":
            return _safe_round(self.value, upper=False)
        return _safe_round(abs(self.value), upper=True)

    def describe(self) -> str:
        """'max_abs_score_diff = 0.0031 > tolerance 1e-05 (a tolerance ≥ 0.00311 would pass)'."""
        value = format_value(self.value)
        if self.value is None:
            return f"{self.metric}: not measured"
        if self.tolerance is None:
            return f"{self.metric} = {value} (no tolerance for this precision: not checked)"
        shown = f"|{self.metric}| = {format_value(abs(self.value))}" if self.bound == "abs" else f"{self.metric} = {value}"
        op = ("≥" if self.passed else "<") if self.bound == "min" else ("≤" if self.passed else ">")
        text = f"{shown} {op} tolerance {self.tolerance:g}"
        if not self.passed:
            needed = self.passing_tolerance
            if needed is None:
                text += " (no tolerance passes NaN)"
            else:
                # repr: the short decimal needed was rounded to, so copying it into --tolerance really passes
                text += f" (a tolerance {'≤' if self.bound == 'min' else '≥'} {needed!r} would pass)"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric, "value": json_number(self.value), "tolerance": self.tolerance, "bound": self.bound,
            "checked": self.checked, "passed": self.passed, "passing_tolerance": self.passing_tolerance,
        }


def json_number(value: float | None) -> float | None:
    """JSON has no NaN: a NaN metric becomes null (its check says it failed, `nonfinite` says why)."""
    return None if value is None or math.isnan(value) else float(value)
