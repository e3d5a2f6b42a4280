"""What the Scorer returns for a film: its scores, label and timings (`Result`), or the error that kept it unscored.

Apart from runtime/scorer.py so that the Scorer's listeners (runtime/events.py) can name a Result without importing
the Scorer that announces it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from salad.scoring import SCORE_NAMES


@dataclass(frozen=True)
class Timings:
    """Per-image costs in milliseconds. `inference_ms` is the batch's runner time shared equally by its images."""

    preprocess_ms: float
    inference_ms: float
    batch_size: int

    @property
    def total_ms(self) -> float:
        return self.preprocess_ms + self.inference_ms


@dataclass(frozen=True)
class Result:
    """One scored image: score and knn_angle in [0, 1], label 1 = abnormal at the bundle threshold.

    A failed image (unreadable file, bad array) has `error` set, NaN scores and no label.
    """

    path: str | None
    score: float
    knn_angle: float
    label: int | None
    timings: Timings
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def scores(self) -> dict[str, float]:
        """Every score of the bundle's registry (salad.scoring.SCORES) by name."""
        return {name: getattr(self, name) for name in SCORE_NAMES}

    def to_dict(self) -> dict[str, Any]:
        """The JSON row of `salad score --json`: path, score, knn_angle, label, ms (or path, error)."""
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, **self.scores, "label": self.label, "ms": round(self.timings.total_ms, 3)}

    @classmethod
    def failure(cls, name: str | None, exc: BaseException, ms: float = 0.0) -> Result:
        """The error row of a film that could not be scored: the message names the file, no scores, no label."""
        message = str(exc)
        if name and name not in message:
            message = f"{name}: {message}"
        nan = float("nan")
        return cls(path=name, score=nan, knn_angle=nan, label=None, timings=Timings(ms, 0.0, 0), error=message)
