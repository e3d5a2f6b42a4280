"""`salad score --drift` and the DriftGuard API: a report beside the scores, never a change to a score or a label."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from salad.runtime import Scorer
from salad.similarity.attach import DriftGuard
from tests.conftest import SAMPLE_EVAL
from tests.runtime.test_cli import assert_one_line_error, run_python, salad_score
from tests.similarity.conftest import NIH_NORMAL, films


def test_drift_never_changes_a_score_or_a_label(attached_bundle: Path, tmp_path: Path) -> None:
    paths = [*films(SAMPLE_EVAL / "normal", 20), *films(SAMPLE_EVAL / "pneumonia", 20), *films(NIH_NORMAL, 30)]
    plain, drifted = tmp_path / "plain.json", tmp_path / "drift.json"
    a = salad_score(attached_bundle, *paths, "--json", plain)
    b = salad_score(attached_bundle, *paths, "--json", drifted, "--drift", "--drift-window", "20")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    rows_a, body_b = json.loads(plain.read_text()), json.loads(drifted.read_text())
    strip = lambda rows: [{k: v for k, v in r.items() if k != "ms"} for r in rows]  # noqa: E731 - timings differ
    assert strip(rows_a["results"]) == strip(body_b["results"]) and rows_a["threshold"] == body_b["threshold"]
    drift = body_b["drift"]
    assert drift["call"]["n"] == 70 and [w["n"] for w in drift["windows"]] == [20, 20, 20, 10]
    assert "drift (all films)" in b.stderr and "drift" not in a.stderr
    # the Python API gives the same verdicts, and scoring after it is unchanged too
    guard = DriftGuard.from_bundle(attached_bundle)
    report, skipped = guard.check_files(paths, window=20)
    assert report is not None and not skipped
    assert report.call.statistic == pytest.approx(drift["call"]["statistic"])
    with Scorer.from_bundle(attached_bundle) as scorer:
        again = [r.to_dict() for r in scorer.score(paths)]
    assert strip(again) == strip(rows_a["results"])


def test_drift_on_a_console_without_torch_or_onnx(attached_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "console.json"
    body = (
        "from salad.runtime.cli import score_command\n"
        f"try:\n    score_command(args=[{str(attached_bundle)!r}, {str(NIH_NORMAL)!r}, '--drift', '--json', {str(out)!r}], "
        "prog_name='salad score')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "print('loaded:', sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'onnx', 'onnxruntime'}))\n"
    )
    proc = run_python(body, blocked=("torch", "onnx"))
    assert proc.returncode == 0, proc.stderr
    assert "loaded: ['onnxruntime']" in proc.stdout
    assert json.loads(out.read_text())["drift"]["call"]["n"] == 496


def test_drift_without_an_attached_estimator_fails_before_scoring(bundle_copy: Path) -> None:
    proc = salad_score(bundle_copy, SAMPLE_EVAL, "--drift")
    assert_one_line_error(proc, "no similarity estimator attached", "salad similarity attach")
