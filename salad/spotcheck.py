"""Confirmed-normal spot checks: the false-positive rate on films a radiologist read as normal, against the design rate.

The label-free drift checks (salad/drift.py) cannot tell a rise of the normals' scores from a richer case mix. A site
does have labels for some films: every film read as normal is a confirmed normal. Among n of them, the number the
bundle flags is Binomial(n, FPR); the check warns when the exact (Clopper–Pearson) lower confidence bound of the FPR
lies above WARN_MULTIPLE × the design rate (1 − the threshold's specificity in the manifest).

Why Clopper–Pearson, written here: the console has no scipy (runtime/ needs only numpy), and the approximate intervals
(Wilson, Jeffreys) undercover exactly where this check lives — a rate of a few per cent on tens of films, where
n·p is 1–5 — so their false-alarm rate would exceed the stated one. The exact interval inverts the binomial tail
itself (bisection on P(X ≥ x | p), computed in log space), so "lower bound > line" is the same event as
"P(X ≥ x | line) < (1 − confidence)/2": at an FPR of exactly twice the design rate the check warns with probability
at most (1 − confidence)/2, and at the design rate itself far less (`false_alarm_at_design`). Numpy and math only.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from salad.errors import BundleError, DataError

#: The two-sided confidence of the reported interval; the warning is decided by its lower bound.
CONFIDENCE = 0.95
#: Warn when the lower bound of the false-positive rate exceeds this multiple of the design rate (issue 30).
WARN_MULTIPLE = 2.0
#: The true FPRs (as multiples of the design rate) a report says how many confirmed normals it takes to catch.
POWER_MULTIPLES = (3.0, 5.0)
#: "Catch" means: the check warns with at least this probability.
POWER_TARGET = 0.95
#: The largest number of films the power search looks at (beyond it a report says "more than").
MAX_FILMS = 20000


@functools.lru_cache(maxsize=64)
def _log_comb(n: int) -> np.ndarray:
    """log C(n, x) for x = 0..n (read-only: shared between calls)."""
    x = np.arange(1, n + 1, dtype=np.float64)
    out = np.concatenate([[0.0], np.cumsum(np.log(n - x + 1.0) - np.log(x))])
    out.flags.writeable = False
    return out


def log_pmf(n: int, p: float) -> np.ndarray:
    """log P(X = x) for x = 0..n, X ~ Binomial(n, p); exact up to float64 rounding, for 0 ≤ p ≤ 1."""
    if n < 0 or not 0.0 <= p <= 1.0:
        raise DataError(f"binomial with n = {n}, p = {p}: expected n ≥ 0 and 0 ≤ p ≤ 1.")
    x = np.arange(n + 1, dtype=np.float64)
    log_comb = _log_comb(n)
    with np.errstate(divide="ignore", invalid="ignore"):  # p = 0 or 1: log 0 = −inf, and 0·(−inf) is made 0 below
        terms = np.where(x > 0, x * np.log(p), 0.0) + np.where(n - x > 0, (n - x) * np.log1p(-p), 0.0)
    return log_comb + terms


def sf(x: int, n: int, p: float) -> float:
    """P(X ≥ x) for X ~ Binomial(n, p)."""
    if x <= 0:
        return 1.0
    if x > n:
        return 0.0
    return float(np.exp(log_pmf(n, p)[x:]).sum())


def cdf(x: int, n: int, p: float) -> float:
    """P(X ≤ x) for X ~ Binomial(n, p)."""
    if x < 0:
        return 0.0
    if x >= n:
        return 1.0
    return float(np.exp(log_pmf(n, p)[: x + 1]).sum())


def _bisect(f: Any, target: float) -> float:
    """The p in [0, 1] where the increasing function f crosses target (64 halvings: float64 resolution)."""
    lo, hi = 0.0, 1.0
    for _ in range(64):
        mid = (lo + hi) / 2.0
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


@functools.lru_cache(maxsize=4096)
def clopper_pearson(x: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact two-sided interval of a binomial proportion: lower L with P(X ≥ x | L) = a/2, upper U with P(X ≤ x | U) = a/2."""
    if n < 1 or not 0 <= x <= n or not 0.0 < confidence < 1.0:
        raise DataError(f"Clopper–Pearson interval of {x} of {n} at confidence {confidence}: "
                        "expected 0 ≤ x ≤ n, n ≥ 1 and 0 < confidence < 1.")
    half = (1.0 - confidence) / 2.0
    lower = 0.0 if x == 0 else _bisect(lambda p: sf(x, n, p), half)
    upper = 1.0 if x == n else _bisect(lambda p: -cdf(x, n, p), -half)  # P(X ≤ x | p) falls as p rises
    return lower, upper


