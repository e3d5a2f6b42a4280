"""The batch-level drift statistic and its calibration (numpy only; docs/similarity.md §4).

Every film of a window gets its mean latent distance to the bundle's training points. The window's
statistic is the k-th smallest of those, k = ⌈q·n⌉ (q = 0.25): a change of site or acquisition moves
every film and so moves it, while abnormal films, which move away from the normals too, cannot raise
it beyond the k-th smallest of the window's *normal* films (an order statistic of a set is at most the
same-rank order statistic of any subset). So the threshold is calibrated on held-out normal films
alone, as the (1 − α) quantile of the k-th smallest distance over random windows of ⌊(1 − π_max)·n⌋
normal films: that bounds the false-alarm rate by α for any share of abnormal films up to π_max,
whatever those films look like. The statistic never touches a score or a label.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from salad.errors import DataError

from .distance import per_film_distance


@dataclass(frozen=True)
class DriftPolicy:
    """How windows are judged: the order-statistic quantile q, the abnormal share covered, α and window sizes."""

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

    def rank(self, n: int) -> int:
        """k: the order statistic (1-based) a window of n films is judged by."""
        return max(1, math.ceil(self.quantile * n))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sizes": list(self.sizes)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DriftPolicy:
        return cls(quantile=float(d["quantile"]), max_abnormal=float(d["max_abnormal"]), false_alarm=float(d["false_alarm"]),
                   sizes=tuple(int(s) for s in d["sizes"]), draws=int(d["draws"]))


def window_statistic(per_film: np.ndarray, policy: DriftPolicy) -> float:
    """The k-th smallest per-film distance of one window (k = ⌈q·n⌉)."""
    d = np.sort(np.asarray(per_film, dtype=np.float64))
    return float(d[policy.rank(len(d)) - 1])


def calibrate(reference: np.ndarray, held_out: np.ndarray, policy: DriftPolicy, seed: int = 0) -> dict[int, float]:
    """Threshold per window size: the (1 − α) quantile of the worst-case statistic over windows of held-out normals."""
    d = per_film_distance(held_out, reference)
    rng = np.random.default_rng(seed)
    out: dict[int, float] = {}
    for n in policy.sizes:
        m = max(policy.rank(n), math.floor((1.0 - policy.max_abnormal) * n))  # the normal films of a worst-case window
        k = policy.rank(n)
        if m <= len(d):
            idx = np.argsort(rng.random((policy.draws, len(d))), axis=1)[:, :m]
        else:  # fewer held-out films than a window needs: draw with replacement
            idx = rng.integers(0, len(d), size=(policy.draws, m))
        stats = np.sort(d[idx], axis=1)[:, k - 1]
        out[n] = float(np.quantile(stats, 1.0 - policy.false_alarm))
    return out


@dataclass
class WindowVerdict:
    """One window of films: where it is, its ASAP distance and statistic against the threshold, and the verdict."""

    start: int
    stop: int
    n: int
    distance: float
    statistic: float
    threshold: float | None
    calibrated_size: int | None
    reference_statistic: float
    warn: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DriftReport:
    """Drift verdicts of one scoring call: the whole call and each rolling window."""

    call: WindowVerdict
    windows: list[WindowVerdict] = field(default_factory=list)
    estimator_sha256: str = ""
    policy: dict[str, Any] = field(default_factory=dict)

    @property
    def warn(self) -> bool:
        return self.call.warn or any(w.warn for w in self.windows)

    def to_dict(self) -> dict[str, Any]:
        return {"warn": self.warn, "call": self.call.to_dict(), "windows": [w.to_dict() for w in self.windows],
                "estimator_sha256": self.estimator_sha256, "policy": self.policy}

    def lines(self) -> list[str]:
        """Human-readable lines: one for the call, one per warning window."""
        out = [_line("drift (all films)", self.call)]
        out += [_line(f"drift (films {w.start + 1}–{w.stop})", w) for w in self.windows if w.warn]
        return out


def _line(what: str, v: WindowVerdict) -> str:
    if v.threshold is None:
        return f"{what}: {v.n} film(s), distance {v.distance:.3f}; {v.note}"
    verdict = "WARNING: these films do not look like the bundle's training films" if v.warn else "ok"
    return (f"{what}: {v.n} film(s), distance {v.distance:.3f}, statistic {v.statistic:.3f} vs threshold "
            f"{v.threshold:.3f} (held-out films of the bundle's site: {v.reference_statistic:.3f}) → {verdict}")


def judge(points: np.ndarray, reference: np.ndarray, thresholds: dict[int, float], reference_statistic: dict[int, float],
          policy: DriftPolicy, start: int = 0) -> WindowVerdict:
    """The verdict on one window of latent points, with the threshold of the largest calibrated size ≤ its length."""
    per_film = per_film_distance(points, reference)
    n = len(per_film)
    stat = window_statistic(per_film, policy)
    fitting = [s for s in sorted(thresholds) if s <= n]
    if not fitting:
        return WindowVerdict(start, start + n, n, float(per_film.mean()), stat, None, None, float("nan"), False,
                             note=f"too few films for a verdict (the smallest calibrated window is {min(thresholds)})")
    size = fitting[-1]
    thr = thresholds[size]
    return WindowVerdict(start, start + n, n, float(per_film.mean()), stat, thr, size, reference_statistic[size], stat > thr)


def reference_statistics(reference: np.ndarray, held_out: np.ndarray, policy: DriftPolicy, seed: int = 0) -> dict[int, float]:
    """The median statistic of all-normal held-out windows per size: the 'usual' value a report compares with."""
    d = per_film_distance(held_out, reference)
    rng = np.random.default_rng(seed + 1)
    out = {}
    for n in policy.sizes:
        idx = rng.integers(0, len(d), size=(min(policy.draws, 1000), n))
        out[n] = float(np.median(np.sort(d[idx], axis=1)[:, policy.rank(n) - 1]))
    return out


def windows(points: np.ndarray, reference: np.ndarray, thresholds: dict[int, float], reference_statistic: dict[int, float],
            policy: DriftPolicy, size: int) -> list[WindowVerdict]:
    """Verdicts on consecutive windows of `size` films (the last one may be shorter; then the nearest smaller size judges it)."""
    return [judge(points[i : i + size], reference, thresholds, reference_statistic, policy, start=i)
            for i in range(0, len(points), size)]
