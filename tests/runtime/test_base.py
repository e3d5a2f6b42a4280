"""The Runner lifecycle, its validation messages and the backend registry."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest

from salad.bundle import Bundle
from salad.errors import BackendUnavailableError, BundleError, SaladError
from salad.manifest import read_manifest
from salad.runtime import RUNNERS, BundleGraph, Runner, create_runner, register_runner, runner_names
from salad.runtime.base import parse_device
from salad.runtime.onnxruntime_runner import OnnxRuntimeRunner
from salad.runtime.tensorrt_runner import TensorRTRunner
from salad.runtime.torch_runner import TorchRunner


def model_graph(bundle: Path, name: str = "model") -> BundleGraph:
    return BundleGraph.from_bundle(Bundle.open(bundle), name)


def test_the_three_backends_are_registered() -> None:
    assert {"torch", "onnxruntime", "tensorrt"} <= set(runner_names())
    assert RUNNERS["onnxruntime"] is OnnxRuntimeRunner
    assert RUNNERS["tensorrt"] is TensorRTRunner and TensorRTRunner.extra == "gpu"
    assert RUNNERS["torch"] is TorchRunner and TorchRunner.extra == "train"


def test_a_second_backend_cannot_take_a_registered_name() -> None:
    with pytest.raises(SaladError, match="runtime 'onnxruntime' is already registered by OnnxRuntimeRunner"):

        @register_runner("onnxruntime")
        class Impostor(OnnxRuntimeRunner):
            pass


@pytest.mark.parametrize(("text", "expected"), [("cpu", ("cpu", 0)), ("cuda", ("cuda", 0)), ("CUDA:1", ("cuda", 1))])
def test_parse_device(text: str, expected: tuple[str, int]) -> None:
    assert parse_device(text) == expected


@pytest.mark.parametrize("text", ["gpu", "cuda:x", "cpu:0", ""])
def test_parse_device_rejects_unknown(text: str) -> None:
    with pytest.raises(SaladError, match=r"expected 'cpu', 'cuda' or 'cuda:N'"):
        parse_device(text)


def test_importing_the_runtime_and_its_cli_loads_no_heavy_library() -> None:
    """salad.runtime and every module of the site's side (salad.onsite: drift, choosing a bundle, similarity's reading
    side) import no torch or onnx, nor ONNX Runtime before a graph runs."""
    code = (
        "import sys, salad, salad.runtime, salad.runtime.cli, salad.onsite.score\n"
        "import importlib, pkgutil, salad.onsite\n"
        "for m in pkgutil.iter_modules(salad.onsite.__path__): importlib.import_module(f'salad.onsite.{m.name}')\n"
        "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt', 'cuda') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# -- with a real bundle ---------------------------------------------------------------------------


def test_unknown_runtime_lists_the_registered_ones(tiny_bundle: Path) -> None:
    expected = r"unknown runtime 'tflite'; expected one of \['onnxruntime', 'openvino', 'tensorrt', 'torch'"
    with pytest.raises(SaladError, match=expected):
        create_runner("tflite", model_graph(tiny_bundle))


def test_runners_are_lazy_and_validate_on_activate(bundle_copy: Path) -> None:
    graph = model_graph(bundle_copy)
    (bundle_copy / "model.onnx").unlink()  # constructing a runner reads nothing ...
    runner = create_runner("onnxruntime", graph)
    assert not runner.is_active
    with pytest.raises(BundleError, match=r"model.onnx: graph file missing"):  # ... activating does
        runner.activate()
    assert not runner.is_active


def test_infer_before_activate_is_an_error(tiny_bundle: Path, reference: dict[str, np.ndarray]) -> None:
    runner = create_runner("onnxruntime", model_graph(tiny_bundle))
    with pytest.raises(SaladError, match="is not active; call activate"):
        runner.infer({"image": reference["image"][:1]})


def test_lifecycle_is_idempotent_and_a_context_manager(tiny_bundle: Path, reference: dict[str, np.ndarray]) -> None:
    runner = create_runner("onnxruntime", model_graph(tiny_bundle))
    with runner as active:
        assert active is runner and runner.is_active
        runner.activate()  # no second session
        out = runner.infer({"image": reference["image"][:2]})
        assert list(out) == ["embedding", "score", "knn_angle"]
        assert out["score"].shape == (2,) and out["embedding"].shape == (2, 200)
        assert runner.last_inference_ms > 0
    assert not runner.is_active
    runner.deactivate()
    assert runner.session is None


@pytest.mark.parametrize(
    ("feed", "message"),
    [
        (
            {"img": np.zeros((1, 1, 64, 64), np.float32)},
            r"received inputs \['img'\], expected \['image'\]; missing \['image'\]; unexpected \['img'\]",
        ),
        (
            {"image": np.zeros((1, 1, 64, 64), np.float64)},
            r"input 'image' received dtype float64, expected float32 \(convert with array.astype\(np.float32\)\)",
        ),
        (
            {"image": np.zeros((2, 1, 32, 32), np.float32)},
            r"input 'image' received shape \(2, 1, 32, 32\), expected \(batch, 1, 64, 64\) \(axis 2 must be 64\)",
        ),
        (
            {"image": np.zeros((1, 64, 64), np.float32)},
            r"received shape \(1, 64, 64\) \(3 axes\), expected \(batch, 1, 64, 64\) \(4 axes\)",
        ),
        (
            {"image": np.zeros((5, 1, 64, 64), np.float32)},
            r"received batch 5, expected 1..4. Split the batch or create the runner with max_batch=5",
        ),
        ({"image": [[0.0]]}, r"input 'image' is a list; expected a numpy array"),
    ],
)
def test_feed_validation_says_received_and_expected(tiny_bundle: Path, feed: dict[str, object], message: str) -> None:
    with create_runner("onnxruntime", model_graph(tiny_bundle), max_batch=4) as runner, pytest.raises(SaladError, match=message):
        runner.infer(feed)  # type: ignore[arg-type]


def test_non_contiguous_inputs_are_accepted(tiny_bundle: Path, reference: dict[str, np.ndarray]) -> None:
    images = reference["image"][:4]
    strided = np.ascontiguousarray(images[:, :, ::-1, :])[:, :, ::-1, :]  # same values, negative strides
    assert not strided.flags.c_contiguous
    with create_runner("onnxruntime", model_graph(tiny_bundle)) as runner:
        np.testing.assert_array_equal(runner.infer({"image": strided})["score"], runner.infer({"image": images})["score"])


@pytest.fixture
def broken_backend() -> Iterator[type[Runner]]:
    """A backend whose scores have the wrong shape: the base class must refuse to pass them on."""

    @register_runner("test-broken-scores")
    class BrokenScores(OnnxRuntimeRunner):
        def _infer(self, feed: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
            out = dict(super()._infer(feed))
            out["score"] = out["score"][:, None]
            return out

    yield BrokenScores
    RUNNERS.unregister("test-broken-scores")


def test_outputs_are_checked_against_the_manifest(
    tiny_bundle: Path, reference: dict[str, np.ndarray], broken_backend: type[Runner]
) -> None:
    message = r"output 'score' received shape \(3, 1\) \(2 axes\), expected \(batch=3\) \(1 axes\).*re-export"
    with create_runner(broken_backend.name, model_graph(tiny_bundle)) as runner, pytest.raises(BundleError, match=message):
        runner.infer({"image": reference["image"][:3]})


def test_devices_a_backend_cannot_use_are_refused(tiny_bundle: Path) -> None:
    with pytest.raises(SaladError, match=r"the tensorrt runtime runs on cuda; received device 'cpu'"):
        create_runner("tensorrt", model_graph(tiny_bundle), device="cpu")


def test_torch_is_the_fp32_reference_only(tiny_bundle: Path) -> None:
    manifest = read_manifest(tiny_bundle)
    fp16 = BundleGraph(tiny_bundle, manifest, "model", "fp16")  # a graph the bundle may gain from calibration
    with pytest.raises(SaladError, match=r"the torch runtime is the fp32 reference; received precision 'fp16'"):
        TorchRunner(fp16)


def test_onnxruntime_on_cuda_without_the_gpu_package_names_it(tiny_bundle: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    runner = create_runner("onnxruntime", model_graph(tiny_bundle), device="cuda")
    with pytest.raises(BackendUnavailableError, match=r"needs onnxruntime's CUDA provider.*salad-edge\[gpu\].*--device cpu"):
        runner.activate()


def test_onnxruntime_tensorrt_provider_gets_the_batch_profile(tiny_bundle: Path, tmp_path: Path) -> None:
    runner = OnnxRuntimeRunner(model_graph(tiny_bundle), max_batch=8, device="cuda", cache_dir=tmp_path)
    options = runner._provider_options("TensorrtExecutionProvider")
    assert options["trt_profile_min_shapes"] == "image:1x1x64x64"
    assert options["trt_profile_max_shapes"] == "image:8x1x64x64"
    assert options["trt_engine_cache_enable"] and options["trt_timing_cache_enable"]
    engines = Path(options["trt_engine_cache_path"])
    assert engines.parent == tmp_path / "ort-tensorrt" and engines.name == runner.graph.content_sha256[:16]


def test_bank_input_profile_fixes_the_bank_rows(bank_input_bundle: Path, tmp_path: Path) -> None:
    runner = OnnxRuntimeRunner(model_graph(bank_input_bundle), max_batch=2, device="cuda", cache_dir=tmp_path)
    rows = read_manifest(bank_input_bundle).bank.rows
    assert runner._profile_shapes(2) == f"image:2x1x64x64,bank:{rows}x200"


def test_runners_declare_their_options_and_refuse_others(tiny_bundle: Path) -> None:
    from salad.runtime.base import BundleGraph, create_runner, runner_class

    assert "threads" in runner_class("onnxruntime").options and "threads" in runner_class("torch").options
    assert "threads" not in runner_class("tensorrt").options and "cache_dir" in runner_class("tensorrt").options
    graph = BundleGraph.from_bundle(Bundle.open(tiny_bundle))
    with pytest.raises(SaladError, match=r"the onnxruntime runtime takes no option\(s\) \['thread'\]; it takes \[.*'threads'"):
        create_runner("onnxruntime", graph, thread=2)
    with create_runner("onnxruntime", graph, threads=1) as runner:
        info = runner.info()
    assert info["library"].startswith("onnxruntime ") and info["intra_op_threads"] == 1
    assert runner.device_timer() is None  # a CPU runner has no device clock
