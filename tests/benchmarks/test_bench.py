"""`salad bench`: one tiny smoke run (structure of JSON, markdown, plot) and the harness's pieces.

Benchmarks are not CI tests: the smoke run uses --iters 3 and checks what the files contain, never
how fast anything is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from salad.clitools import IntList, flatten
from salad.runtime.bench import (
    Stats,
    bench_command,
    count_macs,
    current_rss_mb,
    peak_rss_mb,
    reset_peak_rss,
)
from salad.runtime.bench import configurations as _configurations
from tests.conftest import check_json_schema

ROW_KEYS = {"runtime", "precision", "batch", "p50_ms", "p95_ms", "p99_ms", "throughput_ips", "peak_rss_mb", "speedup_vs_torch"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke(bench_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, Path, str]:
    out = tmp_path_factory.mktemp("bench-out")
    result = CliRunner().invoke(bench_command, [
        str(bench_bundle), "--batch", "1,2", "--iters", "3", "--warmup", "1", "--films", "6", "--threads", "1",
        "--json", str(out / "bench.json"), "--markdown", str(out / "bench.md"), "--plot", str(out / "bench.png"),
    ])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    return report, (out / "bench.md").read_text(encoding="utf-8"), out / "bench.png", result.output


def test_smoke_json_rows_pair_every_configuration_with_torch(smoke: tuple[dict, str, Path, str]) -> None:
    report = check_json_schema("bench", smoke[0])
    assert report["schema"] == "salad-bench/1"
    rows = report["results"]
    assert [(r["runtime"], r["precision"], r["batch"]) for r in rows] == [
        ("torch", "fp32", 1), ("torch", "fp32", 2), ("onnxruntime", "fp32", 1), ("onnxruntime", "fp32", 2),
    ]
    for r in rows:
        assert set(r) >= ROW_KEYS, f"row lacks {ROW_KEYS - set(r)}"
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["throughput_ips"] == pytest.approx(r["batch"] * 1000 / r["p50_ms"])
        assert r["peak_rss_mb"] > 0 and r["memory"]["method"]
        assert r["speedup_vs_torch"] > 0 and r["inference"]["speedup_vs_torch"] > 0
        assert r["end_to_end"]["n"] == 3 and r["inference"]["n"] == 3
        assert r["preprocess_p50_ms"] > 0 and r["inference_in_e2e_p50_ms"] > 0
        assert r["cold_start"]["total_ms"] >= r["cold_start"]["activate_ms"] > 0
        assert r["inference"]["gflops"] > 0 and r["inference"]["peak_gflops"] > 0
        assert r["runtime_info"]["intra_op_threads"] == 1  # the same thread count on both sides, as reported by each
    assert all(r["speedup_vs_torch"] == 1.0 for r in rows if r["runtime"] == "torch")


def test_smoke_reports_first_and_cached_starts(smoke: tuple[dict, str, Path, str]) -> None:
    report, markdown, _, output = smoke
    for r in report["results"]:
        first, cached = r["first_start"], r["cached_start"]
        assert first["total_ms"] >= first["activate_ms"] > 0
        if r["runtime"] == "torch":  # no start-up cache: one start, no cached one
            assert cached is None and first["total_ms"] == r["cold_start"]["total_ms"] and first["runs"] == 1
        else:  # the cached start is the measuring process's, on the folder the first start filled
            assert cached["total_ms"] == r["cold_start"]["total_ms"] > 0 and cached["runs"] == first["runs"] == 1
            assert r["runtime_info"]["start_cache"]["status"] == "loaded"
    assert "| first start ms | cached start ms |" in markdown
    assert "first start ms" in output and "cached start ms" in output


def test_smoke_json_reads_back_into_the_same_report(smoke: tuple[dict, str, Path, str]) -> None:
    from salad.runtime.bench import BenchReport

    report = BenchReport.from_dict(smoke[0])
    assert report.to_dict() == smoke[0]
    assert report.to_markdown() == smoke[1]


def test_smoke_json_header_names_the_machine_and_libraries(smoke: tuple[dict, str, Path, str]) -> None:
    header = smoke[0]["header"]
    assert header["machine"]["cpu"] and header["machine"]["cpus_usable"] >= 1
    assert "gpu" in header["machine"]
    assert {"numpy", "onnxruntime", "torch", "salad-edge"} <= set(header["libraries"])
    assert header["threads"] == 1 and header["iters"] == 3 and header["warmup"] == 1
    assert header["data"]["films"] == 6
    floor = smoke[0]["floor"]
    assert floor["macs_per_image"]["model"] == floor["macs_per_image"]["encoder"] + floor["macs_per_image"]["scorer"]
    assert floor["peaks"]["fp32_gflops"] > 0


def test_smoke_says_three_runs_are_not_a_measurement(smoke: tuple[dict, str, Path, str]) -> None:
    report, markdown, _, output = smoke
    assert any("< 50" in note for note in report["notes"])
    assert "< 50" in output


def test_smoke_markdown_and_plot(smoke: tuple[dict, str, Path, str]) -> None:
    _, markdown, png, _ = smoke
    for heading in ("## Latency and throughput", "## Inference alone", "## Cold start and memory"):
        assert heading in markdown
    assert "| onnxruntime | fp32 | 2 |" in markdown and "speedup vs torch" in markdown
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_a_cache_folder_given_on_the_command_line_reaches_every_worker(bench_bundle: Path, tmp_path: Path) -> None:
    # --cache-dir arrives as a Path; every configuration's job, torch's included, must still travel to its worker
    result = CliRunner().invoke(bench_command, [
        str(bench_bundle), "--runtime", "onnxruntime", "--batch", "1", "--iters", "1", "--warmup", "0", "--films", "2",
        "--threads", "1", "--cache-dir", str(tmp_path / "cache"), "--json", str(tmp_path / "bench.json"),
    ])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "bench.json").read_text(encoding="utf-8"))
    assert {r["runtime"] for r in report["results"]} == {"torch", "onnxruntime"}


def test_a_precision_the_bundle_lacks_is_named_before_anything_runs(bench_bundle: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(bench_command, [str(bench_bundle), "--precision", "int8", "--iters", "1"])
    assert result.exit_code == 1
    assert "no 'model' graph at precision 'int8'" in result.output


def test_a_bundle_without_checkpoint_cannot_have_a_torch_baseline(bench_bundle: Path, tmp_path: Path) -> None:
    import shutil

    from salad.manifest import read_manifest

    slim = Path(shutil.copytree(bench_bundle, tmp_path / "slim"))
    (slim / "checkpoint.pt").unlink()
    manifest = read_manifest(slim, verify=False)
    manifest.files.pop("checkpoint.pt", None)
    manifest.write(slim)
    result = CliRunner().invoke(bench_command, [str(slim), "--iters", "1"])
    assert result.exit_code == 1
    assert "no checkpoint.pt" in result.output and "PyTorch eager baseline" in result.output


@pytest.mark.parametrize("text", ["0", "1,x", "", "-2"])
def test_batch_list_is_validated(text: str) -> None:
    with pytest.raises(click.BadParameter, match="expected whole numbers"):
        IntList().convert(text, None, None)


def test_batch_list_keeps_order_and_drops_repeats() -> None:
    """--batch 1 --batch 8,32 --batch 8: repeated options and comma lists give one ordered list."""
    assert flatten([IntList().convert(t, None, None) for t in ("1", " 8,32", "8")]) == [1, 8, 32]


def test_stats_percentiles_and_spread() -> None:
    s = Stats.from_ms([float(v) for v in range(1, 101)])
    assert s.n == 100 and s.p50_ms == pytest.approx(50.5) and s.p95_ms == pytest.approx(95.05)
    assert s.p99_ms == pytest.approx(99.01) and s.iqr_ms == pytest.approx(49.5) and s.min_ms == 1.0
    assert Stats.from_dict(s.to_dict()) == s


def test_torch_runs_only_the_fp32_baseline() -> None:
    pairs, notes = _configurations(["torch", "onnxruntime"], ["fp32", "int8"])
    assert pairs == [("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    assert notes == ["torch runs only the fp32 reference; torch/int8 was not measured."]


def test_peak_rss_resets_to_the_current_resident_set() -> None:
    if not reset_peak_rss():
        pytest.skip("no /proc/self/clear_refs here")
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    before = current_rss_mb()
    del block
    assert reset_peak_rss()
    peak, method = peak_rss_mb()
    assert method == "VmHWM" and before is not None and peak < before


def test_macs_are_counted_from_shapes(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((8, 2, 3, 3), np.float32), "w")  # grouped: 4 in channels, group 2
    g = numpy_helper.from_array(np.zeros((8 * 16 * 16, 10), np.float32), "g")
    m = numpy_helper.from_array(np.zeros((10, 5), np.float32), "m")
    shape = numpy_helper.from_array(np.array([-1, 8 * 16 * 16], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], group=2),
         helper.make_node("Reshape", ["c", "shape"], ["r"]),
         helper.make_node("Gemm", ["r", "g"], ["h"]),
         helper.make_node("MatMul", ["h", "m"], ["y"])],
        "macs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])], initializer=[w, g, m, shape],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    macs = count_macs(path)
    assert macs == {"Conv": 8 * 16 * 16 * 2 * 9, "Gemm": 10 * 8 * 16 * 16, "MatMul": 10 * 5, "total": 36864 + 20480 + 50}


def test_module_imports_no_heavy_library() -> None:
    code = (
        "import sys, salad.runtime.bench\n"
        "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'matplotlib', 'tensorrt', 'faiss') if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_bench_is_a_salad_command() -> None:
    from salad.cli import StageGroup

    assert StageGroup.lazy_commands["bench"] == "salad.runtime.bench:bench_command"


@pytest.mark.gpu
def test_tensorrt_rows_carry_cuda_event_timings(bench_bundle: Path, tmp_path: Path) -> None:
    from salad.runtime import TensorRTRunner

    reason = TensorRTRunner.unavailable_reason()
    if reason:
        pytest.skip(reason)
    result = CliRunner().invoke(bench_command, [
        str(bench_bundle), "--runtime", "tensorrt", "--device", "cuda", "--batch", "1", "--iters", "3", "--warmup", "1",
        "--films", "4", "--json", str(tmp_path / "b.json"),
    ])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "b.json").read_text(encoding="utf-8"))["results"]
    trt = next(r for r in rows if r["runtime"] == "tensorrt")
    assert trt["device_inference"]["n"] == 3 and trt["device"].startswith("cuda")


def test_gemm_peaks_measure_fp32_and_int8() -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from salad.runtime.bench import gemm_peaks

    peaks = gemm_peaks(1, ["fp32", "int8"], size=128)
    assert peaks["fp32_gflops"] > 0 and peaks["numpy_sgemm_gflops"] > 0
    assert peaks["ort_int8_gops"] > 0, peaks.get("int8_note")


def test_several_cold_starts_are_summarised_by_each_phase_median() -> None:
    from salad.runtime.bench.command import median_start

    starts = [{"verify_ms": 1.0, "total_ms": 10.0}, {"verify_ms": 3.0, "total_ms": 30.0}, {"verify_ms": 2.0, "total_ms": 25.0}]
    assert median_start(starts) == {"verify_ms": 2.0, "total_ms": 25.0, "runs": 3, "total_min_ms": 10.0, "total_max_ms": 30.0}
