"""`salad train` prints a line per epoch (loss, learning rate, time) and the validation figure at the end; `-q` silences both."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402

from salad.cli import main  # noqa: E402

from ..conftest import SAMPLE_EVAL  # noqa: E402

ARGS = ["--size", "64", "--width", "0.125", "--pretrain-epochs", "3", "--rounds", "0", "--batch-size", "16", "--k", "5"]


def test_train_prints_a_line_per_epoch_and_the_validation_figure(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["train", "--data", str(SAMPLE_EVAL), "--out", str(tmp_path / "run"), *ARGS])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 3, result.output
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for i, (line, row) in enumerate(zip(lines, rows, strict=True), start=1):
        assert re.match(rf"epoch {i}/3  loss {row['loss']:.4f}  lr {row['lr']:.2e}  \d+\.\d s", line), line
    validation = json.loads((tmp_path / "run" / "validation.json").read_text())
    assert f"validation AUC {validation['auc']:.3f} on {validation['n_normal']} normal + {validation['n_abnormal']} abnormal" \
        in result.output


def test_quiet_training_prints_only_its_summary(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["-q", "train", "--data", str(SAMPLE_EVAL), "--out", str(tmp_path / "run"), *ARGS])
    assert result.exit_code == 0, result.output
    assert "epoch 1/3" not in result.output and "validation AUC" not in result.output
    assert json.loads(result.output.strip().splitlines()[-1])["epochs"] == 3
