"""benchmarks/scorer_scaling.py: a tiny run (two small banks) writes its JSON, markdown and plot."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "scorer_scaling.py"


def test_tiny_scorer_scaling_run(tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="building scorer graphs needs the train extra")
    methods = ["onnxruntime", "torch", "numpy"]
    if importlib.util.find_spec("faiss") is not None:
        methods += ["faiss-knn", "faiss+mean"]
    out = tmp_path / "ss"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--sizes", "300,1000", "--batches", "1,2", "--iters", "3", "--warmup", "1",
         "--k", "10", "--bandwidth-mib", "16", "--threads", "1", "--methods", ",".join(methods), "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(Path(f"{out}.json").read_text(encoding="utf-8"))
    assert [(r["n"], r["batch"]) for r in report["results"]] == [(300, 1), (300, 2), (1000, 1), (1000, 2)]
    for row in report["results"]:
        assert list(row["methods"]) == methods
        assert row["floor_ms"]["bandwidth"] > 0 and row["floor_ms"]["roofline"] >= row["floor_ms"]["bandwidth"]
        for name, entry in row["methods"].items():
            assert entry["n"] == 3 and entry["p50_ms"] > 0
            assert entry["max_abs_diff_vs_torch"]["knn_angle"] < 1e-4, name  # every method computes the same thing
            if name != "faiss-knn":
                assert entry["max_abs_diff_vs_torch"]["score"] < 1e-4, name
    assert report["bandwidth"]["floor_gb_per_s"] > 0 and report["sgemm_peak_gflops"] > 0
    assert report["acceptance"] is None  # only defined at N = 100,000
    markdown = Path(f"{out}.md").read_text(encoding="utf-8")
    assert "## Batch 1" in markdown and "faiss+mean adds that one full pass" in markdown
    assert Path(f"{out}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_method_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--methods", "annoy", "--out", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "unknown method(s) ['annoy']" in proc.stderr


def test_cold_caches_are_recorded(tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="building scorer graphs needs the train extra")
    out = tmp_path / "cold"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--sizes", "300", "--batches", "1", "--iters", "3", "--warmup", "1", "--k", "10",
         "--bandwidth-mib", "16", "--threads", "1", "--methods", "onnxruntime,numpy", "--cold", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(Path(f"{out}.json").read_text(encoding="utf-8"))
    assert report["header"]["caches"] == "evicted before every timed run"
    assert "caches evicted before every timed run" in Path(f"{out}.md").read_text(encoding="utf-8")
