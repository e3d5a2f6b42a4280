"""Rendering of a ParityReport for people: a fixed-width terminal table and a markdown document.

Kept apart from the measurements (checks.py, measure.py) so that the numbers have one source and the two
renderings only format them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from salad.bundle import REFERENCE_FILE
from salad.tables import fixed_width
from salad.verdict import table_columns

from .checks import Check, format_value


class RowView(Protocol):
    """What the renderings read of a row (model.ParityRow): typed here so that model imports render, not the reverse."""

    @property
    def runtime(self) -> str: ...
    @property
    def precision(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def images(self) -> int: ...
    @property
    def metrics(self) -> Mapping[str, float | None]: ...
    @property
    def checks(self) -> Sequence[Check]: ...
    @property
    def disagreements(self) -> Sequence[str]: ...
    @property
    def name(self) -> str: ...
    @property
    def passed(self) -> bool: ...
    @property
    def failed_checks(self) -> Sequence[Check]: ...


class ReportView(Protocol):
    """What the renderings read of a report (model.ParityReport)."""

    @property
    def bundle(self) -> Path: ...
    @property
    def images(self) -> Mapping[str, int]: ...
    @property
    def data(self) -> str | None: ...
    @property
    def threshold(self) -> float: ...
    @property
    def threshold_score(self) -> str: ...
    @property
    def rows(self) -> Sequence[RowView]: ...
    @property
    def notes(self) -> Sequence[str]: ...
    @property
    def passed(self) -> bool: ...
    @property
    def failures(self) -> Sequence[str]: ...


def columns() -> list[tuple[str, str]]:
    """The columns of both renderings: (heading, metric key), from salad.verdict. Further metrics are in the JSON."""
    return [(m.column or m.name, m.name) for m in table_columns()]


#: The columns as of import (the renderings call `columns()`, so a score registered later has its own).
COLUMNS = tuple(columns())


def describe_reference(report: ReportView) -> str:
    """One sentence: which films, and where their PyTorch outputs come from."""
    n_ref = report.images.get("reference", 0)
    text = f"{n_ref} reference films with the PyTorch outputs stored in {REFERENCE_FILE}"
    n_data = report.images.get("data", 0)
    if n_data:
        text += f", plus {n_data} films from {report.data} scored by the torch runtime here"
    return text + "."


def _cell(row: RowView, key: str) -> str:
    check = next((c for c in row.checks if c.metric == key), None)
    text = format_value(row.metrics.get(key))
    return text + " ✗" if check is not None and not check.passed else text


def _status(row: RowView) -> str:
    return "PASS" if row.passed else f"FAIL ({len(row.failed_checks)})"


def render_table(report: ReportView) -> str:
    """Fixed-width table, one line per runtime × precision; failing metrics are marked ✗, failures listed below."""
    shown = columns()
    header = ("runtime", "precision", "device", *(h for h, _ in shown), "result")
    rows = [header] + [
        (r.runtime, r.precision, r.device, *(_cell(r, k) for _, k in shown), _status(r)) for r in report.rows
    ]
    lines = fixed_width(rows, left=3).split("\n")
    lines += [
        "",
        f"reference: {describe_reference(report)}",
        f"decision: {report.threshold_score} > {report.threshold:.6g}",
    ]
    lines += [f"note: {n}" for n in report.notes]
    lines.append("parity: PASSED" if report.passed else f"parity: FAILED ({len(report.failures)} check(s), marked ✗)")
    return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(report: ReportView) -> str:
    """A markdown document: verdict, what was compared, the table, every failure, the tolerances used."""
    verdict = "passed" if report.passed else "FAILED"
    shown = columns()
    out = [
        f"# Parity of `{report.bundle.name}`: {verdict}",
        "",
        f"- Bundle: `{report.bundle}`",
        f"- Reference: {describe_reference(report)}",
        f"- Decision: abnormal when `{report.threshold_score}` > {report.threshold:.6g} (the bundle threshold)",
        *(f"- Note: {n}" for n in report.notes),
        "",
        "| " + " | ".join(("runtime", "precision", "device", "films", *(_md(h) for h, _ in shown), "result")) + " |",
        "|" + "---|" * (5 + len(shown)),
    ]
    for r in report.rows:
        cells = (r.runtime, r.precision, r.device, str(r.images), *(_cell(r, k) for _, k in shown), _status(r))
        out.append("| " + " | ".join(_md(c) for c in cells) + " |")
    failing = [r for r in report.rows if not r.passed]
    if failing:
        out += ["", "## Failures", ""]
        for r in failing:
            out += [f"- **{r.name}**: {_md(c.describe())}" for c in r.failed_checks]
            if r.disagreements:
                out.append(f"- **{r.name}**: labels differ on {', '.join(f'`{n}`' for n in r.disagreements)}")
    out += ["", "## Checks", "", "| runtime | precision | metric | value | tolerance | result |", "|---|---|---|---|---|---|"]
    for r in report.rows:
        for c in r.checks:
            bound = {"min": "≥", "max": "≤", "abs": "\\|·\\| ≤"}[c.bound]
            tol = "-" if c.tolerance is None else f"{bound} {c.tolerance:g}"
            result = "pass" if c.checked and c.passed else "FAIL" if c.checked else "not checked"
            out.append(f"| {r.runtime} | {r.precision} | `{c.metric}` | {format_value(c.value)} | {tol} | {result} |")
    return "\n".join(out) + "\n"
