"""The accuracy-bounded search: keep the noisiest layers in float until |ΔAUC| and every tolerance fit.

Each attempt builds the variant with the builder, stages it, and measures it with the parity harness
(salad.runtime.parity.compare, as `salad parity` will later). Without --max-auc-drop there is one
attempt. With it, the builder's `ranked_layers` (noisiest first) are kept float one more at a time
until the variant fits or only one layer would be left quantized; the best attempt is rebuilt for the
report when the last one is not it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from salad.errors import CalibrationError
from salad.verdict import Check, metrics

from .builders import VariantBuilder
from .report import Attempt
from .staging import Staging


@dataclass
class SearchResult:
    """What the search ends with: whether the variant fits, every attempt, the search order, the last parity."""

    fits: bool
    parity: Any  # salad.runtime.parity.ParityReport of the variant left staged
    row: Any  # its one row
    attempts: list[Attempt] = field(default_factory=list)
    candidates: list[str] | None = None


def search(
    builder: VariantBuilder, stage: Staging, tolerances: dict[str, float], max_auc_drop: float | None,
    labelled: str | os.PathLike[str] | None, threads: int | None = None,
) -> SearchResult:
    """Build, stage and measure the variant, keeping layers float while --max-auc-drop asks for it (see module)."""
    precision = builder.precision
    attempts: list[Attempt] = []
    kept: list[str] = []
    candidates = None
    while True:
        builder.build(kept)
        stage.stage_variant(precision, builder, tolerances)
        problems = builder.structure_problems()
        if problems:
            raise CalibrationError(f"the {precision} graphs built for {stage.root} are not valid:\n  " + "\n  ".join(problems))
        parity = _parity(stage.path, precision, labelled, threads)
        row = parity.rows[0]
        fits = row.passed and (max_auc_drop is None or _auc_fits(row.metrics.get("delta_auc"), max_auc_drop))
        attempts.append(Attempt(list(kept), dict(row.metrics), fits, _attempt_failures(row, max_auc_drop)))
        if fits or max_auc_drop is None or not builder.searchable:
            break
        if candidates is None:
            candidates = [e.name for e in builder.ranked_layers()]
        remaining = [c for c in candidates if c not in kept]
        if len(remaining) <= 1:  # keeping every layer float would not be an int8 variant any more
            break
        kept.append(remaining[0])

    if max_auc_drop is not None and not fits and len(attempts) > 1:  # rebuild the best attempt for the report
        best = min(attempts, key=_auc_distance)
        if best is not attempts[-1]:
            builder.build(best.kept_float)
            stage.stage_variant(precision, builder, tolerances)
            parity = _parity(stage.path, precision, labelled, threads)
            row = parity.rows[0]
    return SearchResult(fits, parity, row, attempts, candidates)


def _auc_check(delta: float | None, bound: float) -> Check:
    """|ΔAUC| against --max-auc-drop, by the verdict rule: a rise is the same size of noise as a fall would be."""
    return metrics()["delta_auc"].check(delta, bound)


def _auc_fits(delta: float | None, bound: float) -> bool:
    """|ΔAUC| measured and within the bound (not measured or NaN never fits)."""
    return _auc_check(delta, bound).held


def _auc_distance(attempt: Attempt) -> float:
    delta = attempt.metrics.get("delta_auc")
    return abs(delta) if delta is not None and np.isfinite(delta) else float("inf")


def _attempt_failures(row: Any, max_auc_drop: float | None) -> list[str]:
    out = [c.describe() for c in row.failed_checks]
    delta = row.metrics.get("delta_auc")
    if max_auc_drop is not None and not _auc_fits(delta, max_auc_drop):
        check = _auc_check(delta, max_auc_drop)
        shown = "not measured" if delta is None else f"{abs(delta):.4g}"
        needed = check.passing_tolerance
        hint = "" if needed is None else f" (--max-auc-drop {needed!r} would pass)"
        out.append(f"|ΔAUC| = {shown} > --max-auc-drop {max_auc_drop:g}{hint}")
    return out


def rejection(row: Any, max_auc_drop: float | None, attempts: list[Attempt], precision: str) -> list[str]:
    lines = [f"{precision}: {c.describe()}" for c in row.failed_checks]
    if max_auc_drop is not None:
        best = min(attempts, key=_auc_distance)
        kept = len(best.kept_float)
        delta = best.metrics.get("delta_auc")
        lines.append(
            f"no variant kept |ΔAUC| ≤ {max_auc_drop:g} and every tolerance after {len(attempts)} attempt(s); the best reached "
            f"ΔAUC {'not measured' if delta is None else f'{delta:+.4g}'} with {kept} extra layer(s) in float"
        )
    elif precision == "int8":
        lines.append("retry with --max-auc-drop D --labelled LABELLED to keep the most error-prone layers in float, "
                     "or with --method entropy/percentile or more calibration films")
    return lines


def gate_runtimes() -> list[str]:
    """The CPU runtimes a variant must pass on: every local one that can run here, but the reference (torch).

    A console may score with any of them (ONNX Runtime, OpenVINO, …) and their int8 kernels round differently,
    so a variant is accepted only when each of them meets the tolerances, not only the first.
    """
    from salad.runtime import RUNNERS, available_runners

    ready = available_runners()
    return [n for n, cls in RUNNERS.items()
            if n != "torch" and "cpu" in cls.devices and not cls.required and ready[n] is None]  # no remote server


def _parity(root: Path, precision: str, labelled: Any, threads: int | None = None) -> Any:
    """Parity of the staged variant on every gate runtime, reported by its worst row (a failing one first)."""
    from salad.runtime.parity import compare

    report = compare(root, gate_runtimes(), [precision], labelled=labelled, device="cpu",
                     runner_options={"threads": threads} if threads else None)
    if len(report.rows) <= 1:
        return report

    def badness(row: Any) -> tuple[bool, float]:
        delta = row.metrics.get("delta_auc")
        return (row.passed, -abs(delta) if delta is not None and np.isfinite(delta) else 0.0)

    worst = min(report.rows, key=badness)
    others = "; ".join(f"{r.name} {'passed' if r.passed else 'failed'}" for r in report.rows if r is not worst)
    return replace(report, rows=[worst], notes=[*report.notes, f"gate runtimes: {worst.name} is reported (the worst); {others}"])
