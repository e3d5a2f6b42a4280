"""The product's fp16/int8 tolerances, tested on their own terms (the fixtures use wider ones, tests/conftest.py).

What holds on any CPU: the documented table is the code's table, the decision-level bounds are the
issue's acceptance figures, and the gate accepts a variant exactly when every measured figure is within
the product's tolerances (whatever figures this CPU's int8 kernels produce).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from salad.calibration import calibrate_bundle
from salad.calibration.tolerances import default_tolerances
from salad.manifest import DEFAULT_TOLERANCES, read_manifest
from tests.calibration.conftest import SAMPLE_EVAL, SAMPLE_TRAIN

TOLERANCES_MD = Path(__file__).resolve().parents[2] / "calibration" / "TOLERANCES.md"
HIGHER_IS_BETTER = ("label_agreement", "spearman", "embedding_cosine_min")


def _documented() -> dict[str, dict[str, float]]:
    """metric → {fp32, fp16, int8} from the first table of calibration/TOLERANCES.md."""
    out: dict[str, dict[str, float]] = {}
    for line in TOLERANCES_MD.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.replace("\\|", "").strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`") and cells[0].endswith("`"):
            values = [float(re.sub(r"[*\s]", "", c)) for c in cells[2:]]
            out[cells[0].strip("`")] = dict(zip(("fp32", "fp16", "int8"), values, strict=True))
    return out


def test_the_documented_table_is_the_code() -> None:
    documented = _documented()
    assert set(documented) == set(DEFAULT_TOLERANCES["fp32"])
    for metric, row in documented.items():
        assert row["fp32"] == DEFAULT_TOLERANCES["fp32"][metric]
        for precision in ("fp16", "int8"):
            assert row[precision] == default_tolerances(precision)[metric], (metric, precision)


def test_decision_level_bounds_are_the_acceptance_figures() -> None:
    assert default_tolerances("fp16")["label_agreement"] == 0.995 and default_tolerances("fp16")["delta_auc"] == 0.002
    assert default_tolerances("int8")["label_agreement"] == 0.99 and default_tolerances("int8")["delta_auc"] == 0.005


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_the_gate_accepts_exactly_what_meets_the_product_tolerances(precision: str, bundle_copy: Path, tmp_path: Path) -> None:
    """Default tolerances on a real bundle: accepted ⇔ every figure within bounds; a refusal names each failing one."""
    before = (bundle_copy / "manifest.json").read_bytes()
    data = SAMPLE_TRAIN if precision == "int8" else None
    report = calibrate_bundle(bundle_copy, precision, data, labelled=SAMPLE_EVAL, raise_on_failure=False,
                              report_dir=tmp_path / "reports", latency_runs=1)
    assert report.tolerances == default_tolerances(precision)
    checks = {c["metric"]: c for c in report.parity["checks"]}
    failing = []
    for metric, bound in {**report.tolerances, "nonfinite": 0.0}.items():
        check = checks[metric]
        assert check["tolerance"] == bound and check["checked"], check
        value = check["value"]
        ok = value >= bound if metric in HIGHER_IS_BETTER else abs(value) <= bound
        assert check["passed"] == ok, check
        if not ok:
            failing.append(metric)
    assert report.accepted == (not failing)
    if report.accepted:
        assert precision in read_manifest(bundle_copy).precisions()
    else:
        assert (bundle_copy / "manifest.json").read_bytes() == before
        for metric in failing:
            assert any(metric in line for line in report.failures), (metric, report.failures)
