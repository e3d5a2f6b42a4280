"""The `cpu-ar` preset: a folder of normals plus a folder of confirmed abnormal films, trained as the paper's AR setting."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from salad.errors import DataError  # noqa: E402
from salad.train.evaluate import load_run  # noqa: E402
from salad.train.trainer import PRESETS, load_checkpoint, train_run  # noqa: E402

from ..conftest import SAMPLE_EVAL, SAMPLE_TRAIN  # noqa: E402


def _site(root: Path) -> Path:
    """site/normal (200 normal films) and site/pneumonia (40 confirmed abnormal films), as links to the sample."""
    for name, src in (("normal", SAMPLE_TRAIN), ("pneumonia", SAMPLE_EVAL / "pneumonia")):
        (root / name).mkdir(parents=True)
        for f in sorted(src.iterdir()):
            if f.suffix.lower() in (".png", ".jpeg", ".jpg"):
                os.symlink(f, root / name / f.name)
    return root


def _small(**changes: object) -> object:
    """cpu-ar with a seconds-sized schedule and network; everything else (method, ratio, scoring) is the preset's."""
    return dataclasses.replace(PRESETS["cpu-ar"], width=0.125, pretrain_epochs=1, rounds=1, round_epochs=1, score_k=20,
                               threads=2, **changes)


def test_cpu_ar_is_salad_with_known_anomalies_and_the_full_progressive_schedule() -> None:
    cfg = PRESETS["cpu-ar"]
    assert cfg.method == "salad" and cfg.known_anomaly_ratio == pytest.approx(0.10)
    assert cfg.rounds == 10 and cfg.size == PRESETS["cpu"].size and cfg.score == PRESETS["cpu"].score


def test_abnormal_films_train_without_label_leave_the_bank_and_label_validation(tmp_path: Path) -> None:
    site = _site(tmp_path / "site")
    out = tmp_path / "run"
    summary = train_run(site, out, _small())  # type: ignore[arg-type]
    state = load_checkpoint(out / "checkpoint.pt")
    labels = state["bank_labels"]
    n_normal = int((labels == 0).sum())
    assert int((labels == 1).sum()) == round(0.10 * n_normal / 0.90)  # the preset's ratio of the training set
    assert len(load_run(out).bank) == n_normal  # their bank rows are dropped before scoring
    validation = json.loads((out / "validation.json").read_text())
    assert validation["n_abnormal"] > 0 and validation["n_normal"] > 0 and summary["val_auc"] is not None
    trained = {Path(line.split(",")[0]).name for line in (out / "train.csv").read_text().splitlines()[1:]}
    validated = {Path(line.split(",")[0]).name for line in (out / "val.csv").read_text().splitlines()[1:]}
    assert not trained & validated  # no film both trains and validates


def test_cpu_ar_without_enough_abnormal_films_says_what_it_needs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"needs \d+ abnormal films, found 0 outside validation.*normal/ and a folder"):
        train_run(SAMPLE_TRAIN, tmp_path / "run", _small())  # type: ignore[arg-type]
    assert not (tmp_path / "run").exists()
