"""Triton model configs from the bundle manifest, written through Triton's own protobuf (text format).

The configs are built as plain dicts in the protobuf's JSON mapping (maps as lists of {key, value}
entries, as text format writes them), turned into tritonclient's `model_config_pb2.ModelConfig` and
printed by protobuf's `text_format`: Triton's own schema checks every field name and type, and no
serialiser of ours can write something Triton parses differently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from salad.errors import BackendUnavailableError, BundleError
from salad.manifest import (
    GraphSpec,
    TensorSpec,
)

BATCH = "batch"
ONNX_PLATFORM = "onnxruntime_onnx"
ENSEMBLE_PLATFORM = "ensemble"
MODEL_FILE = "model.onnx"
VERSION = "1"
#: numpy dtype name (as the manifest writes it) → Triton's model-config DataType.
TRITON_DTYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
    "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
}
#: Bundle precision → precision_mode of ONNX Runtime's TensorRT execution provider in Triton.
TRT_PRECISION = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class Enum(str):
    """A protobuf enum value: written bare in text format (TYPE_FP32), not quoted."""


# -- configs from the manifest ----------------------------------------------------------------------


def triton_dtype(spec: TensorSpec, where: str) -> Enum:
    if spec.dtype not in TRITON_DTYPES:
        raise BundleError(f"{where}: tensor {spec.name!r} has dtype {spec.dtype!r}, which Triton has no type for.")
    return Enum(TRITON_DTYPES[spec.dtype])


def triton_tensor(spec: TensorSpec, where: str, reshape: bool = True) -> dict[str, Any]:
    """One config input/output: the manifest's name and dtype, its dims without the leading batch axis."""
    if not spec.shape or spec.shape[0] != BATCH:
        raise BundleError(f"{where}: tensor {spec.name!r} has shape {spec.shape}; Triton batching needs a leading {BATCH!r} axis.")
    dims = spec.shape[1:]
    if any(not isinstance(d, int) for d in dims):
        raise BundleError(f"{where}: tensor {spec.name!r} has shape {spec.shape}; only the batch axis may be dynamic.")
    tensor: dict[str, Any] = {"name": spec.name, "data_type": triton_dtype(spec, where)}
    if dims:
        tensor["dims"] = list(dims)
    else:  # [batch] only: the API shape is [batch, 1], the model's is [batch]
        tensor["dims"] = [1]
        if reshape:
            tensor["reshape"] = {"shape": []}
    return tensor


def _parameters(values: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"key": k, "value": {"string_value": v}} for k, v in values.items()]


def _accelerator(precision: str, inputs: Sequence[TensorSpec], max_batch: int, model: str) -> dict[str, Any]:
    """ONNX Runtime's TensorRT provider: precision, one optimisation profile over 1..max_batch, engine cache."""

    def shapes(batch: int) -> str:
        return ",".join(f"{t.name}:{'x'.join(str(d) for d in [batch, *t.shape[1:]])}" for t in inputs)

    params = {
        "precision_mode": TRT_PRECISION[precision],
        "max_workspace_size_bytes": str(1 << 30),
        "trt_profile_min_shapes": shapes(1),
        "trt_profile_opt_shapes": shapes(max_batch),
        "trt_profile_max_shapes": shapes(max_batch),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": f"/tmp/triton-trt-cache/{model}",
    }
    accel = {"name": "tensorrt", "parameters": [{"key": k, "value": v} for k, v in params.items()]}
    return {"execution_accelerators": {"gpu_execution_accelerator": [accel]}}


def onnx_model_config(
    name: str, graph: GraphSpec, max_batch: int, queue_delay_us: int, parameters: Mapping[str, str],
    tensorrt_precision: str | None,
) -> dict[str, Any]:
    """config.pbtxt of one ONNX Runtime model with dynamic batching."""
    where = f"graph {graph.file}"
    config: dict[str, Any] = {
        "name": name,
        "platform": ONNX_PLATFORM,
        "max_batch_size": max_batch,
        "input": [triton_tensor(t, where) for t in graph.inputs],
        "output": [triton_tensor(t, where) for t in graph.outputs],
        "dynamic_batching": {"max_queue_delay_microseconds": queue_delay_us},
        "parameters": _parameters(parameters),
    }
    if tensorrt_precision is not None:
        config["optimization"] = _accelerator(tensorrt_precision, graph.inputs, max_batch, name)
    return config


def ensemble_config(
    name: str, encoder: tuple[str, GraphSpec], scorer: tuple[str, GraphSpec], max_batch: int, parameters: Mapping[str, str],
) -> dict[str, Any]:
    """The ensemble: its inputs are the encoder's, its outputs the embedding and the scorer's outputs."""
    (enc_name, enc), (sco_name, sco) = encoder, scorer
    where = f"ensemble {name}"
    outputs = [*enc.outputs, *sco.outputs]
    return {
        "name": name,
        "platform": ENSEMBLE_PLATFORM,
        "max_batch_size": max_batch,
        "input": [triton_tensor(t, where, reshape=False) for t in enc.inputs],
        "output": [triton_tensor(t, where, reshape=False) for t in outputs],
        "ensemble_scheduling": {
            "step": [
                {
                    "model_name": enc_name, "model_version": -1,
                    "input_map": [{"key": t.name, "value": t.name} for t in enc.inputs],
                    "output_map": [{"key": t.name, "value": t.name} for t in enc.outputs],
                },
                {
                    "model_name": sco_name, "model_version": -1,
                    "input_map": [{"key": t.name, "value": t.name} for t in sco.inputs],
                    "output_map": [{"key": t.name, "value": t.name} for t in sco.outputs],
                },
            ]
        },
        "parameters": _parameters(parameters),
    }


def require_model_config() -> None:
    """BackendUnavailableError naming the extra when Triton's model-config protobuf (tritonclient[grpc]) is missing."""
    try:
        import google.protobuf.json_format  # noqa: F401
        import tritonclient.grpc.model_config_pb2  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError(
            f"salad export-triton writes config.pbtxt through Triton's own protobuf, which needs tritonclient[grpc] "
            f"({exc}); install it with `pip install 'salad-edge[triton]'`."
        ) from exc


def _as_json_mapping(value: Any) -> Any:
    """Lists of {key, value} entries (how text format writes a protobuf map) → the dict ParseDict expects."""
    if isinstance(value, Mapping):
        return {k: _as_json_mapping(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        if value and all(isinstance(v, Mapping) and set(v) == {"key", "value"} for v in value):
            return {v["key"]: _as_json_mapping(v["value"]) for v in value}
        return [_as_json_mapping(v) for v in value]
    return value


def config_text(config: Mapping[str, Any]) -> str:
    """config.pbtxt's text: `config` parsed into tritonclient's ModelConfig, printed by protobuf's text_format."""
    require_model_config()
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    try:
        message = json_format.ParseDict(_as_json_mapping(config), model_config_pb2.ModelConfig())
    except json_format.ParseError as exc:
        raise BundleError(f"model config {config.get('name')!r} does not fit Triton's ModelConfig schema: {exc}") from exc
    return str(text_format.MessageToString(message))
