"""TensorRT backend: availability detection and engine-cache keys here; engine builds on a GPU (-m gpu)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from salad.bundle import Bundle
from salad.errors import BackendUnavailableError, SaladError
from salad.manifest import read_manifest
from salad.runtime import BundleGraph, Scorer, create_runner
from salad.runtime.tensorrt_runner import GpuInfo, TensorRTRunner, cuda_check

TRT_REASON = TensorRTRunner.unavailable_reason()


def _real_tensorrt() -> bool:
    try:
        import tensorrt
    except (ImportError, OSError):
        return False
    return hasattr(tensorrt, "Builder")


def trt_runner(bundle: Path, tmp_path: Path, **options: object) -> TensorRTRunner:
    graph = BundleGraph.from_bundle(Bundle.open(bundle), "model")
    runner = create_runner("tensorrt", graph, cache_dir=tmp_path / "cache", **options)
    assert isinstance(runner, TensorRTRunner)
    return runner


# -- without a GPU ------------------------------------------------------------------------------


@pytest.mark.skipif(_real_tensorrt(), reason="real TensorRT is installed here")
def test_missing_tensorrt_is_reported_with_the_extra_to_install(tiny_bundle: Path, tmp_path: Path) -> None:
    assert TRT_REASON is not None and "salad-edge[gpu]" in TRT_REASON
    if importlib.util.find_spec("tensorrt") is not None:  # tensorrt-stubs: a namespace package of .pyi files
        assert "only type stubs" in TRT_REASON
    runner = trt_runner(tiny_bundle, tmp_path)
    with pytest.raises(BackendUnavailableError, match=r"the tensorrt runtime is unavailable: .*pip install 'salad-edge\[gpu\]'"):
        runner.activate()
    assert not runner.is_active


def test_scorer_with_tensorrt_fails_cleanly_without_it(tiny_bundle: Path, tmp_path: Path) -> None:
    if TRT_REASON is None:
        pytest.skip("TensorRT can run here")
    scorer = Scorer.from_bundle(tiny_bundle, runtime="tensorrt", cache_dir=tmp_path)
    assert scorer.runner.device == "cuda:0"  # the backend's default device
    with pytest.raises(BackendUnavailableError, match="tensorrt runtime is unavailable"):
        scorer.score(np.zeros((64, 64), np.float32))


def test_cuda_errors_name_the_call() -> None:
    cudart = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    err, count = cudart.cudaGetDeviceCount()
    if int(err) == 0:
        pytest.skip("a CUDA driver is present; nothing fails here")
    with pytest.raises(SaladError, match=rf"CUDA call cudaGetDeviceCount failed: {err.name}"):
        cuda_check((err, count), "cudaGetDeviceCount")


def test_engine_cache_key_covers_gpu_version_graph_and_profile(tiny_bundle: Path, tmp_path: Path) -> None:
    h100 = GpuInfo(0, "NVIDIA H100 80GB HBM3", "9.0")
    runner = trt_runner(tiny_bundle, tmp_path, max_batch=8)
    path = runner.engine_file("10.13.0.35", h100)
    sha = read_manifest(tiny_bundle).graphs["model"].sha256  # no external data: the file's own hash
    assert path.parent == tmp_path / "cache" / "tensorrt"
    assert path.name.startswith(f"model-{sha[:12]}-NVIDIA-H100-80GB-HBM3-sm90-trt10.13.0.35-") and path.suffix == ".engine"
    variants = {
        "gpu": runner.engine_file("10.13.0.35", GpuInfo(0, "NVIDIA H200", "9.0")),
        "capability": runner.engine_file("10.13.0.35", GpuInfo(0, "NVIDIA H100 80GB HBM3", "8.9")),
        "tensorrt": runner.engine_file("11.0.0", h100),
        "max_batch": trt_runner(tiny_bundle, tmp_path, max_batch=16).engine_file("10.13.0.35", h100),
        "tf32": trt_runner(tiny_bundle, tmp_path, max_batch=8, allow_tf32=True).engine_file("10.13.0.35", h100),
    }
    assert len({path, *variants.values()}) == 1 + len(variants), variants
    assert runner.engine_file("10.13.0.35", h100) == path  # deterministic
    assert runner.timing_cache_file("10.13.0.35", h100).name == "timing-NVIDIA-H100-80GB-HBM3-sm90-trt10.13.0.35.cache"


def test_opt_batch_must_lie_in_the_profile(tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(SaladError, match=r"opt_batch=9; expected 1..max_batch \(8\)"):
        trt_runner(tiny_bundle, tmp_path, max_batch=8, opt_batch=9)


# -- on a GPU -------------------------------------------------------------------------------------

gpu = pytest.mark.skipif(TRT_REASON is not None, reason=f"needs TensorRT and a CUDA GPU: {TRT_REASON}")


@pytest.mark.gpu
@gpu
def test_tensorrt_engine_matches_onnxruntime_on_the_reference_images(
    tiny_bundle: Path, reference: dict[str, np.ndarray], tmp_path: Path
) -> None:
    images = reference["image"]
    graph = BundleGraph.from_bundle(Bundle.open(tiny_bundle), "model")
    with create_runner("onnxruntime", graph, max_batch=len(images)) as ort_runner:
        expected = ort_runner.infer({"image": images})
    runner = trt_runner(tiny_bundle, tmp_path, max_batch=len(images))
    with runner:
        assert runner.built and runner.engine_path is not None and runner.engine_path.is_file()
        got = runner.infer({"image": images})
        one = runner.infer({"image": images[:1]})  # the profile spans 1..max_batch
    tol = read_manifest(tiny_bundle).tolerances("fp32")
    assert np.abs(got["score"] - expected["score"]).max() <= tol["max_abs_score_diff"]
    assert np.abs(got["knn_angle"] - expected["knn_angle"]).max() <= tol["max_abs_knn_angle_diff"]
    cosine = (got["embedding"] * expected["embedding"]).sum(axis=1)
    assert cosine.min() >= tol["embedding_cosine_min"]
    np.testing.assert_allclose(one["score"], got["score"][:1], atol=1e-6)


@pytest.mark.gpu
@gpu
def test_second_activation_loads_the_cached_engine(tiny_bundle: Path, reference: dict[str, np.ndarray], tmp_path: Path) -> None:
    images = reference["image"][:8]
    first = trt_runner(tiny_bundle, tmp_path, max_batch=8)
    with first:
        a = first.infer({"image": images})
    second = trt_runner(tiny_bundle, tmp_path, max_batch=8)
    with second:
        b = second.infer({"image": images})
    import tensorrt

    assert first.built and not second.built and first.engine_path == second.engine_path
    assert first.gpu is not None
    timing = first.timing_cache_file(tensorrt.__version__, first.gpu)
    assert timing.is_file() and timing.stat().st_size > 0
    np.testing.assert_array_equal(a["score"], b["score"])


@pytest.mark.gpu
@gpu
def test_scorer_on_tensorrt_agrees_with_onnxruntime(tiny_bundle: Path, film_folder: Path, tmp_path: Path) -> None:
    files = sorted(film_folder.rglob("*.jpeg"))
    with Scorer.from_bundle(tiny_bundle, runtime="onnxruntime", max_batch=4) as cpu:
        expected = cpu.score(files)
    with Scorer.from_bundle(tiny_bundle, runtime="tensorrt", max_batch=4, cache_dir=tmp_path) as trt:
        got = trt.score(files)
    assert [r.path for r in got] == [r.path for r in expected]
    assert max(abs(a.score - b.score) for a, b in zip(got, expected, strict=True)) <= 1e-5
    assert [r.label for r in got] == [r.label for r in expected]


# -- salad build-engine ---------------------------------------------------------------------------------


@pytest.mark.skipif(TRT_REASON is None, reason="TensorRT and a GPU are here: the error path cannot happen")
def test_build_engine_without_tensorrt_names_what_to_install(tiny_bundle: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from salad.cli import main

    result = CliRunner().invoke(main, ["build-engine", str(tiny_bundle), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 1, result.output
    assert "error: cannot build a TensorRT engine here" in result.output and "salad-edge[gpu]" in result.output
    assert not (tmp_path / "cache").exists()  # nothing half-built


@pytest.mark.gpu
@gpu
def test_build_engine_ahead_of_time_is_the_engine_the_runner_loads(tiny_bundle: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from salad.cli import main

    cache = tmp_path / "cache"
    result = CliRunner().invoke(main, ["build-engine", str(tiny_bundle), "--max-batch", "8", "--cache-dir", str(cache)])
    assert result.exit_code == 0 and " built: " in result.output, result.output
    again = CliRunner().invoke(main, ["build-engine", str(tiny_bundle), "--max-batch", "8", "--cache-dir", str(cache)])
    assert again.exit_code == 0 and "found in the cache" in again.output, again.output
    runner = create_runner("tensorrt", BundleGraph.from_bundle(Bundle.open(tiny_bundle)), max_batch=8,
                           cache_dir=cache)
    with runner:
        assert not runner.built and runner.engine_path is not None and str(runner.engine_path) in result.output
