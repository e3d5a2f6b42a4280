"""The spot check's maths (salad/spotcheck.py): the exact binomial interval, the warn rule, its power and false alarms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from salad.errors import BundleError, DataError
from salad.spotcheck import (
    CONFIDENCE,
    Estimate,
    SpotReport,
    cdf,
    clopper_pearson,
    design_rate,
    films_needed,
    log_pmf,
    sf,
    warn_count,
    warn_probability,
)

HALF = (1.0 - CONFIDENCE) / 2.0


def test_the_binomial_pmf_is_the_textbook_one() -> None:
    for n, p in ((1, 0.3), (17, 0.05), (50, 0.5), (200, 0.97)):
        direct = [math.comb(n, x) * p**x * (1 - p) ** (n - x) for x in range(n + 1)]
        assert np.allclose(np.exp(log_pmf(n, p)), direct, rtol=1e-9, atol=1e-300)
        assert math.isclose(float(np.exp(log_pmf(n, p)).sum()), 1.0, rel_tol=1e-12)
    assert np.allclose(np.exp(log_pmf(5, 0.0)), [1, 0, 0, 0, 0, 0]) and np.allclose(np.exp(log_pmf(5, 1.0)), [0, 0, 0, 0, 0, 1])
    assert sf(0, 10, 0.2) == 1.0 and sf(11, 10, 0.2) == 0.0 and math.isclose(sf(3, 10, 0.2) + cdf(2, 10, 0.2), 1.0)
    with pytest.raises(DataError, match="0 ≤ p ≤ 1"):
        log_pmf(3, 1.5)


def test_clopper_pearson_solves_its_defining_equations_and_the_closed_forms() -> None:
    """L: P(X ≥ x | L) = α/2; U: P(X ≤ x | U) = α/2; x = 0 and x = n have closed forms."""
    for n in (1, 7, 50, 333):
        assert clopper_pearson(0, n) == (0.0, pytest.approx(1 - HALF ** (1 / n), abs=1e-12))
        assert clopper_pearson(n, n) == (pytest.approx(HALF ** (1 / n), abs=1e-12), 1.0)
        for x in sorted({1, n // 3, n // 2, n - 1} - {0, n}):
            lo, hi = clopper_pearson(x, n)
            assert 0.0 < lo < x / n < hi < 1.0
            assert sf(x, n, lo) == pytest.approx(HALF, abs=1e-10) and cdf(x, n, hi) == pytest.approx(HALF, abs=1e-10)
    with pytest.raises(DataError, match="0 ≤ x ≤ n"):
        clopper_pearson(5, 4)


def _wilson(x: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    centre, half = (x + z * z / 2) / (n + z * z), z * math.sqrt(x * (n - x) / n + z * z / 4) / (n + z * z)
    return centre - half, centre + half


def _coverage(interval, n: int, p: float) -> float:  # type: ignore[no-untyped-def]
    pmf = np.exp(log_pmf(n, p))
    return float(sum(pmf[x] for x in range(n + 1) if interval(x, n)[0] <= p <= interval(x, n)[1]))


def test_the_exact_interval_covers_where_wilson_does_not() -> None:
    """Why the exact interval: at tens of films and a rate of a few per cent (this check's regime) Wilson undercovers."""
    ps = np.linspace(0.01, 0.30, 59)
    exact = [_coverage(clopper_pearson, 50, p) for p in ps]
    assert min(exact) >= CONFIDENCE
    assert min(_coverage(_wilson, 50, p) for p in ps) < CONFIDENCE - 0.02


def test_warning_is_the_exact_tail_event_and_keeps_its_false_alarm_bounds() -> None:
    """Lower bound > line ⟺ x ≥ warn_count; at an FPR of exactly the line P(warn) ≤ α/2, at the design rate far less."""
    design = 0.05
    for n in (10, 20, 50, 120, 400):
        c = warn_count(n, 2 * design)
        near = range(max(0, c - 4), min(n, c + 4) + 1)  # the lower bound rises with x: the edge decides
        assert all((clopper_pearson(x, n)[0] > 2 * design) == (x >= c) for x in (range(n + 1) if n <= 50 else near))
        assert warn_probability(n, 2 * design, design) <= HALF
        assert warn_probability(n, design, design) <= 0.01
        assert Estimate.of(c, n, 2 * design).warn and (c == 0 or not Estimate.of(c - 1, n, 2 * design).warn)


def test_bootstrap_draws_match_the_binomial_power() -> None:
    """Fifty confirmed normals drawn from a population: the warn rate is the analytic one (Binomial(50, population FPR))."""
    rng = np.random.default_rng(0)
    design = 0.05
    for fpr in (0.05, 0.10, 0.30):
        labels = (np.arange(1000) < round(fpr * 1000)).astype(int)
        draws = labels[rng.integers(0, len(labels), (4000, 50))].sum(axis=1)
        rate = np.mean([Estimate.of(int(x), 50, 2 * design).warn for x in draws])
        expected = warn_probability(50, fpr, design)
        assert abs(rate - expected) <= 4 * math.sqrt(expected * (1 - expected) / 4000) + 1e-3


def test_films_needed_is_where_the_power_reaches_and_stays_at_the_target() -> None:
    design = 0.05
    needs = {k: films_needed(design, k) for k in (3.0, 5.0, 8.0)}
    assert needs[3.0] is not None and needs[5.0] is not None and needs[8.0] is not None
    assert needs[3.0] > needs[5.0] > needs[8.0]
    for k, n in needs.items():
        assert n is not None
        assert all(warn_probability(m, k * design, design) >= 0.95 for m in range(n, 2 * n + 1))
        assert warn_probability(n - 1, k * design, design) < 0.95
    assert films_needed(design, 2.0) is None  # at the line itself the check is built not to warn


def test_the_design_rate_comes_from_the_manifest_threshold() -> None:
    assert design_rate({"operating_point": {"specificity": 0.95}, "achieved": {"specificity": 0.96}}) == (
        pytest.approx(0.05), "operating point specificity 0.95")
    rate, source = design_rate({"operating_point": {"sensitivity": 0.9}, "achieved": {"specificity": 0.8}})
    assert rate == pytest.approx(0.2) and "achieved" in source
    with pytest.raises(BundleError, match="no design rate"):
        design_rate({"operating_point": {"sensitivity": 0.9}, "achieved": {"specificity": None}})


def test_the_report_states_counts_interval_verdict_and_films_needed() -> None:
    report = SpotReport(0.05, "operating point specificity 0.95", Estimate.of(12, 50, 0.1), Estimate.of(20, 400, 0.1), 3)
    d = report.to_dict()
    assert d["warn"] and d["call"]["warn"] and not d["running"]["warn"] and d["running"]["calls"] == 3
    assert d["call"]["ci"] == list(clopper_pearson(12, 50)) and d["warn_above"] == pytest.approx(0.1)
    assert d["call"]["false_alarm_at_design"] == warn_probability(50, 0.05, 0.05)
    assert [k["films"] for k in d["films_needed"]] == [films_needed(0.05, 3.0), films_needed(0.05, 5.0)]
    lines = report.lines()
    assert lines[0].startswith("spot check (this call): 12 of 50") and "WARNING" in lines[0]
    assert "running, 3 call(s)" in lines[1] and "→ ok (warns when the lower bound exceeds 10.0 %)" in lines[1] and "needed" in lines[2]
