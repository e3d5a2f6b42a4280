"""A short real training run on shipped normal films detects held-out pneumonia films."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402

from salad.cli import main  # noqa: E402

from ..conftest import SAMPLE_EVAL, SAMPLE_TRAIN  # noqa: E402


@pytest.mark.slow
def test_train_then_evaluate_beats_chance_clearly(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train = CliRunner().invoke(
        main,
        ["train", "--data", str(SAMPLE_TRAIN), "--out", str(run), "--preset", "cpu", "--size", "64",
         "--pretrain-epochs", "10", "--rounds", "3", "--round-epochs", "10", "--k", "20", "--seed", "0"],
    )
    assert train.exit_code == 0, train.output
    result = CliRunner().invoke(
        main,
        ["evaluate", str(run), "--labelled", str(SAMPLE_EVAL), "--json", str(tmp_path / "eval.json"), "--plots", str(tmp_path / "plots")],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval.json").read_text())
    operating = json.loads((run / "config.json").read_text())["train"]["score"]  # the CPU preset's choice
    assert metrics["n_normal"] == 40 and metrics["n_abnormal"] == 40 and metrics["score"] == operating
    assert set(metrics["outputs"]) == {"score", "knn_angle"} and metrics["outputs"][operating]["auc"] == metrics["auc"]
    # 40 normal vs 40 pneumonia films of patients never seen in training: chance is 0.5.
    assert metrics["auc"] >= 0.7, metrics
    assert metrics["auprc"] > 0.6, metrics
    for name in ("roc.png", "pr.png", "histogram.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 5_000
