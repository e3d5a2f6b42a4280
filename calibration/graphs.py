"""The precision variants as ONNX graphs (docs/architecture.md §5): fp16 encoder, int8 Q/DQ encoder, merged with the fp32 scorer.

Precision lives in the graph, never in runtime flags, so both variants run on ONNX Runtime CPU and
TensorRT builds them as strongly typed networks. Only the encoder changes; the scoring graph
(normalise → MatMul → Clip → Acos → TopK → reductions) is the bundle's own scorer.onnx, merged
unchanged with the same function export uses, and the graph boundary (image, embedding, score,
knn_angle) stays float32.

fp16: onnxconverter-common's convert_float_to_float16 with keep_io_types, block-listing the
encoder's L2-normalisation tail (everything after the last weighted layer): a sum of 200 squares can
overflow float16 and its epsilon (1e-8) underflows.

int8: ONNX Runtime's quantize_static in QDQ format, calibrated on real normal films (sources.py):
int8 weights, symmetric and per channel by default; int8 activations with zero point 0; biases left
float32. That one flavour suits both consumers: TensorRT needs symmetric int8 Q/DQ and cannot
dequantize int32 biases, and ONNX Runtime still fuses it into QLinearConv (it quantizes the float
bias itself), which on x86 with VNNI/AMX is as fast as the U8S8 flavour.
The encoder's last weighted layer, the projection to the embedding, stays float (builders.py):
its output is the embedding before L2-normalisation, and a Q/DQ convolution whose output is float
runs unfused in ONNX Runtime, its weights dequantized on every call.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from salad.errors import CalibrationError
from salad.manifest import GraphSpec, TensorSpec
from salad.merge import merge_encoder_scorer

#: Ops that carry weights; the last one in the encoder is its projection to the embedding.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Ops that int8 quantizes (their inputs and weights get Q/DQ).
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")
#: Layers with fewer channels (in or out) than this stay float in int8. Measured with ONNX Runtime 1.31
#: on a Xeon with AVX512-VNNI/AMX: QLinearConv is 2-10x slower than the float NCHWc kernels on the
#: full-resolution 1→4 and 4→8 channel convolutions of a width-0.25 encoder, and 1.5-3x faster from 16.
MIN_INT8_CHANNELS = 16
#: Names of the element types, for messages.
_DTYPE = {v: k.lower() for k, v in TensorProto.DataType.items()}

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


# -- graph inspection ---------------------------------------------------------------------------------


def opset_of(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _named(proto: onnx.ModelProto, prefix: str) -> onnx.ModelProto:
    """A copy whose every node has a (unique) name: block lists and exclusions address nodes by name."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for i, node in enumerate(out.graph.node):
        if not node.name:
            node.name = f"{prefix}{node.op_type}_{i}"
    return out


def downstream(nodes: Sequence[onnx.NodeProto], tensors: Iterable[str]) -> list[onnx.NodeProto]:
    """Nodes that (transitively) consume any of `tensors`, in graph order."""
    live = set(tensors)
    found = []
    for node in nodes:  # ONNX graphs are topologically sorted
        if any(i in live for i in node.input if i):
            found.append(node)
            live.update(o for o in node.output if o)
    return found


def encoder_tail(proto: onnx.ModelProto) -> list[str]:
    """Names of the encoder's normalisation tail: nodes after its last weighted layer, and constants feeding only them."""
    nodes = list(proto.graph.node)
    weighted = [n for n in nodes if n.op_type in WEIGHTED_OPS]
    if not weighted:
        raise CalibrationError("the encoder has no Conv/Gemm/MatMul layer; it is not a SALAD encoder graph.")
    tail = downstream(nodes, weighted[-1].output)
    names = {n.name for n in tail}
    consumers: dict[str, set[str]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, set()).add(n.name)
    for n in nodes:
        if n.op_type == "Constant" and all(consumers.get(o, set()) and consumers[o] <= names for o in n.output):
            names.add(n.name)
    return [n.name for n in nodes if n.name in names]


