"""One verdict rule: how a measured figure meets its tolerance, for every stage that compares outputs.

Export validation, the Triton chain check, `salad parity` and the calibration gate all measure figures
(embedding cosine, |Δscore|, label agreement, ΔAUC, …) and hold them to tolerances. Each figure is
defined once here (`Metric`: name, bound, default tolerance per precision, label, table column) and
judged once (`judge` → `Check`). Like Polygraphy's comparator, a check reports the tolerance that
would have passed, and NaN never passes. Score metrics come from the score registry (salad.scoring).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from salad.precision import PRECISIONS
from salad.scoring import DIFF_STATISTICS, SCORES

#: How a value meets a tolerance: "max" value ≤ tol, "min" value ≥ tol, "abs" |value| ≤ tol (signed differences).
Bound: TypeAlias = Literal["max", "min", "abs"]


@dataclass(frozen=True)
class Metric:
    """One measured figure: how it meets a tolerance, its default tolerance per precision, how people see it."""

    name: str
    bound: Bound
    #: The figure in a sentence: "min cosine", "max |Δscore|".
    label: str
    #: Its heading in parity's table, or None when it is in the JSON only.
    column: str | None = None
    #: precision → default tolerance (no entry: the precision does not check it by default).
    defaults: Mapping[str, float] = field(default_factory=dict)
    #: A tolerance nobody may change (NaN or infinite outputs never pass), or None.
    fixed: float | None = None

    def check(self, value: float | None, tolerance: float | None) -> Check:
        return Check(self.name, value, tolerance, self.bound, self.label)


def _score_metrics() -> list[Metric]:
    out = []
    for name, score in SCORES.items():
        for stat in DIFF_STATISTICS:
            out.append(Metric(
                score.diff_metric(stat), "max", f"{stat} |Δ{name}|",
                column=f"{stat} |Δ{name}|" if stat in score.columns else None,
                defaults=dict(score.tolerances.get(stat, {})),
            ))
    return out


#: The decision- and tensor-level figures that are not per score, in report order around the score metrics.
_COSINE = (
    Metric("embedding_cosine_min", "min", "min cosine", "min cosine", {"fp32": 0.99999, "fp16": 0.9999, "int8": 0.98}),
    Metric("embedding_cosine_mean", "min", "mean cosine"),
)
_DECISION = (
    Metric("label_agreement", "min", "label agreement", "label agreement", {"fp32": 1.0, "fp16": 0.995, "int8": 0.99}),
    Metric("spearman", "min", "Spearman", "Spearman", {"fp32": 0.9999, "fp16": 0.999, "int8": 0.98}),
    Metric("delta_auc", "abs", "ΔAUC", "ΔAUC", {"fp32": 1e-4, "fp16": 0.002, "int8": 0.005}),
    Metric("delta_auprc", "abs", "ΔAUPRC", "ΔAUPRC", {"fp32": 1e-4, "fp16": 0.005, "int8": 0.01}),
    Metric("nonfinite", "max", "non-finite outputs", "non-finite", fixed=0.0),
)
#: The order of parity's table: decision first, then each score's columns, then the rest.
_TABLE_HEAD = ("label_agreement",)


def metrics() -> dict[str, Metric]:
    """Every checked metric by name, in report order (computed now, so a score registered later is included)."""
    return {m.name: m for m in (*_COSINE, *_score_metrics(), *_DECISION)}


def table_columns() -> list[Metric]:
    """The metrics shown as columns of parity's table, in order: label agreement, score |Δ|s, cosine, the rest."""
    with_column = [m for m in metrics().values() if m.column]
    first = {m.name for m in _score_metrics()} | set(_TABLE_HEAD)
    head = [m for m in with_column if m.name in _TABLE_HEAD]
    scores = [m for m in with_column if m.name in first and m.name not in _TABLE_HEAD]
    return head + scores + [m for m in with_column if m.name not in first]


def fixed_tolerances() -> dict[str, float]:
    """Tolerances no manifest or caller may change: {"nonfinite": 0.0}."""
    return {m.name: m.fixed for m in metrics().values() if m.fixed is not None}


