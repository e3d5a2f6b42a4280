"""The batch-level drift test shared by every drift check (numpy only; docs/similarity.md §4).

A check gives each film of a window a value that grows when films stop looking like the bundle's own (the
detector's score; the style distance of similarity/). The window's statistic is the k-th smallest value,
k = ⌈q·n⌉: a change of site or acquisition moves every film and so moves it, while abnormal films, whose
values are high too, cannot raise it beyond the k-th smallest value of the window's *normal* films (an order
statistic of a set is at most the same-rank order statistic of any subset). So thresholds are calibrated on
held-out normal films alone: the (1 − α) quantile of the k-th smallest value over bootstrap windows of
⌊(1 − π_max)·n⌋ normal films, which bounds the false-alarm rate by α for any share of abnormal films up to
π_max. A check for a *fall* (darker films) judges the k-th largest value against a lower threshold, by the same
argument mirrored: abnormal films can only raise it. Each of the (at most) CHECKS checks gets α / len(CHECKS),
so a report that warns when any check does keeps the whole-call bound α. Nothing here touches a score or a label.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from salad.errors import DataError
from salad.spotcheck import SpotReport

#: The bundle file that holds the style check's calibration (written by `salad similarity attach`).
STYLE_CALIBRATION_FILE = "similarity/drift.json"
#: The drift checks a report can hold; the false-alarm budget is split evenly between them.
CHECKS = ("score", "brighter", "darker", "style")
#: Fewer validation normals than this give no score or exposure check: a bootstrap threshold from a handful of films is noise.
MIN_CALIBRATION_FILMS = 20

#: The exposure checks' per-film value: this percentile of the film as the detector sees it (after the bundle's
#: preprocessing). The bright quarter (mediastinum, bones, soft tissue) tracks exposure and tone changes while the
#: lung fields, where consolidation lives, stay below it; chosen over the mean on training films (docs/similarity.md §4).
EXPOSURE_PERCENTILE = 75.0


def exposure(film: np.ndarray) -> float:
    """A preprocessed film's exposure value for the brighter/darker drift checks."""
    return float(np.percentile(np.asarray(film, dtype=np.float64), EXPOSURE_PERCENTILE))


@dataclass(frozen=True)
class DriftPolicy:
    """How windows are judged: the order-statistic quantile q, the abnormal share covered, the total α, window sizes."""

    quantile: float = 0.25
    max_abnormal: float = 0.5
    false_alarm: float = 0.005
    sizes: tuple[int, ...] = (10, 20, 50, 100, 200)
    draws: int = 4000

    def __post_init__(self) -> None:
        if not 0.0 < self.quantile <= 1.0 - self.max_abnormal:
            raise DataError(
                f"drift quantile {self.quantile} with max_abnormal {self.max_abnormal}: expected 0 < q ≤ 1 − max_abnormal, "
                "else abnormal films alone could decide the statistic."
            )
        if not 0.0 < self.false_alarm < 0.5 or not self.sizes or min(self.sizes) < 4:
            raise DataError(f"drift policy {self}: expected 0 < false_alarm < 0.5 and window sizes ≥ 4.")

    @property
    def false_alarm_per_check(self) -> float:
        """α / len(CHECKS): each check's share, so that any-check-warns stays within α."""
        return self.false_alarm / len(CHECKS)

    def rank(self, n: int) -> int:
        """k: the order statistic (1-based) a window of n films is judged by."""
        return max(1, math.ceil(self.quantile * n))

    def size_for(self, n: int) -> int | None:
        """The largest calibrated window size ≤ n, whose thresholds judge a window of n films (None: too few films)."""
        fitting = [s for s in sorted(self.sizes) if s <= n]
        return fitting[-1] if fitting else None

    def normals_in_worst_window(self, n: int) -> int:
        """The normal films of a window of n at the largest abnormal share covered."""
        return max(self.rank(n), math.floor((1.0 - self.max_abnormal) * n))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sizes": list(self.sizes)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DriftPolicy:
        return cls(quantile=float(d["quantile"]), max_abnormal=float(d["max_abnormal"]), false_alarm=float(d["false_alarm"]),
                   sizes=tuple(int(s) for s in d["sizes"]), draws=int(d["draws"]))


