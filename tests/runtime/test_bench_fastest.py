"""`salad bench` names the fastest runtime per precision × batch when several runtimes were measured."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from salad.runtime.bench import BenchReport, bench_command
from salad.runtime.bench.report import machine_busy


def test_bench_summary_names_the_fastest_runtime(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = [str(tiny_bundle), "--runtime", "onnxruntime", "--runtime", "openvino", "--precision", "fp32", "--batch", "1",
            "--iters", "3", "--warmup", "1", "--films", "4", "--threads", "1", "--json", str(out)]
    result = CliRunner().invoke(bench_command, args)
    assert result.exit_code == 0, result.output
    report = BenchReport.from_dict(json.loads(out.read_text(encoding="utf-8")))
    p50 = {r.runtime: r.end_to_end.p50_ms for r in report.rows if r.precision == "fp32" and r.runtime != "torch"}
    (line,) = report.fastest()
    winner = min(p50, key=p50.__getitem__)
    assert line.startswith(f"fp32 batch 1: {winner} is fastest")
    assert f"fastest: {line}" in result.output
    assert line in report.to_markdown()
    header = report.header
    assert report.busy == machine_busy(header["load_average_start"], header["machine"]["cpus_usable"])
    assert report.busy == any(n.startswith("the machine was busy") for n in report.notes)


def test_busy_machine_rule() -> None:
    assert machine_busy([1.1, 0.2, 0.1], 2) and not machine_busy([1.0, 3.0, 3.0], 2)
    assert not machine_busy(None, 2) and not machine_busy([], 2)
