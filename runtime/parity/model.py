"""The parity report model: one row per runtime × precision, the report, its JSON and its failure."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salad.errors import ConfigError, ParityError

from .checks import Check, json_number
from .render import render_markdown, render_table

#: The shape of `salad parity --json` and ParityReport.to_dict (salad/schemas/parity.json).
SCHEMA = "salad-parity/1"


@dataclass
class ParityRow:
    """One runtime × precision compared with the reference: every metric, every check, the films that differ."""

    runtime: str
    precision: str
    device: str
    images: int
    metrics: dict[str, float | None]
    checks: list[Check]
    #: Films whose label at the bundle threshold differs from the reference's (at most 20 listed).
    disagreements: list[str] = field(default_factory=list)
    #: The film with the largest |Δscore|.
    worst_image: str | None = None

    @property
    def name(self) -> str:
        return f"{self.runtime}/{self.precision}"

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        """The JSON row: runtime, precision, every metric at top level, passed, checks, failures.

        The film counts are the report's ("images"), the same for every row.
        """
        return {
            "runtime": self.runtime,
            "precision": self.precision,
            "device": self.device,
            **{k: json_number(v) for k, v in self.metrics.items()},
            "passed": self.passed,
            "failures": [c.describe() for c in self.failed_checks],
            "checks": [c.to_dict() for c in self.checks],
            "disagreements": list(self.disagreements),
            "worst_image": self.worst_image,
        }


@dataclass
class ParityReport:
    """The result of `compare`: what was compared with what, one row per runtime × precision, notes."""

    bundle: Path
    #: "pytorch" (torch ran here for the --data films) or "reference.npz" (stored outputs only).
    reference: str
    #: Film counts by source: {"reference": 32, "data": 80}.
    images: dict[str, int]
    threshold: float
    threshold_score: str
    rows: list[ParityRow]
    notes: list[str] = field(default_factory=list)
    data: str | None = None

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def failures(self) -> list[str]:
        """One line per failing check: 'onnxruntime/fp32: max_abs_score_diff = … > tolerance … (…)'."""
        return [f"{r.name}: {c.describe()}" for r in self.rows for c in r.failed_checks]

    def row(self, runtime: str, precision: str = "fp32") -> ParityRow:
        for r in self.rows:
            if (r.runtime, r.precision) == (runtime, precision):
                return r
        raise ConfigError(f"the report has no row {runtime}/{precision}; it has {[r.name for r in self.rows]}.")

    @property
    def failure_records(self) -> list[dict[str, Any]]:
        """One dict per failing check (row, runtime, precision, metric, value, tolerance, …): ParityError.failures."""
        return [
            {"row": r.name, "runtime": r.runtime, "precision": r.precision, **c.to_dict(), "message": c.describe()}
            for r in self.rows for c in r.failed_checks
        ]

    def _context(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle),
            "reference": self.reference,
            "images": dict(self.images),
            "data": self.data,
            "threshold": {"value": self.threshold, "score": self.threshold_score},
            "notes": list(self.notes),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON (schema salad-parity/1, salad/schemas/parity.json): the same shape for one row or many."""
        return {"schema": SCHEMA, "passed": self.passed, **self._context(), "rows": [r.to_dict() for r in self.rows],
                "failures": self.failure_records}

    def row_dict(self, index: int = 0) -> dict[str, Any]:
        """One row with the report's context around it: the parity a calibration report records for its variant."""
        return {**self.rows[index].to_dict(), **self._context()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def to_markdown(self) -> str:
        return render_markdown(self)

    def format_table(self) -> str:
        return render_table(self)

    def raise_if_failed(self) -> None:
        """ParityError listing every failing check of every row (nothing when all pass)."""
        if self.passed:
            return
        failing = [r.name for r in self.rows if not r.passed]
        raise ParityError(
            f"parity failed for {', '.join(failing)} against the PyTorch reference on {sum(self.images.values())} "
            f"film(s) of {self.bundle}:\n  " + "\n  ".join(self.failures)
            + "\nFix the graph or runtime, or, if the differences are acceptable, re-calibrate the variant or pass "
            "looser tolerances (--tolerance PRECISION:METRIC=VALUE).",
            failures=self.failure_records,
        )