def order_statistic(windows: np.ndarray, policy: DriftPolicy, *, lower: bool = False) -> np.ndarray:
    """Each window's statistic (windows along the last axis, k = ⌈q·n⌉): the k-th smallest value for a rise check,
    the k-th largest for a fall check."""
    v = np.sort(np.asarray(windows, dtype=np.float64), axis=-1)
    n = v.shape[-1]
    k = policy.rank(n)
    return v[..., n - k] if lower else v[..., k - 1]


def window_statistic(values: np.ndarray, policy: DriftPolicy) -> float:
    """A rise check's statistic of one window: its k-th smallest per-film value."""
    return float(order_statistic(values, policy))


@dataclass(frozen=True)
class Calibration:
    """One check's thresholds and usual statistic per window size, from held-out normal films' values.

    lower=False flags a rise (statistic: the k-th smallest value, warn above the threshold); lower=True flags a
    fall (statistic: the k-th largest value, warn below the threshold).
    """

    thresholds: dict[int, float]
    usual: dict[int, float]
    films: int
    lower: bool = False

    @classmethod
    def fit(cls, held_out: np.ndarray, policy: DriftPolicy, seed: int = 0, *, lower: bool = False) -> Calibration:
        """Thresholds at α / len(CHECKS) over bootstrap windows of held-out normals; usual = median over all-normal windows.

        Windows are drawn with replacement: a window of m films from a calibration set not much larger than m
        would otherwise be nearly the same set every time, and the threshold would miss the site's variation.
        """
        v = np.asarray(held_out, dtype=np.float64)
        if v.ndim != 1 or len(v) == 0 or not np.isfinite(v).all():
            raise DataError(f"drift calibration: expected finite per-film values of held-out normal films, received shape {v.shape}.")
        v = -v if lower else v  # a fall of v is a rise of −v: one computation, signs restored below
        sign = -1.0 if lower else 1.0
        rng = np.random.default_rng(seed)
        thresholds, usual = {}, {}
        for n in policy.sizes:
            k = policy.rank(n)
            worst = np.sort(v[rng.integers(0, len(v), (policy.draws, policy.normals_in_worst_window(n)))], axis=1)[:, k - 1]
            thresholds[n] = sign * float(np.quantile(worst, 1.0 - policy.false_alarm_per_check))
            plain = np.sort(v[rng.integers(0, len(v), (min(policy.draws, 1000), n))], axis=1)[:, k - 1]
            usual[n] = sign * float(np.median(plain))
        return cls(thresholds, usual, int(len(v)), lower)

    def statistic(self, values: np.ndarray, policy: DriftPolicy) -> float:
        """One window's statistic under this check's direction (order_statistic)."""
        return float(order_statistic(values, policy, lower=self.lower))

    def warn_windows(self, windows: np.ndarray, policy: DriftPolicy, size: int) -> np.ndarray:
        """Vectorised verdicts on windows of films (windows along the last axis), judged with the thresholds of `size`."""
        return self.warns(order_statistic(windows, policy, lower=self.lower), size)

    def warns(self, statistics: np.ndarray | float, size: int) -> np.ndarray:
        """Whether each statistic is past the threshold of windows of `size` films (below it for a fall check)."""
        threshold = self.thresholds[size]
        stats = np.asarray(statistics)
        return stats < threshold if self.lower else stats > threshold

    def to_dict(self) -> dict[str, Any]:
        return {"thresholds": {str(k): v for k, v in self.thresholds.items()},
                "usual": {str(k): v for k, v in self.usual.items()}, "films": self.films, "lower": self.lower}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibration:
        return cls({int(k): float(v) for k, v in d["thresholds"].items()}, {int(k): float(v) for k, v in d["usual"].items()},
                   int(d.get("films", 0)), bool(d.get("lower", False)))


