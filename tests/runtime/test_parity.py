"""`salad parity` / salad.runtime.compare on real bundles: every runtime × precision, the console, perturbed graphs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

import salad
from salad.errors import EXIT_CHECKS_FAILED, BackendUnavailableError, ParityError, SaladError
from salad.manifest import PRECISIONS, read_manifest
from salad.runtime import ParityReport, compare, runner_class, runner_names
from salad.runtime.cli import parity_command
from salad.runtime.parity import REFERENCE_RUNTIME
from tests.runtime.test_cli import run_python

SAMPLE_EVAL = Path(salad.__file__).parent / "sample" / "eval"
N_EVAL = len(list(SAMPLE_EVAL.rglob("*.jpeg")))
#: The JSON row keys the issue promises at the top level (one row) or in each of "rows" (several).
ROW_KEYS = {"label_agreement", "max_abs_score_diff", "delta_auc", "embedding_cosine_min", "spearman", "passed"}

Edit = Callable[[np.ndarray], np.ndarray]


def nudge(delta: float) -> Edit:
    """Add `delta` to the first element of a weight (NaN to poison it)."""

    def edit(weight: np.ndarray) -> np.ndarray:
        weight.flat[0] = np.nan if np.isnan(delta) else weight.flat[0] + delta
        return weight

    return edit


def n_reference(bundle: Path) -> int:
    return int(read_manifest(bundle, verify=False).reference.images)


def _runtime_param(name: str) -> object:
    gpu_only = "cpu" not in runner_class(name).devices
    return pytest.param(name, marks=[pytest.mark.gpu] if gpu_only else [], id=name)


# -- every registered runtime × every precision (a new backend or precision is tested automatically) --


@pytest.mark.parametrize(
    ("runtime", "precision"),
    # torch is the fp32 reference: precision variants live in the ONNX files and are compared with it.
    [
        pytest.param(name, p, marks=_runtime_param(name).marks, id=f"{name}-{p}")
        for name in runner_names()
        for p in PRECISIONS
        # a remote runtime (triton) needs a server: tests/runtime/test_triton_client.py runs it against one
        if (name != REFERENCE_RUNTIME or p == "fp32") and not runner_class(name).required
    ],
)
def test_every_runtime_and_precision_makes_the_reference_decisions(
    runtime: str, precision: str, calibrated_bundle: Callable[[str], Path]
) -> None:
    reason = runner_class(runtime).unavailable_reason()
    if reason:
        pytest.skip(f"the {runtime} runtime cannot run here: {reason}")
    bundle = calibrated_bundle(precision)
    report = compare(bundle, [runtime], [precision], labelled=SAMPLE_EVAL)
    assert report.passed, "\n".join(report.failures)
    row = report.row(runtime, precision)
    assert report.images == {"reference": n_reference(bundle), "data": N_EVAL}
    assert row.images == n_reference(bundle) + N_EVAL
    assert row.metrics["nonfinite"] == 0 and row.metrics["delta_auc"] is not None
    assert all(c.checked for c in row.checks if c.metric in ("max_abs_score_diff", "label_agreement", "delta_auc", "nonfinite"))
    if precision == "fp32":  # acceptance 1: the fp32 graph is held to fp32 numbers
        assert row.metrics["label_agreement"] == 1.0
        assert row.metrics["max_abs_score_diff"] <= 1e-5  # type: ignore[operator]
        assert abs(row.metrics["delta_auc"]) <= 1e-4  # type: ignore[arg-type]


# -- acceptance 1: the command, its JSON and markdown ------------------------------------------------


def _table_widths(markdown: str) -> list[int]:
    """Cells per line of every markdown table line (escaped pipes are content, not separators)."""
    return [len(line.replace("\\|", "").strip("|").split("|")) for line in markdown.splitlines() if line.startswith("|")]


def test_cli_onnxruntime_fp32_with_labelled_data(tiny_bundle: Path, tmp_path: Path) -> None:
    out, md = tmp_path / "reports" / "out.json", tmp_path / "reports" / "out.md"
    args = [str(tiny_bundle), "--runtime", "onnxruntime", "--precision", "fp32", "--labelled", str(SAMPLE_EVAL),
            "--json", str(out), "--markdown", str(md)]
    result = CliRunner().invoke(parity_command, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["schema"] == "salad-parity/1" and len(payload["rows"]) == 1  # one row: the same shape as many
    row = payload["rows"][0]
    assert row.keys() >= ROW_KEYS and payload["failures"] == []
    assert payload["passed"] is True and row["label_agreement"] == 1.0
    assert row["max_abs_score_diff"] <= 1e-5 and abs(row["delta_auc"]) <= 1e-4
    assert payload["images"] == {"reference": n_reference(tiny_bundle), "data": N_EVAL}
    assert payload["reference"] == "reference.npz+torch" and payload["notes"] == []
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["runtime", "precision", "device"]
    assert lines[1].split()[:3] == ["onnxruntime", "fp32", "cpu"] and lines[1].split()[-1] == "PASS"
    assert "parity: PASSED" in result.output
    text = md.read_text()
    assert text.startswith(f"# Parity of `{tiny_bundle.name}`: passed")
    assert f"| onnxruntime | fp32 | cpu | {n_reference(tiny_bundle) + N_EVAL} | 1 |" in text
    widths = _table_widths(text)
    main, checks = widths[:3], widths[3:]
    assert len(set(main)) == 1 and len(set(checks)) == 1, widths  # every row as wide as its header
    assert len(checks) == 2 + len(row["checks"])


def test_cli_several_rows_go_under_rows(tiny_bundle: Path) -> None:
    args = [str(tiny_bundle), "--runtime", "onnxruntime", "--runtime", "torch", "--precision", "fp32", "--json", "-"]
    result = CliRunner().invoke(parity_command, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)  # '-' prints only the JSON
    assert payload["passed"] is True
    assert [(r["runtime"], r["precision"]) for r in payload["rows"]] == [("onnxruntime", "fp32"), ("torch", "fp32")]
    for row in payload["rows"]:
        assert row.keys() >= ROW_KEYS and row["delta_auc"] is None  # no labelled data, no AUC
    # The torch row is live PyTorch against the outputs export stored: the reference itself still holds.
    assert payload["rows"][1]["max_abs_score_diff"] <= 1e-6


def test_cli_fails_with_exit_code_and_keeps_the_reports(perturbed_bundle: Callable[[Edit], Path], tmp_path: Path) -> None:
    bundle = perturbed_bundle(nudge(0.1))
    out = tmp_path / "fail.json"
    result = CliRunner().invoke(parity_command, [str(bundle), "--json", str(out)])
    assert result.exit_code == EXIT_CHECKS_FAILED == 3  # the checks ran and failed: not "could not run" (1)
    assert "error: parity failed for onnxruntime/fp32" in result.output
    assert "max_abs_score_diff = " in result.output and "> tolerance 1e-05" in result.output
    payload = json.loads(out.read_text())
    assert payload["passed"] is False and payload["rows"][0]["max_abs_score_diff"] > 1e-5
    assert any(f.startswith("max_abs_score_diff") for f in payload["rows"][0]["failures"])
    worst = next(f for f in payload["failures"] if f["metric"] == "max_abs_score_diff")
    assert worst["row"] == "onnxruntime/fp32" and worst["value"] > worst["tolerance"] == 1e-5 and not worst["passed"]
    with pytest.raises(ParityError) as caught:
        compare(bundle, ["onnxruntime"], ["fp32"], raise_on_failure=True)
    assert caught.value.failures == payload["failures"]  # the exception carries what --json records


def test_parity_is_registered_in_the_salad_group() -> None:
    from salad.cli import main

    assert main.get_command(click.Context(main), "parity") is parity_command


def test_cli_tolerance_option_is_validated(tiny_bundle: Path) -> None:
    result = CliRunner().invoke(parity_command, [str(tiny_bundle), "--tolerance", "max_abs_scor_diff=1e-4"])
    assert result.exit_code == 2  # a usage error (ConfigError)
    assert "unknown parity metric 'max_abs_scor_diff'" in result.output and "max_abs_score_diff" in result.output
    result = CliRunner().invoke(parity_command, [str(tiny_bundle), "--tolerance", "1e-4"])
    assert result.exit_code == 2 and "expected [PRECISION:]METRIC=VALUE" in result.output


def test_parity_impossible_combinations_exit_2(tiny_bundle: Path) -> None:
    result = CliRunner().invoke(parity_command, [str(tiny_bundle), "--runtime", "torch", "--precision", "int8"])
    assert result.exit_code == 2, result.output
    assert "has no int8 variant" in result.output or "no graph" in result.output


# -- acceptance 2: a console without torch or onnx, and a --slim bundle -------------------------------


def test_console_without_torch_compares_with_reference_npz(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "console.json"
    body = (
        "from salad.runtime.cli import parity_command\n"
        f"try:\n    parity_command(args=[{str(tiny_bundle)!r}, '--runtime', 'onnxruntime', '--json', {str(out)!r}], "
        "prog_name='salad parity')\n"
        "finally:\n"
        "    print('loaded:', sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'onnx', 'onnxruntime'}))\n"
    )
    proc = run_python(body, blocked=("torch", "onnx"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "loaded: ['onnxruntime']" in proc.stdout
    assert "parity: PASSED" in proc.stdout and "PyTorch is not installed here" in proc.stdout
    payload = json.loads(out.read_text())
    assert payload["passed"] is True and payload["reference"] == "reference.npz"
    assert payload["images"] == {"reference": n_reference(tiny_bundle)}
    assert payload["rows"][0]["label_agreement"] == 1.0 and payload["rows"][0]["delta_auc"] is None
    assert any("PyTorch is not installed here" in n and "reference.npz" in n for n in payload["notes"])
    # Same numbers as this torch-capable process, which also compares the reference films with reference.npz.
    here = compare(tiny_bundle, ["onnxruntime"], ["fp32"]).rows[0]
    assert payload["rows"][0]["max_abs_score_diff"] == pytest.approx(here.metrics["max_abs_score_diff"], abs=1e-7)


def test_slim_bundle_falls_back_to_reference_npz_and_says_data_was_not_used(slim_bundle: Path) -> None:
    report = compare(slim_bundle, ["onnxruntime"], ["fp32"], labelled=SAMPLE_EVAL)
    assert report.passed, report.failures
    assert report.reference == "reference.npz" and report.images == {"reference": n_reference(slim_bundle)}
    assert report.rows[0].metrics["delta_auc"] is None
    (note,) = report.notes
    assert f"--labelled {SAMPLE_EVAL} was not used" in note and "--slim" in note
    assert "was not used" in report.to_markdown() and "was not used" in report.format_table()
    with pytest.raises(SaladError, match=r"torch runtime needs checkpoint.pt.*--slim"):
        compare(slim_bundle, ["torch"], ["fp32"])


# -- acceptance 3: a perturbed graph fails, naming metric, value, tolerance and what would pass -------


def test_a_perturbed_weight_fails_naming_every_metric_and_tolerance(perturbed_bundle: Callable[[Edit], Path]) -> None:
    bundle = perturbed_bundle(nudge(1.0))  # large enough to reorder films across the classes, so ΔAUC fails too
    read_manifest(bundle, verify=True)  # checksums updated: only parity can tell
    report = compare(bundle, ["onnxruntime"], ["fp32"], labelled=SAMPLE_EVAL)
    pattern = r"onnxruntime/fp32: max_abs_score_diff = \S+ > tolerance 1e-05 \(a tolerance ≥ \S+ would pass\)"
    with pytest.raises(ParityError, match=pattern):
        report.raise_if_failed()
    row = report.rows[0]
    failed = {c.metric: c for c in row.failed_checks}
    # Every check ran before anything raised: tensor-level and AUC failures are all listed.
    assert {"embedding_cosine_min", "max_abs_score_diff", "p99_abs_score_diff", "max_abs_knn_angle_diff", "delta_auc"} <= set(failed)
    assert failed["embedding_cosine_min"].describe().startswith("embedding_cosine_min = 0.")
    assert "< tolerance 0.99999 (a tolerance ≤ " in failed["embedding_cosine_min"].describe()
    agreement = row.metrics["label_agreement"]
    assert agreement is not None and round((1 - agreement) * row.images) == len(row.disagreements)

    # The suggested tolerances are the tightest that pass: with them it passes, slightly tighter it fails.
    loosened = {metric: c.passing_tolerance for metric, c in failed.items()}
    assert compare(bundle, ["onnxruntime"], ["fp32"], labelled=SAMPLE_EVAL, tolerances=loosened).passed  # type: ignore[arg-type]
    score_tol = failed["max_abs_score_diff"].passing_tolerance
    assert score_tol is not None
    tighter = compare(
        bundle, ["onnxruntime"], ["fp32"], labelled=SAMPLE_EVAL, tolerances={**loosened, "max_abs_score_diff": score_tol * 0.99}  # type: ignore[dict-item]
    )
    assert [c.metric for c in tighter.rows[0].failed_checks] == ["max_abs_score_diff"]


def test_a_nan_weight_fails_on_non_finite_outputs_and_still_writes_valid_json(perturbed_bundle: Callable[[Edit], Path]) -> None:
    bundle = perturbed_bundle(nudge(float("nan")))
    with pytest.raises(ParityError, match=r"parity failed for onnxruntime/fp32 .*\n  onnxruntime/fp32: embedding_cosine_min = NaN"):
        compare(bundle, ["onnxruntime"], ["fp32"], raise_on_failure=True)
    report = compare(bundle, ["onnxruntime"], ["fp32"])
    row = report.rows[0]
    values = n_reference(bundle) * (read_manifest(bundle).embedding_dim + 2)  # every embedding, score, knn_angle
    assert row.metrics["nonfinite"] == values
    assert row.metrics["label_agreement"] == 0.0  # a NaN score is no decision
    failures = "\n".join(report.failures)
    assert f"nonfinite = {values} > tolerance 0" in failures
    assert "max_abs_score_diff = NaN > tolerance 1e-05 (no tolerance passes NaN)" in failures
    payload = json.loads(report.to_json())  # strict JSON: NaN metrics are null
    assert payload["rows"][0]["max_abs_score_diff"] is None and payload["passed"] is False


def test_by_default_torch_takes_part_in_fp32_only(calibrated_bundle: Callable[[str], Path]) -> None:
    bundle = calibrated_bundle("fp16")
    report = compare(bundle, ["onnxruntime", "torch"])  # every precision of the bundle, both runtimes
    assert [(r.runtime, r.precision) for r in report.rows] == [("onnxruntime", "fp32"), ("onnxruntime", "fp16"), ("torch", "fp32")]
    assert report.passed, report.failures


# -- request errors, raised before any film runs ------------------------------------------------------


def test_a_precision_the_bundle_lacks_is_named_with_the_fix(tiny_bundle: Path) -> None:
    with pytest.raises(SaladError, match=r"no 'model' graph at precision 'int8'.*salad calibrate BUNDLE --precision int8"):
        compare(tiny_bundle, ["onnxruntime"], ["int8"])
    with pytest.raises(SaladError, match=r"torch runtime is the fp32 reference and has no fp16 variant"):
        compare(tiny_bundle, ["torch"], ["fp16"])


@pytest.mark.skipif(runner_class("tensorrt").unavailable_reason() is None, reason="TensorRT runs here")
def test_an_unavailable_runtime_is_refused_before_any_work(tiny_bundle: Path) -> None:
    with pytest.raises(BackendUnavailableError, match=r"the tensorrt runtime is unavailable: .*salad-edge\[gpu\]"):
        compare(tiny_bundle, ["onnxruntime", "tensorrt"], ["fp32"])


def test_data_with_one_class_compares_without_auc(tiny_bundle: Path) -> None:
    report = compare(tiny_bundle, ["onnxruntime"], ["fp32"], labelled=SAMPLE_EVAL / "normal")
    assert report.passed and report.images["data"] == len(list((SAMPLE_EVAL / "normal").glob("*.jpeg")))
    assert report.rows[0].metrics["delta_auc"] is None
    assert any("only label-0 films" in n for n in report.notes)


def test_bank_as_input_bundle(bank_input_bundle: Path) -> None:
    report = compare(bank_input_bundle, ["onnxruntime", "torch"], ["fp32"])
    assert isinstance(report, ParityReport) and report.passed, report.failures
    assert [r.name for r in report.rows] == ["onnxruntime/fp32", "torch/fp32"]