@functools.lru_cache(maxsize=4096)
def warn_count(n: int, line: float, confidence: float = CONFIDENCE) -> int:
    """The fewest flagged films out of n whose Clopper–Pearson lower bound exceeds `line` (n + 1: none can)."""
    half = (1.0 - confidence) / 2.0
    tail = np.cumsum(np.exp(log_pmf(n, line))[::-1])[::-1]  # tail[x] = P(X ≥ x | line)
    over = np.flatnonzero(tail < half)
    return int(over[0]) if over.size else n + 1


def warn_probability(n: int, fpr: float, design: float, multiple: float = WARN_MULTIPLE, confidence: float = CONFIDENCE) -> float:
    """P(the check warns) when n confirmed normals are flagged at true rate `fpr`."""
    return sf(warn_count(n, multiple * design, confidence), n, fpr)


@functools.lru_cache(maxsize=256)
def films_needed(design: float, fpr_multiple: float, target: float = POWER_TARGET, multiple: float = WARN_MULTIPLE,
                 confidence: float = CONFIDENCE) -> int | None:
    """The fewest confirmed normals from which on the check warns with probability ≥ target at a true FPR of
    fpr_multiple × design (the binomial power is a saw-tooth in n: the first n whose power stays ≥ target up to 2n).
    None when MAX_FILMS do not suffice."""
    fpr = fpr_multiple * design
    if fpr <= multiple * design or fpr >= 1.0:
        return None  # at or below the line the check is built not to warn
    power: dict[int, float] = {}

    def ok(n: int) -> bool:
        if n not in power:
            power[n] = warn_probability(n, fpr, design, multiple, confidence)
        return power[n] >= target

    n = 1
    while n <= MAX_FILMS:
        if not ok(n):
            n += 1
            continue
        bad = next((m for m in range(n + 1, min(2 * n, MAX_FILMS) + 1) if not ok(m)), None)
        if bad is None:
            return n
        n = bad + 1
    return None


def design_rate(threshold: Mapping[str, Any]) -> tuple[float, str]:
    """The false-positive rate the bundle's threshold was set for, from the manifest's threshold block, and where from.

    A specificity operating point states it (1 − target); a sensitivity operating point leaves the specificity it
    achieved on the run's validation normals, the best estimate the bundle holds.
    """
    point = threshold.get("operating_point") or {}
    if isinstance(point, Mapping) and "specificity" in point:
        spec = float(point["specificity"])
        return round(1.0 - spec, 12), f"operating point specificity {spec:g}"  # 1 − 0.95 is 0.050000000000000044
    achieved = (threshold.get("achieved") or {}).get("specificity")
    if achieved is None:
        raise BundleError("the manifest's threshold states no specificity (neither an operating point nor one achieved on "
                          "validation normals), so the spot check has no design rate to compare with; re-export the bundle.")
    return round(1.0 - float(achieved), 12), f"specificity {float(achieved):.4g} achieved on the validation normals"


@dataclass(frozen=True)
class Estimate:
    """x of n confirmed normals flagged: the FPR, its exact interval, and whether its lower bound is above the line."""

    films: int
    flagged: int
    lower: float
    upper: float
    warn: bool

    @classmethod
    def of(cls, flagged: int, films: int, line: float, confidence: float = CONFIDENCE) -> Estimate:
        lo, hi = clopper_pearson(flagged, films, confidence)
        return cls(films, flagged, lo, hi, lo > line)

    @property
    def fpr(self) -> float:
        return self.flagged / self.films

    def to_dict(self) -> dict[str, Any]:
        return {"films": self.films, "flagged": self.flagged, "fpr": self.fpr, "ci": [self.lower, self.upper], "warn": self.warn}