def default_tolerances(precision: str) -> dict[str, float]:
    """The default tolerance of every metric the precision checks (score metrics first, as manifests list them).

    A precision registered with `tolerances_like` borrows that precision's default where a metric has none of its own.
    """
    scores = {m.name for m in _score_metrics()}
    every = metrics().values()
    ordered = [m for m in every if m.name in scores] + [m for m in every if m.name not in scores]
    like = PRECISIONS[precision].tolerances_like if precision in PRECISIONS else None
    chosen = {m.name: m.defaults.get(precision, m.defaults.get(like) if like else None) for m in ordered}
    return {name: float(value) for name, value in chosen.items() if value is not None}


def judge(measured: Mapping[str, float | None], tolerances: Mapping[str, float | None]) -> list[Check]:
    """One Check per known metric in `measured` (report order), against `tolerances` (fixed ones win).

    A metric without a tolerance is reported, not checked; a value None was not measured; NaN fails.
    Keys of `measured` that are not metrics (e.g. "auc") are ignored.
    """
    out = []
    for name, metric in metrics().items():
        if name in measured:
            tol = metric.fixed if metric.fixed is not None else tolerances.get(name)
            out.append(metric.check(measured[name], tol))
    return out


def failed(checks: Iterable[Check]) -> list[Check]:
    return [c for c in checks if not c.passed]


# -- one check ---------------------------------------------------------------------------------------


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


def json_number(value: float | None) -> float | None:
    """JSON has no NaN: a NaN metric becomes null (its check says it failed, `nonfinite` says why)."""
    return None if value is None or math.isnan(value) else float(value)


@dataclass(frozen=True)
class Check:
    """One measured figure against its tolerance: value, tolerance, pass/fail and the tightest tolerance that passes.

    `tolerance` None means no tolerance applies (reported, not checked); `value` None means the
    metric could not be measured (e.g. ΔAUC without labelled data).
    """

    metric: str
    value: float | None
    tolerance: float | None
    bound: Bound
    label: str = ""

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
    def held(self) -> bool:
        """Measured, checked and passed: what a gate that needs the figure asks (None or NaN do not hold)."""
        return self.checked and self.passed

    @property
    def passing_tolerance(self) -> float | None:
        """The tightest tolerance this value meets (the smallest for "max"/"abs", the largest for "min")."""
        if self.value is None or math.isnan(self.value):
            return None
        if self.bound == "min":
            return _safe_round(self.value, upper=False)
        return _safe_round(abs(self.value), upper=True)

    def _relation(self) -> str:
        return ("≥" if self.passed else "<") if self.bound == "min" else ("≤" if self.passed else ">")

    def would_pass(self) -> str:
        """' (a tolerance ≥ 0.00311 would pass)' for a failing check, '' for a passing one."""
        if self.passed:
            return ""
        needed = self.passing_tolerance
        if needed is None:
            return " (no tolerance passes NaN)"
        # repr: the short decimal needed was rounded to, so copying it into --tolerance really passes
        return f" (a tolerance {'≤' if self.bound == 'min' else '≥'} {needed!r} would pass)"

    def describe(self) -> str:
        """'max_abs_score_diff = 0.0031 > tolerance 1e-05 (a tolerance ≥ 0.00311 would pass)'."""
        value = format_value(self.value)
        if self.value is None:
            return f"{self.metric}: not measured"
        if self.tolerance is None:
            return f"{self.metric} = {value} (no tolerance for this precision: not checked)"
        shown = f"|{self.metric}| = {format_value(abs(self.value))}" if self.bound == "abs" else f"{self.metric} = {value}"
        return f"{shown} {self._relation()} tolerance {self.tolerance:g}" + self.would_pass()

    def sentence(self, digits: str = ".3g", label: str | None = None) -> str:
        """The check in words: 'max |Δscore| 0.0031 > 1e-05 (a tolerance ≥ 0.00311 would pass)'.

        label: instead of the metric's (e.g. "max |Δ|" where the output is already named).
        """
        if self.value is None or self.tolerance is None:
            return self.describe()
        value = "NaN" if math.isnan(self.value) else format(abs(self.value) if self.bound == "abs" else self.value, digits)
        return f"{label or self.label or self.metric} {value} {self._relation()} {self.tolerance:g}" + self.would_pass()

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric, "value": json_number(self.value), "tolerance": self.tolerance, "bound": self.bound,
            "checked": self.checked, "passed": self.passed, "passing_tolerance": self.passing_tolerance,
        }
