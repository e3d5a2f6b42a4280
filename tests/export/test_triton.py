"""`salad export-triton`: every config.pbtxt parses with Triton's own protobuf and matches the bundle manifest."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc", reason="Triton's model-config protobuf ships with tritonclient (pip install 'tritonclient[grpc]')")
import onnx  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

from salad.cli import main as salad_main  # noqa: E402
from salad.errors import BundleError, ExportValidationError, SaladError  # noqa: E402
from salad.export.triton import export_triton, triton_tensor  # noqa: E402
from salad.export.triton_cli import export_triton_command  # noqa: E402
from salad.manifest import GraphSpec, TensorSpec, read_manifest, sha256_file  # noqa: E402

TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64"}


def parse(path: Path) -> Any:
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def dtype(t: Any) -> str:
    return str(model_config_pb2.DataType.Name(t.data_type))


def assert_tensors_match(config_tensors: Any, specs: list[TensorSpec], *, reshaped: bool) -> None:
    """Names, dtypes and dims (batch axis dropped) as the manifest gives them; [batch] alone is dims [1]."""
    assert [t.name for t in config_tensors] == [s.name for s in specs]
    for t, s in zip(config_tensors, specs, strict=True):
        assert s.shape[0] == "batch"
        assert dtype(t) == TYPES[s.dtype], t.name
        assert list(t.dims) == (list(s.shape[1:]) or [1]), t.name
        assert t.HasField("reshape") == (reshaped and len(s.shape) == 1), t.name
        if t.HasField("reshape"):
            assert list(t.reshape.shape) == []


def params(config: Any) -> dict[str, str]:
    return {k: v.string_value for k, v in config.parameters.items()}


@pytest.fixture(scope="module")
def repository(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_triton(bundle, tmp_path_factory.mktemp("triton") / "repo", max_batch=8)


def test_every_config_parses_and_matches_the_manifest(bundle: Path, repository: Path) -> None:
    m = read_manifest(bundle)
    assert sorted(p.name for p in repository.iterdir()) == ["README.md", "salad", "salad_encoder", "salad_scorer"]
    configs = {p.parent.name: parse(p) for p in repository.glob("*/config.pbtxt")}
    assert sorted(configs) == ["salad", "salad_encoder", "salad_scorer"]
    for name, config in configs.items():
        assert config.name == name and config.max_batch_size == 8
        assert (repository / name / "1").is_dir()

    for name, key in (("salad_encoder", "encoder"), ("salad_scorer", "scorer")):
        config, spec = configs[name], m.graph(key)
        assert config.platform == "onnxruntime_onnx"
        assert_tensors_match(config.input, spec.inputs, reshaped=True)
        assert_tensors_match(config.output, spec.outputs, reshaped=True)
        assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 100
        assert not config.HasField("optimization")
        served = repository / name / "1" / "model.onnx"
        assert sha256_file(served) == spec.sha256  # the bundle's fp32 graphs are served byte for byte
        assert params(config)["salad.graph_sha256"] == spec.sha256

    ensemble = configs["salad"]
    assert ensemble.platform == "ensemble" and not ensemble.HasField("dynamic_batching")
    assert_tensors_match(ensemble.input, m.graph("model").inputs, reshaped=False)
    assert_tensors_match(ensemble.output, m.graph("model").outputs, reshaped=False)
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["salad_encoder", "salad_scorer"] and all(s.model_version == -1 for s in steps)
    # input_map / output_map: composing model tensor → ensemble tensor.
    assert dict(steps[0].input_map) == {"image": "image"} and dict(steps[0].output_map) == {"embedding": "embedding"}
    assert dict(steps[1].input_map) == {"embedding": "embedding"}
    assert dict(steps[1].output_map) == {"score": "score", "knn_angle": "knn_angle"}
    available = {t.name for t in ensemble.input}
    for step in steps:  # each step reads only what the request or an earlier step provides, by the model's names
        model = configs[step.model_name]
        assert set(step.input_map) == {t.name for t in model.input} and set(step.input_map.values()) <= available
        assert set(step.output_map) <= {t.name for t in model.output}
        available |= set(step.output_map.values())
    assert {t.name for t in ensemble.output} <= available

    p = params(ensemble)
    assert json.loads(p["salad.preprocessing"]) == m.preprocessing
    assert json.loads(p["salad.threshold"]) == m.threshold.to_json()
    assert json.loads(p["salad.scores"]) == m.scores.to_json()
    assert p["salad.bank_sha256"] == m.bank.sha256 and p["salad.k"] == str(m.k) and p["salad.precision"] == "fp32"
    assert p["salad.encoder_sha256"] == m.graph("encoder").sha256
    assert json.loads(params(configs["salad_encoder"])["salad.preprocessing"]) == m.preprocessing

    readme = (repository / "README.md").read_text(encoding="utf-8")
    for text in ("tritonserver --model-repository=/models", "salad score --triton http://localhost:8000", 'client.infer("salad"',
                 f"{m.threshold.value}", "salad_encoder", "salad_scorer"):
        assert text in readme, text


@pytest.fixture(scope="module")
def fp16_bundle(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle with a "model.fp16" variant as calibration adds it (merged graph only, no encoder.fp16).

    The graph is the fp32 one: what is tested is which graph is served and how it is configured.
    """
    root = Path(shutil.copytree(bundle, tmp_path_factory.mktemp("fp16") / "bundle"))
    m = read_manifest(root)
    shutil.copyfile(root / "model.onnx", root / "model.fp16.onnx")
    fp32 = m.graph("model")
    m.graphs["model.fp16"] = GraphSpec(
        file="model.fp16.onnx", sha256=sha256_file(root / "model.fp16.onnx"), precision="fp16", opset=fp32.opset,
        inputs=fp32.inputs, outputs=fp32.outputs, external_data=fp32.external_data,
    )
    m.parity["fp16"] = {**m.tolerances("fp32"), "max_abs_score_diff": 1e-3, "embedding_cosine_min": 0.999}
    m.write(root)
    return root


