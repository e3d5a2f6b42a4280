"""calibrate_bundle on a real tiny bundle: the manifest it writes, the report, what it refuses, the accuracy-bounded loop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from salad.calibration import calibrate_bundle
from salad.calibration.graphs import MIN_INT8_CHANNELS
from salad.data import list_hash
from salad.errors import CalibrationError, CalibrationRejectedError
from salad.manifest import DEFAULT_TOLERANCES, PRECISIONS, read_manifest, sha256_file
from salad.runtime import Scorer
from tests.calibration.conftest import LATENCY_RUNS, SAMPLE_EVAL, SAMPLE_TRAIN, Calibrated
from tests.conftest import use_fixture_tolerances

VARIANTS = ("fp16", "int8")


# -- what a calibrated bundle holds ----------------------------------------------------------------------


def test_manifest_gains_both_variants_and_round_trips(calibrated: Calibrated) -> None:
    manifest = read_manifest(calibrated.path, verify=True)  # every sha256, the new files included
    assert manifest.precisions() == list(PRECISIONS)
    raw = json.loads((calibrated.path / "manifest.json").read_text())
    assert read_manifest(calibrated.path).to_dict() == raw
    for precision in VARIANTS:
        for name in ("encoder", "model"):
            spec = manifest.graph(name, precision)
            fp32 = manifest.graph(name)
            assert spec.file == f"{name}.{precision}.onnx" and spec.precision == precision and spec.opset >= 17
            assert spec.sha256 == sha256_file(calibrated.path / spec.file)
            assert spec.inputs == fp32.inputs and spec.outputs == fp32.outputs
            assert all(t.dtype == "float32" for t in [*spec.inputs, *spec.outputs])
            assert {"calibration_method", "calibration_images", "calibration_list_sha256", "layers_in_float"} <= spec.details.keys()
        assert set(manifest.parity[precision]) == set(DEFAULT_TOLERANCES["fp32"])
        assert manifest.calibration[precision]["report"] == f"calibration/{precision}.json"
    int8 = manifest.graph("model", "int8").details
    assert int8["calibration_method"] == "minmax" and int8["calibration_images"] == 200
    assert int8["calibration_list_sha256"] == list_hash(sorted(SAMPLE_TRAIN.glob("*.jpeg"))) == manifest.calibration["int8"]["list_sha256"]
    assert int8["layers_in_float"] and "weights" in int8 and int8["activations"].startswith("int8 symmetric")
    fp16 = manifest.graph("model", "fp16").details
    assert fp16["calibration_images"] == 0 and "ReduceL2" in " ".join(fp16["layers_in_float"])
    assert manifest.graph("scorer").precision == "fp32" and "scorer.fp16" not in manifest.graphs


def test_variants_keep_the_detector_on_the_labelled_sample(calibrated: Calibrated) -> None:
    """Accepted variants meet the tolerances the bundle carries (the fixtures', see tests/conftest.py)."""
    for precision in ("fp16", "int8"):
        report = calibrated.reports[precision]
        bounds = read_manifest(calibrated.path).parity[precision]
        assert report.tolerances == bounds
        assert report.accepted and report.parity["passed"], report.failures
        assert report.parity["images"] == {"reference": 32, "data": 80}
        assert report.label_agreement is not None and report.label_agreement >= bounds["label_agreement"]
        assert report.metric("delta_auc") is not None and abs(report.metric("delta_auc")) <= bounds["delta_auc"]  # type: ignore[arg-type]
        assert report.reference_films["images"] == 32 and report.reference_films["delta_auc"] is not None


def test_reports_hold_accuracy_layer_errors_sizes_and_latency(calibrated: Calibrated) -> None:
    for precision in VARIANTS:
        data = json.loads((calibrated.path / "calibration" / f"{precision}.json").read_text())
        assert data["accepted"] is True and data["precision"] == precision
        assert set(data["accuracy"]) >= {"delta_auc", "delta_auprc", "label_agreement", "max_abs_score_diff", "p99_abs_score_diff"}
        for graph in ("encoder", "model"):
            for p in ("fp32", precision):
                for batch in ("1", "8"):
                    timed = data["latency"][f"{graph}.{p}"][batch]
                    assert timed["runs"] == LATENCY_RUNS and 0 < timed["min_ms"] <= timed["median_ms"]
        assert data["sizes"][f"encoder.{precision}.onnx"] < data["sizes"]["encoder.onnx"]
        assert {"encoder@1", "encoder@8", "model@1", "model@8"} <= set(data["speedup"])
        assert data["environment"]["cores"] and "int8_flags" in data["environment"]
        text = (calibrated.path / "calibration" / f"{precision}.md").read_text()
        assert text.startswith(f"# Calibration of `both`: {precision} accepted") and "## ONNX Runtime CPU latency (ms)" in text
    errors = json.loads((calibrated.path / "calibration" / "int8.json").read_text())["layer_errors"]
    quantized = [e for e in errors if e["quantized"]]
    assert quantized and all(e["weight_sqnr_db"] > 20 and e["input_sqnr_db"] > 10 for e in quantized)
    assert all(e["reason_float"] and e["weight_sqnr_db"] is None for e in errors if not e["quantized"])
    float_layers = [e for e in errors if not e["quantized"]]
    assert float_layers[-1]["name"] == errors[-1]["name"], "the projection to the embedding stays float"
    assert all(min(e["channels_in"], e["channels_out"]) < MIN_INT8_CHANNELS for e in float_layers[:-1])


@pytest.mark.parametrize("precision", VARIANTS)
def test_variants_score_on_onnxruntime_cpu(precision: str, calibrated: Calibrated) -> None:
    films = sorted((SAMPLE_EVAL / "normal").glob("*.jpeg"))[:2] + sorted((SAMPLE_EVAL / "pneumonia").glob("*.jpeg"))[:2]
    with Scorer.from_bundle(calibrated.path, runtime="onnxruntime", precision="fp32") as ref, \
         Scorer.from_bundle(calibrated.path, runtime="onnxruntime", precision=precision, device="cpu") as variant:
        want, got = ref.score(films), variant.score(films)
    assert all(r.ok for r in got) and [r.label for r in got] == [r.label for r in want]
    assert np.allclose([r.score for r in got], [r.score for r in want], atol=0.05)


# -- refusals --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("precision", "options", "message"),
    [
        ("fp32", {}, r"precision 'fp32': calibration makes \['fp16', 'int8'\]"),
        ("int8", {"method": "kl"}, r"--method 'kl': expected one of \['minmax', 'entropy', 'percentile'\]"),
        ("int8", {"max_auc_drop": 0.01}, r"--max-auc-drop needs --labelled LABELLED"),
        ("int8", {"max_auc_drop": 1.5, "labelled": SAMPLE_EVAL}, r"--max-auc-drop 1.5: expected a number in \[0, 1\)"),
        ("int8", {"labelled": "/no/such/folder"}, r"--labelled /no/such/folder: no such file or folder"),
    ],
)
def test_bad_requests_are_refused_before_any_work(precision: str, options: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match=message):
        calibrate_bundle(tmp_path / "not-even-a-bundle", precision, SAMPLE_TRAIN, **options)


