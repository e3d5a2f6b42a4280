"""`salad demo --quick` end to end on a tiny real subset: every stage runs and the report is complete."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402

from salad.cli import main  # noqa: E402
from salad.runtime.bench import BenchReport  # noqa: E402

from .conftest import SAMPLE_EVAL, SAMPLE_TRAIN  # noqa: E402


@pytest.mark.slow
def test_demo_quick_runs_every_stage_and_writes_the_report(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "normal").mkdir(parents=True)
    (data / "pneumonia").mkdir()
    for f in sorted(SAMPLE_TRAIN.iterdir())[:140]:
        shutil.copy(f, data / "normal")
    for f in sorted((SAMPLE_EVAL / "pneumonia").iterdir())[:30]:
        shutil.copy(f, data / "pneumonia")
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--quick", "--data", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "AUC " in result.output and "parity: onnxruntime/fp32 PASS" in result.output
    assert "FAIL" not in result.output
    manifest = (out / "bundle" / "manifest.json").read_text()
    for precision in ("fp16", "int8"):
        # A variant is either in the bundle and passes parity, or was judged on the films and left out.
        if f"{precision}: accepted" in result.output:
            assert f"onnxruntime/{precision} PASS" in result.output and f'"model.{precision}"' in manifest
        else:
            assert f"{precision}: REJECTED" in result.output and f'"model.{precision}"' not in manifest
    assert "int8 speed-up vs PyTorch eager fp32" in result.output
    bench = BenchReport.from_dict(json.loads((out / "bench.json").read_text()))
    assert ("busy machine" in result.output) == bench.busy, "a speed-up taken on a busy machine is flagged, and only then"
    html = (out / "report.html").read_text()
    for needle in ("ROC curve", "Parity against the PyTorch reference", "Latency on this machine", "Example films",
                   "Repeat each step", "data:image/png;base64,"):
        assert needle in html, needle
    assert "src='http" not in html and 'src="http' not in html  # self-contained: nothing fetched
    md = (out / "report.md").read_text()
    assert "salad-export" in md and "salad calibrate" in md and "## Parity against the PyTorch reference" in md
