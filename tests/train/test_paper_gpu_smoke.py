"""benchmarks/paper_gpu.sh's CPU smoke path: pack real films, train AR 0 and AR 10 %, export, evaluate, write the JSON."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from ..conftest import REPO, SAMPLE_EVAL, SAMPLE_TRAIN  # noqa: E402

SCRIPT = REPO / "benchmarks" / "paper_gpu.sh"
PACK = REPO / "benchmarks" / "make_paper_gpu_input.py"


def _films(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpeg", ".jpg"))


def _csv(path: Path, rows: list[tuple[Path, int]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "patient_id"])
        w.writerows([str(p), label, p.stem] for p, label in rows)
    return path


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT)], env={**os.environ, "PYTHON": sys.executable, **env}, capture_output=True,
                          text=True, timeout=1800)


def test_smoke_path_trains_both_ratios_exports_and_writes_the_result(tmp_path: Path) -> None:
    pneumonia = _films(SAMPLE_EVAL / "pneumonia")
    train = _csv(tmp_path / "train.csv", [(p, 0) for p in _films(SAMPLE_TRAIN)] + [(p, 1) for p in pneumonia[:20]])
    test = _csv(tmp_path / "test.csv", [(p, 0) for p in _films(SAMPLE_EVAL / "normal")] + [(p, 1) for p in pneumonia[20:]])
    archive = tmp_path / "films.npz.xz"
    packed = subprocess.run([sys.executable, str(PACK), "pack", "--train-csv", str(train), "--test-csv", str(test), "--out",
                             str(archive), "--normals", "60", "--abnormal", "20", "--test", "10"],
                            capture_output=True, text=True, timeout=600)
    assert packed.returncode == 0, packed.stderr
    assert archive.stat().st_size < 100 * 256 * 256  # 100 films, compressed below their raw 8-bit size

    done = _run({"SMOKE": "1", "INPUT": str(archive), "OUT": str(tmp_path / "out")})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["smoke"] is True and set(result["runs"]) == {"ar0", "ar01"}
    ar0, ar10 = result["runs"]["ar0"], result["runs"]["ar01"]
    assert ar0["n_train_anomalous"] == 0 and ar10["n_train_anomalous"] == round(0.1 * (ar10["n_train"] - ar10["n_train_anomalous"]) / 0.9)
    assert ar10["schedule"]["pretrain_epochs"] == 1 and ar10["schedule"]["size"] == 64 and ar10["schedule"]["device"] == "cpu"
    for run in (ar0, ar10):
        assert run["test"]["n_normal"] == 10 and run["test"]["n_abnormal"] == 10
        assert 0.0 <= run["test"]["auc"] <= 1.0 and "model" in run["bundle"]["graphs"]
    assert result["wall_seconds"] > 0


def test_missing_input_says_how_to_make_it(tmp_path: Path) -> None:
    done = _run({"SMOKE": "1", "INPUT": str(tmp_path / "absent.npz.xz"), "OUT": str(tmp_path / "out")})
    assert done.returncode == 1 and "make_paper_gpu_input.py pack" in done.stderr
