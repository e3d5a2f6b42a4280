"""The variant graphs: the scorer stays float32, the fp16 body is float16, the int8 encoder is TensorRT-style Q/DQ."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from salad.calibration.graphs import (
    MIN_INT8_CHANNELS,
    prepare_for_quantization,
    quantize_encoder,
    scorer_precision_problems,
    tensorrt_qdq_problems,
    weighted_layers,
)
from salad.calibration.sources import CalibrationSource, OrtCalibrationReader
from salad.manifest import read_manifest
from tests.calibration.conftest import SAMPLE_TRAIN, Calibrated

FLOAT = TensorProto.FLOAT


def typed(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """The graph after shape inference and every tensor's element type (initializers and constants included)."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    types |= {t.name: t.data_type for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            types[n.output[0]] = n.attribute[0].t.data_type
    return inferred, types


def after(proto: onnx.ModelProto, tensor: str) -> list[onnx.NodeProto]:
    live, out = {tensor}, []
    for n in proto.graph.node:
        if live & set(n.input):
            out.append(n)
            live |= set(n.output)
    return out


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_the_scoring_graph_stays_float32(precision: str, calibrated: Calibrated) -> None:
    manifest = read_manifest(calibrated.path)
    model = onnx.load(str(calibrated.path / manifest.graph("model", precision).file))
    scorer = onnx.load(str(calibrated.path / manifest.graph("scorer").file))
    inferred, types = typed(model)
    scoring = after(inferred, "embedding")
    # the very nodes of scorer.onnx, in order (its first node reads "embedding" too)
    assert [n.op_type for n in scoring] == [n.op_type for n in after(scorer, "embedding")]
    assert {"MatMul", "Acos", "TopK", "ReduceMean"} <= {n.op_type for n in scoring}
    assert not {"Cast", "QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in scoring}
    for node in scoring:
        for name in [*node.input, *node.output]:
            if name:
                assert types[name] in (FLOAT, TensorProto.INT64), f"{node.op_type} {node.name}: {name} is {types[name]}"
        if node.op_type in ("TopK", "Acos", "MatMul", "ReduceMean", "Div"):
            assert types[node.input[0]] == FLOAT, f"{node.op_type} computes in {types[node.input[0]]}"
    assert types["embedding"] == FLOAT
    assert [(v.name, v.type.tensor_type.elem_type) for v in model.graph.input] == [("image", FLOAT)]
    assert [(v.name, v.type.tensor_type.elem_type) for v in model.graph.output] == [
        ("embedding", FLOAT),
        ("score", FLOAT),
        ("knn_angle", FLOAT),
    ]
    bank = next(t for t in model.graph.initializer if t.name == manifest.bank.initializer)
    assert bank.data_type == FLOAT and list(bank.dims) == [manifest.embedding_dim, manifest.bank.rows]
    assert scorer_precision_problems(model) == []


@pytest.mark.filterwarnings("ignore:the float32 number")
def test_the_checks_catch_a_float16_scorer_and_asymmetric_qdq(calibrated: Calibrated) -> None:
    from onnxconverter_common import float16

    fp32 = onnx.load(str(calibrated.path / "model.onnx"))
    whole = float16.convert_float_to_float16(fp32, keep_io_types=True)  # the naive conversion the issue rules out
    problems = scorer_precision_problems(whole)
    assert any("Acos" in p and "float16" in p for p in problems) and any("TopK" in p for p in problems)
    encoder = onnx.load(str(calibrated.path / "encoder.int8.onnx"))
    zp = next(t for t in encoder.graph.initializer if t.name.endswith("_zero_point") and t.data_type == TensorProto.INT8)
    zp.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(zp) + np.int8(3), zp.name))
    assert any("TensorRT needs symmetric int8 (zero point 0)" in p for p in tensorrt_qdq_problems(encoder))


