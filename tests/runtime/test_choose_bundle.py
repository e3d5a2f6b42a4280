"""`salad choose-bundle`: candidate bundles ranked by how far a site's films lie from each one's memory bank."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from salad.cli import main
from salad.errors import ConfigError
from salad.imageio import read_image
from salad.onsite.choose import rank_bundles
from salad.runtime import Scorer
from tests.conftest import SAMPLE_EVAL, SAMPLE_TRAIN, check_json_schema


def test_rank_is_ascending_and_refuses_no_candidates(tiny_bundle: Path, slim_bundle: Path) -> None:
    """Two exports of one run score alike; the order is by mean score. (Which bundle wins across sites is measured in
    benchmarks/results/similarity/: tiny test runs are too collapsed for another site's films to pass export's parity.)"""
    films = [read_image(p) for p in sorted((SAMPLE_EVAL / "pneumonia").iterdir())[:12]]
    fits = rank_bundles(films, {"full": tiny_bundle, "slim": slim_bundle})
    assert {f.candidate for f in fits} == {"full", "slim"} and fits[0].mean_score <= fits[1].mean_score
    assert fits[0].mean_score == pytest.approx(fits[1].mean_score, abs=1e-6)
    with pytest.raises(ConfigError, match="no candidates"):
        rank_bundles(films, {})


def test_the_command_reports_each_bundles_own_scores(tiny_bundle: Path, slim_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "choice.json"
    done = CliRunner().invoke(main, ["choose-bundle", "--target", str(SAMPLE_EVAL), "--candidate", f"kermany={tiny_bundle}",
                                     "--candidate", f"slim={slim_bundle}", "--json", str(out)])
    assert done.exit_code == 0, done.output
    body = check_json_schema("bundle-choice", json.loads(out.read_text()))
    assert body["films"] == 80 and body["skipped"] == []
    means = [r["mean_score"] for r in body["ranking"]]
    assert means == sorted(means) and "mean score" in done.output
    row = next(r for r in body["ranking"] if r["candidate"] == "kermany")
    films = sorted(p for d in ("normal", "pneumonia") for p in (SAMPLE_EVAL / d).iterdir())
    with Scorer.from_bundle(tiny_bundle) as scorer:
        results = scorer.score(films)
    assert row["mean_score"] == pytest.approx(np.mean([r.scores[scorer.threshold_score] for r in results]), abs=1e-6)
    assert row["flagged"] == pytest.approx(np.mean([r.label == 1 for r in results]))
    assert row["validation_normal_median"] is not None


def test_bad_candidate_syntax_is_one_line(tiny_bundle: Path) -> None:
    done = CliRunner().invoke(main, ["choose-bundle", "--target", str(SAMPLE_TRAIN), "--candidate", "no-equals-sign"])
    assert done.exit_code != 0 and "expected NAME=PATH" in done.output


def test_by_takes_only_its_own_options(tiny_bundle: Path) -> None:
    """--by style runs the estimator only, --by score the bundles: the other method's options are a usage error (exit 2)."""
    ranking = ["choose-bundle", "--target", str(SAMPLE_TRAIN), "--candidate", f"tiny={tiny_bundle}"]
    cases = {
        ("--by", "style"): "--by style needs --estimator EST",
        ("--by", "style", "--estimator", str(tiny_bundle), "--runtime", "torch"): "--runtime given with --by style",
        ("--estimator", str(tiny_bundle)): "--estimator and --plot are for --by style",
    }
    for extra, message in cases.items():
        done = CliRunner().invoke(main, [*ranking, *extra])
        assert done.exit_code == 2 and message in done.output, (extra, done.output)