def test_a_precision_variant_with_the_tensorrt_accelerator(fp16_bundle: Path, tmp_path: Path) -> None:
    repo = export_triton(fp16_bundle, tmp_path / "repo", precision="fp16", max_batch=8, tensorrt_accelerator=True)
    encoder, scorer, ensemble = (parse(repo / n / "config.pbtxt") for n in ("salad_encoder", "salad_scorer", "salad"))

    def accelerator(config: Any) -> dict[str, str]:
        (accel,) = config.optimization.execution_accelerators.gpu_execution_accelerator
        assert accel.name == "tensorrt"
        return dict(accel.parameters)

    enc, sco = accelerator(encoder), accelerator(scorer)
    assert enc["precision_mode"] == "FP16" and sco["precision_mode"] == "FP32"  # the scorer stays float32 (docs/architecture.md §5)
    assert enc["trt_profile_min_shapes"] == "image:1x1x64x64" and enc["trt_profile_max_shapes"] == "image:8x1x64x64"
    assert sco["trt_profile_max_shapes"] == "embedding:8x200"
    assert params(ensemble)["salad.precision"] == "fp16"
    # The encoder was cut out of model.fp16.onnx: image → embedding, none of the scorer's nodes.
    served = onnx.load(str(repo / "salad_encoder" / "1" / "model.onnx"))
    assert [i.name for i in served.graph.input] == ["image"] and [o.name for o in served.graph.output] == ["embedding"]
    assert not any(n.op_type in ("Acos", "TopK") for n in served.graph.node)
    assert sha256_file(repo / "salad_scorer" / "1" / "model.onnx") == read_manifest(fp16_bundle).graph("scorer").sha256

    with pytest.raises(BundleError, match=r"no 'model' graph at precision 'int8'.*salad calibrate BUNDLE --precision int8"):
        export_triton(fp16_bundle, tmp_path / "int8", precision="int8")
    assert not (tmp_path / "int8").exists()