@dataclass
class SpotReport:
    """The spot check of one call (and the running estimate across calls, when a state file keeps one)."""

    design: float
    design_source: str
    call: Estimate | None
    running: Estimate | None = None
    running_calls: int = 0
    state_file: str | None = None
    bundle_sha256: str | None = None
    flagged_files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    repeated: int = 0
    confidence: float = CONFIDENCE
    multiple: float = WARN_MULTIPLE

    @property
    def line(self) -> float:
        return self.multiple * self.design

    @property
    def warn(self) -> bool:
        return any(e is not None and e.warn for e in (self.call, self.running))

    def needed(self) -> list[dict[str, Any]]:
        """How many confirmed normals catch each of POWER_MULTIPLES × design with probability POWER_TARGET."""
        return [{"fpr_multiple": k, "fpr": k * self.design, "detection": POWER_TARGET,
                 "films": films_needed(self.design, k, POWER_TARGET, self.multiple, self.confidence)} for k in POWER_MULTIPLES]

    def false_alarm_at_design(self, n: int) -> float:
        """P(warn) for n confirmed normals when the site's FPR is exactly the design rate."""
        return warn_probability(n, self.design, self.design, self.multiple, self.confidence)

    def to_dict(self) -> dict[str, Any]:
        def est(e: Estimate | None) -> dict[str, Any] | None:
            return None if e is None else {**e.to_dict(), "false_alarm_at_design": self.false_alarm_at_design(e.films)}

        running = est(self.running)
        if running is not None:
            running["calls"] = self.running_calls
        return {"warn": self.warn, "design_fpr": self.design, "design_source": self.design_source, "warn_above": self.line,
                "confidence": self.confidence, "interval": "clopper-pearson", "call": est(self.call), "running": running,
                "repeated_films": self.repeated, "state_file": self.state_file, "bundle_sha256": self.bundle_sha256,
                "films_needed": self.needed(), "flagged_files": list(self.flagged_files), "skipped": list(self.skipped)}

    def lines(self) -> list[str]:
        """Human-readable lines: this call, the running estimate, and the films it takes to catch a rise."""
        pct = lambda v: f"{100 * v:.1f} %"  # noqa: E731 - local formatter
        out = []
        for what, e in (("this call", self.call), (f"running, {self.running_calls} call(s)", self.running)):
            if e is None:
                continue
            verdict = (f"WARNING: the detector flags this site's normals more often than twice its design rate "
                       f"(lower bound {pct(e.lower)} > {pct(self.line)})" if e.warn
                       else f"ok (warns when the lower bound exceeds {pct(self.line)})")
            out.append(f"spot check ({what}): {e.flagged} of {e.films} confirmed normal(s) flagged abnormal, false-positive "
                       f"rate {pct(e.fpr)} ({100 * self.confidence:g} % CI {pct(e.lower)}–{pct(e.upper)}); design "
                       f"{pct(self.design)} → {verdict}")
        need = "; ".join(f"{k['fpr_multiple']:g}× design ({pct(k['fpr'])}): "
                         + (f"{k['films']}" if k["films"] is not None else f"more than {MAX_FILMS}") for k in self.needed())
        out.append(f"spot check: confirmed normals needed to catch a false-positive rate of {need} "
                   f"(in {100 * POWER_TARGET:g} % of checks)")
        if self.repeated:
            out.append(f"spot check: {self.repeated} confirmed film(s) were counted in an earlier call already (not counted again)")
        out += [f"spot check: flagged confirmed normal: {p}" for p in self.flagged_files]
        return out


def summarise(labels: Sequence[int]) -> tuple[int, int]:
    """(films, flagged) of confirmed normals' labels (1 = flagged abnormal)."""
    arr = np.asarray(labels, dtype=np.int64)
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise DataError(f"spot check labels: expected 0 or 1, received {sorted(set(arr.tolist()))}.")
    return int(arr.size), int(arr.sum())


def false_alarm_curve(design: float, sizes: Sequence[int]) -> dict[int, float]:
    """The warn rule's false-alarm rate at exactly the design FPR, per number of confirmed normals."""
    return {int(n): warn_probability(int(n), design, design) for n in sizes}