def elem_types(proto: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor in the graph (after shape inference), initializers and I/O included."""
    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    for node in g.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                types[node.output[0]] = value.data_type
    return types


def scorer_precision_problems(proto: onnx.ModelProto, embedding: str = "embedding") -> list[str]:
    """Every way the scoring part (all nodes downstream of `embedding`) is not float32.

    Float tensors there must be float32; no Cast, QuantizeLinear or DequantizeLinear may appear;
    integer tensors are allowed only as shapes, K and TopK indices.
    """
    types = elem_types(proto)
    problems = []
    if types.get(embedding) != TensorProto.FLOAT:
        problems.append(f"tensor {embedding!r} is {_DTYPE.get(types.get(embedding, 0), '?')}, expected float")
    for node in downstream(list(proto.graph.node), [embedding]):
        if node.op_type in ("Cast", "CastLike", "QuantizeLinear", "DequantizeLinear"):
            problems.append(f"{node.op_type} node {node.name!r} after the embedding")
            continue
        for kind, names in (("input", node.input), ("output", node.output)):
            for name in names:
                t = types.get(name)
                if not name or t in (TensorProto.FLOAT, TensorProto.INT64):
                    continue
                problems.append(
                    f"{node.op_type} node {node.name!r} {kind} {name!r} is {_DTYPE.get(t or 0, 'of unknown type')}, expected float"
                )
    return problems


def tensorrt_qdq_problems(proto: onnx.ModelProto) -> list[str]:
    """Q/DQ a strongly typed TensorRT network cannot take: non-int8 quantized types, non-zero zero points, non-constant scales."""
    inits = {t.name: t for t in proto.graph.initializer}
    consts = {n.output[0]: next((a.t for a in n.attribute if a.name == "value"), None) for n in proto.graph.node if n.op_type == "Constant"}
    problems = []
    for node in proto.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = node.input[1]
        if scale not in inits and scale not in consts:
            problems.append(f"{node.op_type} {node.name!r}: scale {scale!r} is not a constant")
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            dtype = inits[node.input[0]].data_type
            if dtype != TensorProto.INT8:
                problems.append(f"DequantizeLinear {node.name!r} dequantizes a {_DTYPE.get(dtype, '?')} constant; TensorRT takes int8 only")
        if node.op_type == "QuantizeLinear" and (len(node.input) < 3 or not node.input[2]):
            problems.append(f"QuantizeLinear {node.name!r} has no zero point, so it produces uint8; TensorRT needs int8")
        if len(node.input) > 2 and node.input[2]:
            zp_proto = inits.get(node.input[2]) or consts.get(node.input[2])
            if zp_proto is None:
                problems.append(f"{node.op_type} {node.name!r}: zero point is not a constant")
                continue
            zp = numpy_helper.to_array(zp_proto)
            if zp.dtype != np.int8 or np.any(zp != 0):
                problems.append(
                    f"{node.op_type} {node.name!r}: zero point {zp.dtype} {zp.ravel()[:3].tolist()}; "
                    "TensorRT needs symmetric int8 (zero point 0)"
                )
    return problems


def io_problems(proto: onnx.ModelProto, spec: GraphSpec) -> list[str]:
    """Graph inputs and outputs (names, dtypes, shapes) against the fp32 graph's contract."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    problems = []
    for kind, got, want in (("inputs", inferred.graph.input, spec.inputs), ("outputs", inferred.graph.output, spec.outputs)):
        got_specs = [_tensor_spec(v) for v in got]
        if [(t.name, t.dtype, list(t.shape)) for t in got_specs] != [(t.name, t.dtype, list(t.shape)) for t in want]:
            problems.append(
                f"{kind} are {[(t.name, t.dtype, t.shape) for t in got_specs]}, "
                f"the fp32 graph has {[(t.name, t.dtype, t.shape) for t in want]}"
            )
    return problems


def _tensor_spec(v: onnx.ValueInfoProto) -> TensorSpec:
    tt = v.type.tensor_type
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
    shape: list[int | str] = [d.dim_param if d.HasField("dim_param") else int(d.dim_value) for d in tt.shape.dim]
    return TensorSpec(v.name, dtype, shape)


def count_ops(proto: onnx.ModelProto) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in proto.graph.node:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return dict(sorted(out.items()))


# -- fp16 ---------------------------------------------------------------------------------------------


@dataclass
class Fp16Encoder:
    proto: onnx.ModelProto
    kept_float32: list[str]  # node names
    clamped_values: int  # initializer values outside float16's range that the converter clamped


def fp16_encoder(encoder: onnx.ModelProto) -> Fp16Encoder:
    """The encoder in float16 with float32 inputs/outputs; its normalisation tail stays float32.

    The encoder is split at the output of its last weighted layer: the body is converted with
    keep_io_types (a Cast back to float32 at its end) and joined to the untouched float32 tail.
    (The converter's node_block_list would instead wrap each blocked node in Casts back to float16
    and leave the graph output float16.)
    """
    from onnx import compose
    from onnx.utils import Extractor
    from onnxconverter_common import float16

    named = _named(encoder, "encoder_")
    tail_names = encoder_tail(named)
    tail_set = set(tail_names)
    weighted = [n for n in named.graph.node if n.op_type in WEIGHTED_OPS]
    cut = weighted[-1].output[0]
    initializers = {t.name for t in named.graph.initializer}
    inputs = [i.name for i in named.graph.input if i.name not in initializers]
    outputs = [o.name for o in named.graph.output]
    # Where the tail reads the body: the last weighted layer's output, and any side branch from the image that the
    # tail joins (the centre-density tilt's cos φ and sin φ, train/tilt.py). The branch runs in float16 with the body.
    tail_nodes = [n for n in named.graph.node if n.name in tail_set]
    made_in_tail = {o for n in tail_nodes for o in n.output}
    joins = list(dict.fromkeys(i for n in tail_nodes for i in n.input if i and i not in made_in_tail and i not in initializers))
    extractor = Extractor(onnx.shape_inference.infer_shapes(named))
    body = extractor.extract_model(inputs, joins)
    tail = extractor.extract_model(joins, outputs)
    if cut not in joins or {n.name for n in tail.graph.node} != tail_set:
        raise CalibrationError(
            f"the encoder's normalisation tail {sorted(tail_set)} does not depend only on {joins!r}; cannot keep it float32."
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        body16 = float16.convert_float_to_float16(body, keep_io_types=True)
    clamped = sum(1 for w in caught if "truncated" in str(w.message))
    tail.ir_version = body16.ir_version = max(tail.ir_version, body16.ir_version)
    for g in (body16.graph, tail.graph):  # intermediate shapes only; the merge refuses a name typed in both
        kept = [v for v in g.value_info if v.name not in joins]
        del g.value_info[:]
        g.value_info.extend(kept)
    proto = compose.merge_models(body16, tail, io_map=[(j, j) for j in joins])
    del proto.graph.value_info[:]  # the converter leaves stale entries (e.g. "image" as float16); inference recomputes them
    del proto.metadata_props[:]
    proto.metadata_props.extend(named.metadata_props)
    return Fp16Encoder(proto, tail_names, clamped)


# -- int8 ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One weighted layer of the encoder: node name, op, channels in and out."""

    name: str
    op_type: str
    channels_in: int
    channels_out: int

    @property
    def channels(self) -> int:
        return min(self.channels_in, self.channels_out)


def weighted_layers(encoder: onnx.ModelProto) -> list[Layer]:
    """The encoder's quantizable layers (Conv/Gemm/MatMul with a constant weight), outside the normalisation tail."""
    inits = {t.name: list(t.dims) for t in encoder.graph.initializer}
    tail = set(encoder_tail(encoder))
    layers = []
    for node in encoder.graph.node:
        if node.op_type not in QUANTIZED_OPS or node.name in tail or len(node.input) < 2 or node.input[1] not in inits:
            continue
        dims = inits[node.input[1]]
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            cin, cout = dims[1] * group, dims[0]
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            cin, cout = (dims[1], dims[0]) if trans_b else (dims[0], dims[1])
        else:
            cin, cout = dims[-2], dims[-1]
        layers.append(Layer(node.name, node.op_type, int(cin), int(cout)))
    return layers


def prepare_for_quantization(encoder_path: Path, out: Path) -> onnx.ModelProto:
    """ONNX Runtime's quant_pre_process (symbolic shapes, constant folding), node names made unique."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(encoder_path), str(out), skip_symbolic_shape=False)
    proto = _named(onnx.load(str(out)), "encoder_")
    onnx.save_model(proto, str(out))
    return proto


def quantize_encoder(
    prepared: Path,
    out: Path,
    reader: Any,
    *,
    method: str,
    per_channel: bool,
    exclude: Sequence[str],
    ranges_cache: Path,
) -> onnx.ModelProto:
    """quantize_static in QDQ format; the first call calibrates and caches the ranges, later calls reuse them."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise CalibrationError(f"calibration method {method!r}; expected one of {list(CALIBRATION_METHODS)}.")
    extra = {
        "ActivationSymmetric": True,  # zero point 0: what TensorRT's Q/DQ needs
        "WeightSymmetric": True,
        "QuantizeBias": False,  # TensorRT cannot dequantize int32 biases; ORT quantizes them itself when fusing
        "CalibTensorRangeSymmetric": True,
        "CalibStridedMinMax": 1,  # collect one batch at a time: activations of every film never sit in memory at once
    }
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_static logs advice at WARNING on the root logger
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
            quantize_static(
                str(prepared), str(out), reader if not ranges_cache.is_file() else None,
                quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS), per_channel=per_channel,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                calibrate_method=methods[method], extra_options=extra, calibration_cache_path=str(ranges_cache),
            )
    except CalibrationError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime.quantization raises many types
        raise CalibrationError(f"ONNX Runtime could not quantize the encoder ({type(exc).__name__}: {exc}).") from exc
    finally:
        root.setLevel(level)
    return onnx.load(str(out))


def quantized_layers(proto: onnx.ModelProto) -> list[str]:
    """Names of the weighted nodes whose weight arrives through a DequantizeLinear (i.e. run in int8)."""
    dq_out = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    return [n.name for n in proto.graph.node if n.op_type in QUANTIZED_OPS and len(n.input) > 1 and n.input[1] in dq_out]


# -- merge --------------------------------------------------------------------------------------------


def merge_with_scorer(encoder: onnx.ModelProto, scorer: onnx.ModelProto, bank_initializer: str | None) -> onnx.ModelProto:
    """The merged model graph, by export's own merge; the bank keeps its name and its external data file.

    The bank initializer is taken out of the scorer during the merge (as a graph input, so it keeps
    its unprefixed name) and put back after it: onnx.compose would otherwise rename it and its checker
    would look for an external bank.data relative to the working directory.
    """
    enc = onnx.ModelProto()
    enc.CopyFrom(encoder)
    sco = onnx.ModelProto()
    sco.CopyFrom(scorer)
    ir = max(enc.ir_version, sco.ir_version)  # converters may write a newer IR version than torch did
    enc.ir_version = sco.ir_version = ir
    enc_ops = {o.domain or "ai.onnx": o.version for o in enc.opset_import}
    sco_ops = {o.domain or "ai.onnx": o.version for o in sco.opset_import}
    clash = {d: (enc_ops[d], sco_ops[d]) for d in enc_ops.keys() & sco_ops.keys() if enc_ops[d] != sco_ops[d]}
    if clash:
        raise CalibrationError(f"the variant encoder and scorer.onnx use different opsets {clash}; re-export the bundle.")
    del enc.metadata_props[:]
    for m in (enc, sco):  # a value_info naming a graph input/output makes add_prefix rename that input/output
        io = {v.name for v in (*m.graph.input, *m.graph.output)}
        kept = [v for v in m.graph.value_info if v.name not in io]
        del m.graph.value_info[:]
        m.graph.value_info.extend(kept)
    bank = next((t for t in sco.graph.initializer if t.name == bank_initializer), None) if bank_initializer else None
    if bank is not None:
        sco.graph.initializer.remove(bank)
        sco.graph.input.append(onnx.helper.make_tensor_value_info(bank.name, bank.data_type, list(bank.dims)))
    try:
        model = merge_encoder_scorer(enc, sco)
    except Exception as exc:  # noqa: BLE001 - onnx.compose raises ValueError and checker errors
        raise CalibrationError(f"could not merge the variant encoder with scorer.onnx ({type(exc).__name__}: {exc}).") from exc
    if bank is not None:
        inputs = [i for i in model.graph.input if i.name != bank.name]
        del model.graph.input[:]
        model.graph.input.extend(inputs)
        model.graph.initializer.append(bank)
    return model


def set_metadata(proto: onnx.ModelProto, base: onnx.ModelProto, extra: dict[str, str]) -> None:
    """The fp32 graph's provenance (salad.* properties), updated with this variant's."""
    props = {p.key: p.value for p in base.metadata_props}
    props.update(extra)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
