"""Parity metrics, checks and tolerances on small arrays (no bundle, no model): fast and exact."""

from __future__ import annotations

import math
import re
import sys

import numpy as np
import pytest

from salad.errors import BackendUnavailableError, SaladError
from salad.manifest import DEFAULT_TOLERANCES, Manifest
from salad.runtime import parity
from salad.runtime.parity import Check, measure, parse_tolerance_options, resolve_tolerances, spearman
from salad.scoring import decide, score_numpy

THRESHOLD = 0.5


def outputs(rng: np.random.Generator, n: int = 40, dim: int = 8) -> dict[str, np.ndarray]:
    """Embeddings and their real scores against a random unit bank (the shared score maths, not a restatement)."""
    z = rng.normal(size=(n, dim)).astype(np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    bank = rng.normal(size=(64, dim)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    return {"embedding": z, **score_numpy(z, bank, k=5)}


def manifest(parity_tolerances: dict[str, dict[str, float]]) -> Manifest:
    return Manifest(
        toolkit_version="0", created="", source={}, preprocessing={}, embedding_dim=8, bank={}, k=5, scores={},
        threshold={"value": THRESHOLD}, graphs={}, files={}, parity=parity_tolerances,
    )


# -- measure -----------------------------------------------------------------------------------------


def test_identical_outputs_are_perfect() -> None:
    ref = outputs(np.random.default_rng(0))
    m, disagree = measure(ref, {k: v.copy() for k, v in ref.items()}, THRESHOLD)
    assert m["embedding_cosine_min"] == pytest.approx(1.0, abs=1e-6)
    assert m["max_abs_score_diff"] == 0 and m["p99_abs_knn_angle_diff"] == 0
    assert m["label_agreement"] == 1.0 and m["spearman"] == pytest.approx(1.0) and m["nonfinite"] == 0
    assert m["delta_auc"] is None and disagree.size == 0  # no labels, no AUC


def test_one_score_across_the_threshold_is_one_disagreement() -> None:
    ref = outputs(np.random.default_rng(1))
    got = {k: v.copy() for k, v in ref.items()}
    i = int(np.argmin(np.abs(ref["score"] - ref["score"].mean())))
    threshold = float(ref["score"][i]) - 1e-4  # film i is just abnormal in the reference
    got["score"][i] = threshold - 1e-4  # … and just normal in the candidate
    m, disagree = measure(ref, got, threshold)
    assert disagree.tolist() == [i]
    assert m["label_agreement"] == pytest.approx(1 - 1 / len(ref["score"]))
    assert m["max_abs_score_diff"] == pytest.approx(2e-4, rel=1e-3)
    assert (decide(got["score"], threshold) != decide(ref["score"], threshold)).sum() == 1


def test_auc_uses_only_labelled_films_and_reports_the_difference() -> None:
    rng = np.random.default_rng(2)
    ref = outputs(rng)
    labels = np.array([-1] * 10 + [0, 1] * 15)
    got = {k: v.copy() for k, v in ref.items()}
    got["score"] = got["score"] + rng.normal(scale=0.05, size=len(labels)).astype(np.float32)
    m, _ = measure(ref, got, THRESHOLD, labels=labels)
    from sklearn.metrics import roc_auc_score

    known = labels >= 0
    want = roc_auc_score(labels[known], got["score"][known]) - roc_auc_score(labels[known], ref["score"][known])
    assert m["delta_auc"] == pytest.approx(want) and m["delta_auc"] != 0
    assert m["auc"] == pytest.approx(roc_auc_score(labels[known], got["score"][known]))


def test_non_finite_outputs_are_counted_and_fail_every_metric_they_enter() -> None:
    ref = outputs(np.random.default_rng(3))
    got = {k: v.copy() for k, v in ref.items()}
    got["score"][3] = np.nan
    got["embedding"][5, 0] = np.inf
    m, disagree = measure(ref, got, THRESHOLD)
    assert m["nonfinite"] == 2
    assert 3 in disagree.tolist()  # a NaN score is no decision
    assert math.isnan(m["max_abs_score_diff"]) and math.isnan(m["embedding_cosine_min"])  # type: ignore[arg-type]
    assert m["max_abs_knn_angle_diff"] == 0
    check = Check("max_abs_score_diff", m["max_abs_score_diff"], 1e-5, "max")
    assert not check.passed and check.passing_tolerance is None
    assert check.describe() == "max_abs_score_diff = NaN > tolerance 1e-05 (no tolerance passes NaN)"


# -- Spearman: numpy, held to scipy ------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
def test_spearman_matches_scipy(ties: bool) -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(4)
    a = rng.integers(0, 6, size=50).astype(float) if ties else rng.normal(size=50)
    b = a + rng.normal(scale=2.0, size=50)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert spearman(a, -a) == pytest.approx(-1.0) and spearman(a, np.exp(a)) == pytest.approx(1.0)


def test_spearman_is_undefined_or_nan_where_it_should_be() -> None:
    assert spearman(np.ones(5), np.arange(5.0)) is None  # a constant vector has no ranks to correlate
    assert spearman(np.array([1.0]), np.array([2.0])) is None
    assert math.isnan(spearman(np.array([1.0, np.nan, 3.0]), np.arange(3.0)))  # type: ignore[arg-type]


def test_missing_sklearn_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)  # what importlib finds when it is not installed
    with pytest.raises(BackendUnavailableError, match=r"need scikit-learn.*salad-edge\[train\].*without --data"):
        parity.detection_metrics(np.array([0, 1]), np.array([0.1, 0.9]))


# -- checks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bound", ["max", "min", "abs"])
def test_the_passing_tolerance_is_short_tight_and_really_passes(bound: str) -> None:
    rng = np.random.default_rng(5)
    for value in np.concatenate([rng.uniform(0, 1, 200), 10.0 ** rng.uniform(-9, 0, 200), -rng.uniform(0, 1e-3, 50)]):
        value = float(value) if bound == "abs" else abs(float(value))
        failing = Check("m", value, -1.0 if bound != "min" else 2.0, bound)  # type: ignore[arg-type]
        text = re.search(r"a tolerance [≤≥] (\S+) would pass", failing.describe())
        assert text is not None, failing.describe()
        needed = float(text.group(1))  # what a person copies from the message
        assert needed == failing.passing_tolerance
        assert Check("m", value, needed, bound).passed, (bound, value, needed)  # type: ignore[arg-type]
        assert abs(needed - abs(value)) <= 0.01 * abs(value)  # tight: at worst the 3rd significant digit


def test_check_wording_names_metric_value_tolerance_and_what_passes() -> None:
    assert Check("max_abs_score_diff", 3.21865e-06, 1e-7, "max").describe() == (
        "max_abs_score_diff = 3.21865e-06 > tolerance 1e-07 (a tolerance ≥ 3.22e-06 would pass)"
    )
    assert Check("label_agreement", 0.9375, 1.0, "min").describe() == (
        "label_agreement = 0.9375 < tolerance 1 (a tolerance ≤ 0.9375 would pass)"
    )
    assert Check("delta_auc", -0.003, 1e-4, "abs").describe() == "|delta_auc| = 0.003 > tolerance 0.0001 (a tolerance ≥ 0.003 would pass)"
    assert Check("spearman", 0.99999, 0.9999, "min").describe() == "spearman = 0.99999 ≥ tolerance 0.9999"
    unchecked = Check("p99_abs_knn_angle_diff", 0.5, None, "max")
    assert unchecked.passed and not unchecked.checked and "not checked" in unchecked.describe()
    assert Check("delta_auc", None, 1e-4, "abs").describe() == "delta_auc: not measured"


# -- tolerances --------------------------------------------------------------------------------------


def test_tolerances_come_from_the_manifest_then_overrides_and_nonfinite_is_always_zero() -> None:
    m = manifest({"fp32": dict(DEFAULT_TOLERANCES["fp32"]), "int8": {"label_agreement": 0.95, "nonfinite": 3, "max_abs_embeding": 1}})
    tol, notes = resolve_tolerances(m, ["fp32", "int8"], {"int8": {"label_agreement": 0.9}, "fp32": {"spearman": 0.99}})
    assert tol["fp32"]["spearman"] == 0.99 and tol["fp32"]["max_abs_score_diff"] == 1e-5
    assert tol["int8"] == {"label_agreement": 0.9, "nonfinite": 0.0}
    assert notes == ["manifest tolerances for int8 name unknown metric(s) ['max_abs_embeding']; they are ignored."]
    flat, _ = resolve_tolerances(m, ["fp32", "int8"], {"delta_auc": 0.01})
    assert flat["fp32"]["delta_auc"] == flat["int8"]["delta_auc"] == 0.01


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"max_abs_scor_diff": 1.0},
            r"unknown parity metric 'max_abs_scor_diff' in tolerance overrides; expected one of \[.*'max_abs_score_diff'",
        ),
        ({"nonfinite": 1.0}, r"'nonfinite' is fixed at 0"),
        ({"fp64": {"spearman": 0.9}}, r"precision 'fp64'; expected one of \['fp32', 'fp16', 'int8'\]"),
        ({"label_agreement": 1.5}, r"label_agreement=1.5 can never pass"),
        ({"max_abs_score_diff": -1e-5}, r"max_abs_score_diff=-1e-05 can never pass"),
        ({"delta_auc": "lots"}, r"delta_auc='lots' is not a number"),
        ({"delta_auc": float("inf")}, r"expected a finite number"),
    ],
)
def test_bad_overrides_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(SaladError, match=message):
        resolve_tolerances(manifest({}), ["fp32"], overrides)  # type: ignore[arg-type]


def test_tolerance_options() -> None:
    assert parse_tolerance_options(["max_abs_score_diff=1e-4", "int8:label_agreement=0.98"]) == {
        "*": {"max_abs_score_diff": 1e-4}, "int8": {"label_agreement": 0.98},
    }
    with pytest.raises(SaladError, match=r"--tolerance 'int8:'.*expected \[PRECISION:\]METRIC=VALUE"):
        parse_tolerance_options(["int8:"])
    with pytest.raises(SaladError, match=r"--tolerance 'spearman=high': 'high' is not a number"):
        parse_tolerance_options(["spearman=high"])