@dataclass
class CheckVerdict:
    """One check on one window: its statistic against the threshold and the usual value on held-out normals."""

    statistic: float
    threshold: float
    usual: float
    lower: bool
    warn: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WindowVerdict:
    """One window of films: where it is, each check's verdict, and whether any warns."""

    start: int
    stop: int
    n: int
    calibrated_size: int | None
    checks: dict[str, CheckVerdict] = field(default_factory=dict)
    note: str = ""

    @property
    def warn(self) -> bool:
        return any(c.warn for c in self.checks.values())

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "stop": self.stop, "n": self.n, "calibrated_size": self.calibrated_size, "warn": self.warn,
                "checks": {name: c.to_dict() for name, c in self.checks.items()}, "note": self.note}


def judge(values: Mapping[str, np.ndarray], calibrations: Mapping[str, Calibration], policy: DriftPolicy,
          start: int = 0) -> WindowVerdict:
    """The verdict on one window: per check, the statistic against the threshold of the largest calibrated size ≤ n."""
    if not values:
        raise DataError("no drift check to judge with.")
    n = len(next(iter(values.values())))
    if any(len(v) != n for v in values.values()):
        raise DataError(f"drift checks got different film counts: { {k: len(v) for k, v in values.items()} }.")
    size = policy.size_for(n)
    if size is None:
        note = f"too few films for a verdict (the smallest calibrated window is {min(policy.sizes)})"
        return WindowVerdict(start, start + n, n, None, note=note)
    checks = {}
    for name, v in values.items():
        cal = calibrations[name]
        statistic = cal.statistic(v, policy)
        checks[name] = CheckVerdict(statistic, cal.thresholds[size], cal.usual[size], cal.lower, bool(cal.warns(statistic, size)))
    return WindowVerdict(start, start + n, n, size, checks)


def judge_windows(values: Mapping[str, np.ndarray], calibrations: Mapping[str, Calibration], policy: DriftPolicy,
                  size: int) -> list[WindowVerdict]:
    """Verdicts on consecutive windows of `size` films (the last may be shorter; the nearest smaller size judges it)."""
    n = len(next(iter(values.values())))
    return [judge({k: v[i : i + size] for k, v in values.items()}, calibrations, policy, start=i) for i in range(0, n, size)]


@dataclass
class DriftReport:
    """Drift verdicts of one scoring call: the whole call and each rolling window, with the checks that ran."""

    call: WindowVerdict
    windows: list[WindowVerdict] = field(default_factory=list)
    policy: dict[str, Any] = field(default_factory=dict)
    checks_off: dict[str, str] = field(default_factory=dict)
    estimator_sha256: str | None = None
    #: The confirmed-normal spot check (salad/spotcheck.py), when the call was given confirmed normals.
    spot_check: SpotReport | None = None

    @property
    def warn(self) -> bool:
        return self.call.warn or any(w.warn for w in self.windows) or (self.spot_check is not None and self.spot_check.warn)

    def to_dict(self) -> dict[str, Any]:
        out = {"warn": self.warn, "call": self.call.to_dict(), "windows": [w.to_dict() for w in self.windows],
               "checks_off": self.checks_off, "estimator_sha256": self.estimator_sha256, "policy": self.policy}
        if self.spot_check is not None:
            out["spot_check"] = self.spot_check.to_dict()
        return out

    def lines(self) -> list[str]:
        """Human-readable lines: one for the call, one per warning window, one per check that could not run, the spot check's."""
        out = [_line("drift (all films)", self.call)]
        out += [_line(f"drift (films {w.start + 1}–{w.stop})", w) for w in self.windows if w.warn]
        out += [f"drift: {name} check off: {why}" for name, why in self.checks_off.items()]
        return out + (self.spot_check.lines() if self.spot_check is not None else [])


def _comparison(c: CheckVerdict) -> str:
    if c.lower:
        return "<" if c.warn else "≥"
    return ">" if c.warn else "≤"


def _line(what: str, v: WindowVerdict) -> str:
    if not v.checks:
        return f"{what}: {v.n} film(s); {v.note}"
    parts = [f"{name} {c.statistic:.3f} {_comparison(c)} threshold {c.threshold:.3f} (usual {c.usual:.3f})"
             for name, c in v.checks.items()]
    verdict = "WARNING: these films do not look like the bundle's site" if v.warn else "ok"
    return f"{what}: {v.n} film(s), " + "; ".join(parts) + f" → {verdict}"
