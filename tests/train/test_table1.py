"""benchmarks/table1.py: one real cell end to end (tiny schedule, shipped films), resumability and the markdown table."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402

from ..conftest import REPO, SAMPLE_EVAL, SAMPLE_TRAIN  # noqa: E402

TINY = {"width": 0.125, "pretrain_epochs": 1, "rounds": 1, "round_epochs": 1, "score_k": 20, "batch_size": 16}


def _table1() -> ModuleType:
    spec = importlib.util.spec_from_file_location("table1", REPO / "benchmarks" / "table1.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["table1"] = module
    spec.loader.exec_module(module)
    return module


def _csv(path: Path, rows: list[tuple[Path, int]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "patient_id"])
        w.writerows([str(p), label, p.stem] for p, label in rows)
    return path


def _films(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpeg", ".jpg"))


@pytest.fixture(scope="module")
def cell(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, Path, dict]:  # type: ignore[type-arg]
    """One salad-ar10 cell trained on the shipped films: 200 normals + 40 pneumonia to draw from, tested on 80."""
    t1 = _table1()
    tmp = tmp_path_factory.mktemp("table1")
    train = _csv(tmp / "train.csv", [(p, 0) for p in _films(SAMPLE_TRAIN)] + [(p, 1) for p in _films(SAMPLE_EVAL / "pneumonia")])
    test = _csv(tmp / "test.csv", [(p, 0) for p in _films(SAMPLE_EVAL / "normal")] + [(p, 1) for p in _films(SAMPLE_EVAL / "pneumonia")])
    out = tmp / "results"
    record = t1.run_cell("kermany", "salad-ar10", 0, out, tmp / "work", 2, splits=(train, test), overrides=TINY)
    return t1, out, record


def test_a_cell_records_auc_and_auprc_of_both_outputs_beside_floors_schedule_and_machine(cell: tuple) -> None:  # type: ignore[type-arg]
    _, out, record = cell
    saved = json.loads((out / "kermany-salad-ar10-s0.json").read_text())
    assert saved == record
    assert record["method"] == "salad" and record["known_anomaly_ratio"] == pytest.approx(0.10)
    assert record["n_train_anomalous"] > 0 and record["n_normal"] == 40 and record["n_abnormal"] == 40
    for output in ("score", "knn_angle"):
        assert 0.0 <= record["test"][output]["auc"] <= 1.0 and 0.0 < record["test"][output]["auprc"] <= 1.0
    assert {"untrained-weights", "thumbnail8-knn"} <= set(record["floors"])
    assert all({"auc", "auprc"} == set(v) for v in record["floors"].values())
    assert record["schedule"] == {"pretrain_epochs": 1, "rounds": 1, "round_epochs": 1, "epochs": 2, "batch_size": 16,
                                  "size": 64, "width": 0.125}
    assert record["machine"]["cores"] >= 1 and record["train_seconds"] > 0


def test_a_cell_whose_json_exists_is_not_trained_again(cell: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    t1, out, record = cell
    again = t1.run_cell("kermany", "salad-ar10", 0, out, tmp_path / "work", 2, splits=(Path("/nonexistent.csv"),) * 2,
                        overrides=TINY)
    assert again == record and not (tmp_path / "work").exists()


def test_table_sets_cells_beside_the_paper_and_marks_missing_ones(cell: tuple) -> None:  # type: ignore[type-arg]
    t1, out, record = cell
    text = t1.write_table(out)
    assert (out / "table1.md").read_text() == text
    auc = record["test"][record["operating_score"]]["auc"]
    assert f"| salad-ar10 | 10 | {auc:.3f} (1 seed) |" in text
    assert "| memdae-ar0 | 0 | not run | not run | not run | 0.878 / 0.920 |" in text
    assert "0.917 / 0.967" in text and "undecided: MemDAE AR 0 has 0 of 3 seeds" in text


def test_margin_rule_needs_three_seeds_and_a_margin_over_memdae(cell: tuple) -> None:  # type: ignore[type-arg]
    t1, _, record = cell
    memdae = [dict(record, row="memdae-ar0", seed=s) for s in (0, 1, 2)]
    same = [dict(record, seed=s) for s in (0, 1, 2)]  # SALAD AR 10 level with MemDAE: no margin, so no win
    verdict = t1.decision(memdae + same, "kermany")
    assert "salad-ar10:" in verdict and "does not beat MemDAE AR 0 + margin" in verdict
    assert "salad-ar5: 0 of 3 seeds, undecided" in verdict


def test_plan_puts_the_decisive_cells_first_and_covers_every_row() -> None:
    t1 = _table1()
    cells = t1.plan()
    assert cells[:6] == [("kermany", r, s) for s in (0, 1, 2) for r in ("memdae-ar0", "salad-ar10")]
    assert len(cells) == len(set(cells)) == 2 * 10 * 3 + 2
    assert dataclasses.replace(t1.cell_config("salad-no-mse-ar15", 2, 1)).known_anomaly_ratio == pytest.approx(0.15)


def test_cells_measure_the_paper_method_without_the_presets_tilt() -> None:
    t1 = _table1()
    for row in ("memdae-ar0", "salad-ar10", "salad-no-agg-ar15", "salad-growk-ar10"):  # as every committed cell ran
        cfg = t1.cell_config(row, 0, 1)
        assert cfg.centre_tilt == 0 and cfg.model_config().output_dim == cfg.model_config().embedding_dim, row


def test_unknown_cell_is_refused_before_any_training(tmp_path: Path) -> None:
    t1 = _table1()
    result = CliRunner().invoke(t1.main, ["run", "--out", str(tmp_path), "--only", "kermany/salad-ar20/0"])
    assert result.exit_code == 2 and "cell kermany/salad-ar20" in result.output
