"""The one verdict rule (salad/verdict.py): metric definitions, `judge`, and each check's minimum passing tolerance."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from salad.metrics import cosines, max_p99, row_abs_diff
from salad.preprocess import PreprocessConfig, load_batch
from salad.schema import DEFAULT_TOLERANCES
from salad.scoring import SCORES, score_numpy
from salad.verdict import Check, default_tolerances, failed, fixed_tolerances, judge, metrics, table_columns

from ..conftest import SAMPLE_TRAIN


def _film_figures(precision_dtype: type) -> dict[str, float | None]:
    """Parity figures of real films: 32×32 films as embeddings, scored against a bank of 24 other films,
    once in float32 and once with the embeddings rounded through `precision_dtype` (what a float16 encoder does)."""
    paths = sorted(Path(SAMPLE_TRAIN).iterdir())[:40]
    films = load_batch(paths, PreprocessConfig(size=32)).reshape(len(paths), -1).astype(np.float32)
    films /= np.linalg.norm(films, axis=1, keepdims=True)
    bank, z = films[:24], films[24:]
    rounded = z.astype(precision_dtype).astype(np.float32)
    want, got = score_numpy(z, bank, k=5), score_numpy(rounded, bank, k=5)
    out: dict[str, float | None] = {"embedding_cosine_min": float(cosines(rounded, z).min())}
    for name, score in SCORES.items():
        out[score.diff_metric("max")], out[score.diff_metric("p99")] = max_p99(row_abs_diff(got[name], want[name]))
    out["auc"] = 0.9  # not a metric: ignored
    return out


def test_real_float16_rounding_passes_fp16_defaults_and_fails_fp32_with_the_tolerance_that_would_pass() -> None:
    figures = _film_figures(np.float16)
    fp16 = judge(figures, default_tolerances("fp16"))
    assert [c.metric for c in fp16] == [m for m in metrics() if m in figures]  # report order; "auc" ignored
    assert all(c.passed for c in fp16) and not failed(fp16), [c.describe() for c in fp16]
    assert [c.metric for c in fp16 if not c.checked] == ["p99_abs_knn_angle_diff"]  # measured, no default: reported only
    fp32 = judge(figures, default_tolerances("fp32"))
    broken = failed(fp32)
    assert broken, "float16 rounding of real films should exceed the fp32 tolerances"
    for check in broken:
        needed = check.passing_tolerance
        assert needed is not None and check.metric in figures
        # the minimum passing tolerance passes and lies within 1 % of the value (3 significant digits, rounded
        # the safe way); a tolerance tighter than the value itself fails (Polygraphy's "minimum required tolerance")
        assert check.value is not None and Check(check.metric, check.value, needed, check.bound).passed
        assert abs(needed - abs(check.value)) <= 0.01 * abs(check.value)
        tighter = check.value * (1 + 1e-9) if check.bound == "min" else abs(check.value) * (1 - 1e-9)
        assert not Check(check.metric, check.value, tighter, check.bound).passed
        assert "would pass" in check.describe() and repr(needed) in check.sentence()


def test_nan_never_passes_unmeasured_is_not_checked_and_fixed_tolerances_win() -> None:
    checks = {c.metric: c for c in judge(
        {"max_abs_score_diff": float("nan"), "delta_auc": None, "nonfinite": 3.0, "spearman": 0.99},
        {"max_abs_score_diff": 1.0, "delta_auc": 1e-4, "nonfinite": 10.0},
    )}
    assert not checks["max_abs_score_diff"].passed and checks["max_abs_score_diff"].passing_tolerance is None
    assert "no tolerance passes NaN" in checks["max_abs_score_diff"].describe()
    assert checks["delta_auc"].passed and not checks["delta_auc"].checked and not checks["delta_auc"].held
    assert checks["nonfinite"].tolerance == fixed_tolerances()["nonfinite"] == 0.0 and not checks["nonfinite"].passed
    assert checks["spearman"].passed and not checks["spearman"].checked  # no tolerance given: reported only


def test_abs_bound_judges_a_rise_like_a_fall() -> None:
    rise, fall = judge({"delta_auc": 0.004}, {"delta_auc": 0.003}), judge({"delta_auc": -0.004}, {"delta_auc": 0.003})
    assert not rise[0].passed and not fall[0].passed and rise[0].passing_tolerance == fall[0].passing_tolerance == 0.004


def test_metric_definitions_are_the_one_source_of_defaults_and_columns() -> None:
    assert default_tolerances("fp32") == DEFAULT_TOLERANCES["fp32"]
    for precision in ("fp16", "int8"):
        tol = default_tolerances(precision)
        assert set(tol) == set(DEFAULT_TOLERANCES["fp32"])
        # a variant is held to looser bounds than fp32 on every metric
        for name, value in tol.items():
            bound = metrics()[name].bound
            assert (value <= DEFAULT_TOLERANCES["fp32"][name]) if bound == "min" else (value >= DEFAULT_TOLERANCES["fp32"][name])
    headings = [m.column for m in table_columns()]
    assert headings[0] == "label agreement" and headings[-1] == "non-finite"
    assert all(f"{stat} |Δ{name}|" in headings for name, s in SCORES.items() for stat in s.columns)


@pytest.mark.parametrize(("value", "bound"), [(0.99999123, "min"), (3.21865e-06, "max"), (-0.0031, "abs")])
def test_the_passing_tolerance_is_short_and_safe(value: float, bound: str) -> None:
    needed = Check("m", value, None, bound).passing_tolerance  # type: ignore[arg-type]
    assert needed is not None and len(repr(needed)) <= 12
    assert (needed <= value) if bound == "min" else (needed >= abs(value)) and math.isfinite(needed)
