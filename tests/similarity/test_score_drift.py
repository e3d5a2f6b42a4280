"""`salad score --drift` and the DriftGuard API: score and style checks beside the scores, never a change to either."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from salad.errors import BundleError
from salad.imageio import read_image
from salad.onsite.drift import DriftGuard
from salad.runtime import Scorer
from tests.conftest import SAMPLE_EVAL, check_json_schema
from tests.runtime.test_cli import run_python, salad_score
from tests.similarity.conftest import NIH_NORMAL, films


def test_drift_never_changes_a_score_or_a_label(attached_bundle: Path, tmp_path: Path) -> None:
    paths = [*films(SAMPLE_EVAL / "normal", 20), *films(SAMPLE_EVAL / "pneumonia", 20), *films(NIH_NORMAL, 30)]
    plain, drifted = tmp_path / "plain.json", tmp_path / "drift.json"
    a = salad_score(attached_bundle, *paths, "--json", plain)
    b = salad_score(attached_bundle, *paths, "--json", drifted, "--drift", "--drift-window", "20")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    rows_a, body_b = json.loads(plain.read_text()), check_json_schema("score", json.loads(drifted.read_text()))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "ms"} for r in rows]  # noqa: E731 - timings differ
    assert strip(rows_a["results"]) == strip(body_b["results"]) and rows_a["threshold"] == body_b["threshold"]
    drift = body_b["drift"]
    assert drift["call"]["n"] == 70 and [w["n"] for w in drift["windows"]] == [20, 20, 20, 10]
    assert set(drift["call"]["checks"]) == {"score", "brighter", "darker", "style"} and drift["checks_off"] == {}
    assert "drift (all films)" in b.stderr and "drift" not in a.stderr
    # the Python API gives the same verdicts, and scoring after it is unchanged too
    guard = DriftGuard.from_bundle(attached_bundle)
    with Scorer.from_bundle(attached_bundle) as scorer:
        with guard.watching(scorer) as watch:
            scorer.score(paths)
        again = [r.to_dict() for r in scorer.score(paths)]  # after the block: the guard no longer listens
    report = watch.report(window=20)
    assert report is not None and not watch.skipped and len(watch.scores) == 70
    for name in ("score", "brighter", "darker", "style"):
        assert report.call.checks[name].statistic == pytest.approx(drift["call"]["checks"][name]["statistic"])
    assert strip(again) == strip(rows_a["results"])


def test_the_score_check_passes_its_own_site_and_flags_a_shift_of_every_film(attached_bundle: Path) -> None:
    """Calibrated on the run's validation normals (stored by export): those films pass; the same scores moved up do not.

    (The tiny test model is no detector, so the shift is applied to its scores, as a site change that moves every film would.)
    """
    guard = DriftGuard.from_bundle(attached_bundle)
    normal = [read_image(p) for p in films(SAMPLE_EVAL / "normal", 40)]
    with Scorer.from_bundle(attached_bundle) as scorer:
        plain = np.array([r.scores[guard.score_name] for r in scorer.score(normal)])
    assert guard.score is not None and guard.score.films == 40
    assert not guard.check(plain, normal).call.checks["score"].warn
    spread = float(np.subtract(*np.percentile(plain, [75, 25])))
    flagged = guard.check(plain + 3 * spread, normal).call
    assert flagged.warn and flagged.checks["score"].warn, flagged


def test_the_exposure_checks_pass_the_site_and_flag_darker_and_brighter_films(attached_bundle: Path) -> None:
    """A gamma change of every film moves its exposure as the detector sees it; the matching one-sided check flags it."""
    guard = DriftGuard.from_bundle(attached_bundle)
    normal = [read_image(p) for p in films(SAMPLE_EVAL / "normal", 40)]
    scores = np.zeros(len(normal))  # the score check is not under test here
    same = guard.check(scores, normal).call.checks
    dark = guard.check(scores, [f**1.6 for f in normal]).call.checks
    bright = guard.check(scores, [f**0.6 for f in normal]).call.checks
    assert not same["brighter"].warn and not same["darker"].warn
    assert dark["darker"].warn and not dark["brighter"].warn and dark["darker"].statistic < same["darker"].statistic
    assert bright["brighter"].warn and not bright["darker"].warn


def test_drift_on_a_console_without_torch_or_onnx(attached_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "console.json"
    body = (
        "from salad.onsite.score import score_command\n"
        f"try:\n    score_command(args=[{str(attached_bundle)!r}, {str(NIH_NORMAL)!r}, '--drift', '--json', {str(out)!r}], "
        "prog_name='salad score')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "print('loaded:', sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'onnx', 'onnxruntime'}))\n"
    )
    proc = run_python(body, blocked=("torch", "onnx"))
    assert proc.returncode == 0, proc.stderr
    assert "loaded: ['onnxruntime']" in proc.stdout
    assert json.loads(out.read_text())["drift"]["call"]["n"] == 496


def test_drift_without_an_attached_estimator_runs_the_score_check_and_says_why_style_is_off(bundle_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.json"
    proc = salad_score(bundle_copy, SAMPLE_EVAL, "--drift", "--json", out)
    assert proc.returncode == 0, proc.stderr
    drift = check_json_schema("score", json.loads(out.read_text()))["drift"]
    assert set(drift["call"]["checks"]) == {"score", "brighter", "darker"}
    assert "no similarity estimator attached" in drift["checks_off"]["style"]
    assert "style check off" in proc.stderr and "salad similarity attach" in proc.stderr


def test_a_guard_with_no_check_that_can_run_is_refused(bundle_copy: Path) -> None:
    from salad.drift import DriftPolicy
    from salad.preprocess import PreprocessConfig

    with pytest.raises(BundleError, match="no drift check can run.*fewer than 20"):
        DriftGuard(bundle_copy, DriftPolicy(), {}, "knn_angle", PreprocessConfig(), None,
                   {"score": "the run had 8 validation normal film(s), fewer than 20"})
