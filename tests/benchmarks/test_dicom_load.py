"""benchmarks/dicom_load.py: a tiny load (8 C-STOREs over 2 associations, kill -9, watch folder) writes its report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "dicom_load.py"


def test_tiny_dicom_load_run(bench_bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("pynetdicom", reason="salad serve needs the dicom extra")
    pytest.importorskip("data_store", reason="pydicom-data is not installed (pip install pydicom-data)")
    out = tmp_path / "dicom"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(bench_bundle), "--n", "8", "--associations", "2", "--kill-after", "2",
         "--watch-files", "4", "--paced-files", "3", "--paced-interval", "0.2", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "load.json").read_text(encoding="utf-8"))
    for phase, n in (("steady", 8), ("kill", 8), ("watch", 4), ("paced", 3)):
        assert report[phase]["rows"] == n and report[phase]["lost"] == report[phase]["duplicates"] == 0, report[phase]
    assert report["steady"]["acknowledged"] == 8 and report["steady"]["throughput_films_per_s"] > 0
    assert report["kill"]["acknowledged_scored_exactly_once"] == report["kill"]["acknowledged_before_kill"]
    assert "| steady | 8 | 8 | 0 | 0 | 0 |" in (out / "load.md").read_text(encoding="utf-8")