def test_fp16_encoder_computes_in_float16_with_a_float32_boundary_and_normalisation(calibrated: Calibrated) -> None:
    encoder = onnx.load(str(calibrated.path / "encoder.fp16.onnx"))
    inferred, types = typed(encoder)
    inits = {t.name: t for t in encoder.graph.initializer}
    convs = [n for n in encoder.graph.node if n.op_type == "Conv"]
    assert convs and all(inits[n.input[1]].data_type == TensorProto.FLOAT16 for n in convs)
    assert all(types[n.output[0]] == TensorProto.FLOAT16 for n in convs[:-1])
    assert types["image"] == types["embedding"] == FLOAT
    tail = after(inferred, convs[-1].output[0])
    assert {"ReduceL2", "Div"} <= {n.op_type for n in tail}
    assert all(types[o] in (FLOAT, TensorProto.INT64) for n in tail for o in n.output), "the L2 normalisation must stay float32"


def test_int8_encoder_is_symmetric_qdq_that_tensorrt_can_build(calibrated: Calibrated) -> None:
    encoder = onnx.load(str(calibrated.path / "encoder.int8.onnx"))
    inits = {t.name: t for t in encoder.graph.initializer}
    producers = {o: n for n in encoder.graph.node for o in n.output}
    assert tensorrt_qdq_problems(encoder) == []
    layers = {layer.name: layer for layer in weighted_layers(onnx.load(str(calibrated.path / "encoder.onnx")))}
    projection_name = list(layers)[-1]
    quantized = []
    for node in encoder.graph.node:
        if node.op_type != "Conv":
            continue
        layer = layers[node.name]
        weight = producers.get(node.input[1])
        if layer.channels < MIN_INT8_CHANNELS or node.name == projection_name:
            assert weight is None and inits[node.input[1]].data_type == FLOAT, f"{node.name} ({layer.channels} ch) should stay float"
            continue
        quantized.append(node.name)
        assert weight is not None and weight.op_type == "DequantizeLinear"
        assert inits[weight.input[0]].data_type == TensorProto.INT8
        scale = numpy_helper.to_array(inits[weight.input[1]])
        assert scale.shape == (layer.channels_out,), "weights are quantized per output channel"
        assert np.all(numpy_helper.to_array(inits[weight.input[2]]) == 0)
        act = producers[node.input[0]]
        assert act.op_type == "DequantizeLinear" and numpy_helper.to_array(inits[act.input[1]]).size == 1
        if len(node.input) > 2:
            assert node.input[2] in inits and inits[node.input[2]].data_type == FLOAT, "biases stay float32 (TensorRT has no int32 DQ)"
    assert set(quantized) == {n for n, layer in layers.items() if layer.channels >= MIN_INT8_CHANNELS} - {projection_name}
    assert len(quantized) >= 3
    projection = [n for n in encoder.graph.node if n.op_type == "Conv"][-1]
    assert not [n for n in encoder.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == projection.output[0]], \
        "the embedding must leave the encoder unquantized"
    details = read_manifest(calibrated.path).graph("encoder", "int8").details
    assert details["quantized_layers"] == len(quantized)
    assert set(details["layers_in_float"]) == {name for name, layer in layers.items() if layer.channels < MIN_INT8_CHANNELS} | {
        projection_name
    }


def test_per_tensor_weights(base_bundle: Path, tmp_path: Path) -> None:
    manifest = read_manifest(base_bundle)
    source = CalibrationSource.from_data(SAMPLE_TRAIN, manifest.preprocess_config, films=100)
    prepared = prepare_for_quantization(base_bundle / "encoder.onnx", tmp_path / "prepared.onnx")
    proto = quantize_encoder(tmp_path / "prepared.onnx", tmp_path / "q.onnx", OrtCalibrationReader(source), method="percentile",
                             per_channel=False, exclude=[], ranges_cache=tmp_path / "ranges.json")
    inits = {t.name: t for t in proto.graph.initializer}
    weight_dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
                 and inits[n.input[0]].data_type == TensorProto.INT8]
    assert len(weight_dq) == len(weighted_layers(prepared))  # min channels 0 here: every layer, one scale each
    assert all(numpy_helper.to_array(inits[n.input[1]]).size == 1 for n in weight_dq)
    assert (tmp_path / "ranges.json").is_file() and tensorrt_qdq_problems(proto) == []