def test_dtypes_and_dims_come_from_the_manifest() -> None:
    half = triton_tensor(TensorSpec("image", "float16", ["batch", 1, 256, 256]), "g")
    assert half == {"name": "image", "data_type": "TYPE_FP16", "dims": [1, 256, 256]}
    assert triton_tensor(TensorSpec("score", "float32", ["batch"]), "g") == {
        "name": "score", "data_type": "TYPE_FP32", "dims": [1], "reshape": {"shape": []},
    }
    with pytest.raises(BundleError, match="dtype 'complex64', which Triton has no type for"):
        triton_tensor(TensorSpec("x", "complex64", ["batch", 2]), "g")
    with pytest.raises(BundleError, match="needs a leading 'batch' axis"):
        triton_tensor(TensorSpec("bank", "float32", [200, 200]), "g")


def test_a_bank_as_input_bundle_is_served_with_its_bank_inside(input_bundle: Path, tmp_path: Path) -> None:
    repo = export_triton(input_bundle, tmp_path / "repo")
    scorer = parse(repo / "salad_scorer" / "config.pbtxt")
    assert [t.name for t in scorer.input] == ["embedding"]  # Triton batches every input: the bank cannot be one
    served = onnx.load(str(repo / "salad_scorer" / "1" / "model.onnx"))
    (bank_t,) = [t for t in served.graph.initializer if t.name == "bank_t"]
    bank = np.load(input_bundle / "bank.npy")
    assert np.array_equal(numpy_helper.to_array(bank_t), bank.T)


def test_a_chain_that_does_not_reproduce_the_bundle_writes_nothing(bundle: Path, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(bundle, tmp_path / "bundle"))
    m = read_manifest(broken)
    encoder = onnx.load(str(broken / "encoder.onnx"))
    weight = next(t for t in encoder.graph.initializer if t.dims and len(t.dims) == 4)
    w = numpy_helper.to_array(weight)
    noise = np.random.default_rng(0).standard_normal(w.shape).astype(w.dtype) * w.std()
    weight.CopyFrom(numpy_helper.from_array(w + noise, weight.name))
    onnx.save(encoder, str(broken / "encoder.onnx"))
    m.graphs["encoder"].sha256 = sha256_file(broken / "encoder.onnx")  # verifies, but no longer model.onnx's encoder
    m.write(broken)
    with pytest.raises(ExportValidationError, match=r"chain does not reproduce model.onnx .*score: max \|Δ\|.*Nothing was written"):
        export_triton(broken, tmp_path / "repo")
    assert not (tmp_path / "repo").exists() and not list(tmp_path.glob(".repo*"))


def test_bad_options_and_existing_output(bundle: Path, repository: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="already exists. Pass --force"):
        export_triton(bundle, repository)
    with pytest.raises(SaladError, match="--max-batch 0"):
        export_triton(bundle, tmp_path / "r", max_batch=0)
    with pytest.raises(SaladError, match="--name 'my model'"):
        export_triton(bundle, tmp_path / "r", name="my model")
    with pytest.raises(SaladError, match="overlaps the bundle"):
        export_triton(bundle, bundle / "triton")
    with pytest.raises(BundleError, match="not a bundle"):
        export_triton(tmp_path, tmp_path / "r")


def test_the_command(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    result = CliRunner().invoke(export_triton_command, [str(bundle), "--out", str(out), "--name", "chest", "--max-batch", "4"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: ensemble 'chest' = chest_encoder (fp32) → chest_scorer (fp32), max batch 4" in result.output
    assert parse(out / "chest" / "config.pbtxt").ensemble_scheduling.step[1].model_name == "chest_scorer"
    again = CliRunner().invoke(salad_main, ["export-triton", str(bundle), "--out", str(out)])  # as `salad export-triton`
    assert again.exit_code == 1 and again.output.startswith("error: ") and "Traceback" not in again.output
    assert (out / "chest" / "config.pbtxt").is_file()  # the refusal left the repository as it was


def test_the_command_module_loads_neither_torch_nor_onnx() -> None:
    code = "import sys, salad.export.triton_cli; print(sorted({'torch', 'onnx', 'onnxruntime'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