def test_bounded_mode_needs_both_classes(bundle_copy: Path) -> None:
    with pytest.raises(CalibrationError, match=r"--labelled .*normal holds only label-0 films; ΔAUC needs normal and abnormal ones"):
        calibrate_bundle(bundle_copy, "int8", SAMPLE_TRAIN, max_auc_drop=0.005, labelled=SAMPLE_TRAIN)


def test_int8_without_films_or_with_too_few_leaves_the_bundle_alone(bundle_copy: Path) -> None:
    before = (bundle_copy / "manifest.json").read_bytes()
    with pytest.raises(CalibrationError, match=r"no fallback to random or synthetic data"):
        calibrate_bundle(bundle_copy, "int8")
    with pytest.raises(
        CalibrationError,
        match=r"eval: found 40 normal film\(s\) \(40 abnormal film\(s\) in it are not used\); int8 calibration needs at least 100",
    ):
        calibrate_bundle(bundle_copy, "int8", SAMPLE_EVAL)
    assert (bundle_copy / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in bundle_copy.iterdir()) == sorted(["checkpoint.pt", "encoder.onnx", "manifest.json", "model.onnx",
                                                                     "reference.npz", "scorer.onnx"])


def test_no_code_path_draws_random_numbers(bundle_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """int8 calibration (here per-tensor, entropy) succeeds with every numpy random generator disabled."""

    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("calibration drew random numbers")

    for name in ("rand", "randn", "random", "random_sample", "normal", "uniform", "standard_normal", "default_rng", "randint"):
        monkeypatch.setattr(np.random, name, refuse)
    use_fixture_tolerances(bundle_copy, ("int8",))  # accepted on any CPU: the tiny model's int8 ΔAUC varies with it
    report = calibrate_bundle(bundle_copy, "int8", SAMPLE_TRAIN, method="entropy", per_channel=False, films=100, latency_runs=1)
    assert report.accepted and report.calibration["images"] == 100
    assert read_manifest(bundle_copy).graph("model", "int8").details["weights"] == "int8 symmetric, per tensor"


def test_a_variant_outside_its_tolerances_is_not_added(bundle_copy: Path, tmp_path: Path) -> None:
    manifest = read_manifest(bundle_copy)
    manifest.parity["fp16"] = {**DEFAULT_TOLERANCES["fp32"], "max_abs_score_diff": 1e-9}  # tolerances a bundle already has are kept
    manifest.write(bundle_copy)
    before = (bundle_copy / "manifest.json").read_bytes()
    with pytest.raises(CalibrationError) as info:
        calibrate_bundle(bundle_copy, "fp16", report_dir=tmp_path / "reports", latency_runs=1)
    assert "the fp16 variant was not added" in str(info.value)
    assert "fp16: max_abs_score_diff = " in str(info.value) and "> tolerance 1e-09" in str(info.value)
    assert "The bundle is unchanged" in str(info.value)
    assert isinstance(info.value, CalibrationRejectedError) and info.value.exit_code == 3  # checks ran and failed
    worst = next(f for f in info.value.failures if f.get("metric") == "max_abs_score_diff")
    assert worst["precision"] == "fp16" and worst["tolerance"] == 1e-9 and worst["value"] > 1e-9 and not worst["passed"]
    assert (bundle_copy / "manifest.json").read_bytes() == before and not list(bundle_copy.glob("*.fp16.onnx"))
    assert json.loads((tmp_path / "reports" / "fp16.rejected.json").read_text())["accepted"] is False  # never over an accepted report
    assert not (tmp_path / "reports" / "fp16.json").exists()
    assert not [p for p in bundle_copy.parent.iterdir() if ".calibrate-" in p.name], "the staging copy was left behind"
    report = calibrate_bundle(bundle_copy, "fp16", raise_on_failure=False, latency_runs=1)  # e.g. for a demo's summary
    assert report.accepted is False and report.failures[0].startswith("fp16: max_abs_score_diff = ")
    assert (bundle_copy / "manifest.json").read_bytes() == before and not list(bundle_copy.glob("*.fp16.onnx"))


def test_an_existing_variant_is_replaced_only_with_force(calibrated: Calibrated, tmp_path: Path) -> None:
    import shutil

    bundle = Path(shutil.copytree(calibrated.path, tmp_path / "both"))
    int8_sha = sha256_file(bundle / "model.int8.onnx")
    with pytest.raises(CalibrationError, match=r"already has the fp16 variant \(encoder.fp16, model.fp16\); pass --force"):
        calibrate_bundle(bundle, "fp16")
    report = calibrate_bundle(bundle, "fp16", force=True, latency_runs=1)
    manifest = read_manifest(bundle, verify=True)  # the rebuild never wrote through to the old files
    assert report.accepted and manifest.precisions() == list(PRECISIONS)
    assert sha256_file(bundle / "model.int8.onnx") == int8_sha
    assert sha256_file(calibrated.path / "model.fp16.onnx") == read_manifest(calibrated.path).graph("model", "fp16").sha256


# -- accuracy-bounded mode ------------------------------------------------------------------------------


def test_accuracy_bounded_mode_on_a_real_bundle(bundle_copy: Path, calibrated: Calibrated) -> None:
    """Bound below what plain int8 achieves, so the loop must keep layers float (or fail naming the best figure)."""
    first = abs(calibrated.reports["int8"].metric("delta_auc") or 0.0)
    bound = first / 2 if first > 0 else 0.0
    try:
        report = calibrate_bundle(bundle_copy, "int8", SAMPLE_TRAIN, labelled=SAMPLE_EVAL, max_auc_drop=bound, latency_runs=1)
    except CalibrationError as exc:
        assert f"no variant kept |ΔAUC| ≤ {bound:g} and every tolerance" in str(exc) and "the best reached ΔAUC" in str(exc)
        assert not list(bundle_copy.glob("*.int8.onnx"))
        return
    assert report.accepted and abs(report.metric("delta_auc")) <= bound  # type: ignore[arg-type]
    assert report.attempts[-1].passed and all(not a.passed for a in report.attempts[:-1])
    searched = report.attempts[-1].kept_float
    assert len(searched) == len(report.attempts) - 1 and (first <= bound or searched)
    assert searched == report.search_order[: len(searched)], "layers are kept float noisiest first"
    if report.search_order:  # the ranking comes from the plain int8 encoder's per-layer errors
        plain = [e for e in calibrated.reports["int8"].layer_errors if e.quantized]
        assert report.search_order == [e.name for e in sorted(plain, key=lambda e: -e.noise)]
    details = read_manifest(bundle_copy).graph("model", "int8").details
    assert set(searched) <= set(details["layers_in_float"])
    assert "## Accuracy-bounded search" in (bundle_copy / "calibration" / "int8.md").read_text()


def _float_by_rule(bundle: Path, min_channels: int) -> set[str]:
    """The layers int8 keeps float before any search: too few channels, and the projection to the embedding."""
    import onnx

    from salad.calibration.graphs import weighted_layers

    layers = weighted_layers(onnx.load(str(bundle / "encoder.onnx")))
    return {layer.name for layer in layers if layer.channels < min_channels} | {layers[-1].name}


def _fake_parity(delta_auc_for: Any, by_rule: set[str]) -> Any:
    """A stand-in for the parity harness: ΔAUC as a function of how many layers the search kept float."""
    from salad.runtime.parity import METRICS, Check, ParityReport, ParityRow

    def fake(root: Path, precision: str, labelled: Any, threads: int | None = None) -> ParityReport:
        details = read_manifest(root, verify=False).graph("model", precision).details
        kept = sum(1 for n in details["layers_in_float"] if n not in by_rule)
        metrics: dict[str, float | None] = dict.fromkeys(METRICS, 0.0)
        metrics.update(label_agreement=1.0, spearman=1.0, embedding_cosine_min=1.0, embedding_cosine_mean=1.0)
        metrics["delta_auc"] = delta_auc_for(kept)
        row = ParityRow("onnxruntime", precision, "cpu", 112, metrics, [Check(k, metrics[k], None, b) for k, b in METRICS.items()])
        return ParityReport(root, "reference.npz+torch", {"reference": 32, "data": 80}, 0.5, "score", [row])

    return fake


def test_bounded_loop_keeps_noisiest_layers_float_until_the_bound_holds(bundle_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import salad.calibration.search as cal

    by_rule = _float_by_rule(bundle_copy, MIN_INT8_CHANNELS)
    monkeypatch.setattr(cal, "_parity", _fake_parity(lambda kept: -0.010 + 0.004 * kept, by_rule))  # fits from 2 layers on
    report = calibrate_bundle(bundle_copy, "int8", SAMPLE_TRAIN, labelled=SAMPLE_EVAL, max_auc_drop=0.003, latency_runs=1)
    assert [len(a.kept_float) for a in report.attempts] == [0, 1, 2] and [a.passed for a in report.attempts] == [False, False, True]
    assert report.attempts[0].failures == ["|ΔAUC| = 0.01 > --max-auc-drop 0.003 (--max-auc-drop 0.01 would pass)"]
    measured = [e for e in report.layer_errors if e.name not in by_rule]
    assert report.search_order == [e.name for e in sorted(measured, key=lambda e: -e.noise)]  # noisiest first
    assert report.attempts[-1].kept_float == report.search_order[:2]
    assert {n for n, why in report.layers_in_float.items() if "accuracy-bounded" in why} == set(report.search_order[:2])
    assert {e.name for e in report.layer_errors if not e.quantized} == by_rule | set(report.search_order[:2])
    assert read_manifest(bundle_copy).calibration["int8"]["layers_in_float"] == list(report.layers_in_float)


def test_bounded_loop_fails_with_the_best_figure_when_nothing_fits(bundle_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx

    import salad.calibration.search as cal
    from salad.calibration.graphs import weighted_layers

    by_rule = _float_by_rule(bundle_copy, MIN_INT8_CHANNELS)  # the 3 widest layers before the projection stay eligible
    eligible = len(weighted_layers(onnx.load(str(bundle_copy / "encoder.onnx")))) - len(by_rule)
    assert eligible >= 3
    monkeypatch.setattr(cal, "_parity", _fake_parity(lambda kept: 0.02 - 0.001 * min(kept, 2), by_rule))
    with pytest.raises(CalibrationError) as info:
        calibrate_bundle(
            bundle_copy,
            "int8",
            SAMPLE_TRAIN,
            labelled=SAMPLE_EVAL,
            max_auc_drop=0.005,
            min_channels=MIN_INT8_CHANNELS,
            latency_runs=1,
        )
    text = str(info.value)
    assert "the int8 variant was not added" in text
    assert f"no variant kept |ΔAUC| ≤ 0.005 and every tolerance after {eligible} attempt(s)" in text
    assert "the best reached ΔAUC +0.018 with 2 extra layer(s) in float" in text and "The bundle is unchanged" in text
    assert not list(bundle_copy.glob("*.int8.onnx"))
    data = json.loads((bundle_copy / "calibration" / "int8.rejected.json").read_text())
    assert data["accepted"] is False and [len(a["kept_float"]) for a in data["attempts"]] == list(range(eligible))


# -- other bundle forms ---------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["external-bank", "bank-as-input"])
def test_other_bundle_forms_keep_their_bank(form: str, tiny_run: Path, tmp_path: Path) -> None:
    """A bank in bank.data stays there (stored once); a bank-as-input graph keeps its "bank" input."""
    import onnx

    from salad.export import export_bundle
    from salad.runtime import compare

    options: dict[str, Any] = {"external_data_threshold": 1} if form == "external-bank" else {"bank_as_input": True}
    bundle = Path(export_bundle(tiny_run, tmp_path / form, **options))
    calibrate_bundle(bundle, "fp16", latency_runs=1)
    manifest = read_manifest(bundle, verify=True)
    spec, fp32 = manifest.graph("model", "fp16"), manifest.graph("model")
    assert spec.external_data == fp32.external_data and spec.inputs == fp32.inputs
    proto = onnx.load(str(bundle / spec.file), load_external_data=False)
    if form == "external-bank":
        bank = next(t for t in proto.graph.initializer if t.name == manifest.bank.initializer)
        assert bank.data_location == onnx.TensorProto.EXTERNAL and spec.external_data == ["bank.data"]
        assert not bank.raw_data and {e.key: e.value for e in bank.external_data}["location"] == "bank.data"
    else:
        assert [i.name for i in proto.graph.input] == ["image", "bank"]
    report = compare(bundle, ["onnxruntime"], ["fp16"])
    assert report.passed, report.failures


def test_the_gate_is_every_cpu_runtime_installed_here(calibrated: Calibrated) -> None:
    """A variant is accepted only when ONNX Runtime and OpenVINO (both in the dev install) each meet its tolerances."""
    from salad.calibration.search import gate_runtimes

    assert gate_runtimes() == ["onnxruntime", "openvino"]
    for precision in VARIANTS:
        data = json.loads((calibrated.path / "calibration" / f"{precision}.json").read_text())
        gate = [n for n in data["notes"] if n.startswith("gate runtimes:")]
        assert len(gate) == 1 and "onnxruntime" in gate[0] and "openvino" in gate[0], data["notes"]
