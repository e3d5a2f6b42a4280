"""A bundle → a Triton Inference Server model repository: encoder + scorer as ONNX Runtime models, chained by an ensemble.

```
REPO/README.md                        how to start the server and send a film
REPO/<name>_encoder/config.pbtxt      onnxruntime_onnx, dynamic batching, preprocessing in parameters
REPO/<name>_encoder/1/model.onnx      image [b,1,S,S] → embedding [b,D]   (the bundle's encoder at the precision)
REPO/<name>_scorer/config.pbtxt       onnxruntime_onnx, dynamic batching, always float32 (docs/architecture.md §5)
REPO/<name>_scorer/1/model.onnx       embedding → score, knn_angle        (bank inside; bank.data beside it if external)
REPO/<name>/config.pbtxt              ensemble: image → encoder → scorer → embedding, score, knn_angle;
REPO/<name>/1/                        preprocessing, threshold and bundle identity in its parameters
```

Names, dtypes and dims come from the bundle manifest (the batch axis becomes max_batch_size; a
tensor that is only [batch] is served as dims [1] with `reshape { shape: [] }`, Triton's rule for
per-item scalars). The encoder may be a graph of its own in the bundle ("encoder.fp16") or, when
calibration only wrote the merged variant ("model.fp16"), its image → embedding part, extracted
with onnx.utils. Before the repository appears, ONNX Runtime runs the two graphs chained as the
ensemble does on the bundle's reference films and must reproduce the bundle's merged graph.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import salad
from salad.bundle import Bundle, quiet_session
from salad.errors import BackendUnavailableError, BundleError, ExportValidationError, SaladError
from salad.manifest import (
    PRECISIONS,
    GraphSpec,
    Manifest,
    TensorSpec,
    atomic_directory,
    read_manifest,
    sha256_file,
)
from salad.metrics import cosines, row_abs_diff
from salad.scoring import SCORE_NAMES

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
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class Enum(str):
    """A protobuf enum value: written bare in text format (TYPE_FP32), not quoted."""


# -- text format ------------------------------------------------------------------------------------


def to_pbtxt(message: Mapping[str, Any], indent: int = 0) -> str:
    """A nested dict as protobuf text format: dicts are messages, lists of dicts repeated messages."""
    pad = "  " * indent
    lines: list[str] = []
    for key, value in message.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            lines += [f"{pad}{key} {{", to_pbtxt(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            blocks = [f"{pad}  {{\n{to_pbtxt(v, indent + 2)}\n{pad}  }}" for v in value]
            lines += [f"{pad}{key} [", ",\n".join(blocks), f"{pad}]"]
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(line for line in lines if line)


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    escapes = {'"': '\\"', "\\": "\\\\", "\n": "\\n"}
    text = "".join(escapes.get(c) or (c if c.isprintable() else f"\\{ord(c):03o}") for c in str(value))
    return f'"{text}"'


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


# -- the bundle's graphs ------------------------------------------------------------------------------


@dataclass
class _Graph:
    """A graph to serve: its spec (from the manifest) and the bytes or file that become model.onnx."""

    spec: GraphSpec
    source: Path | None = None  # copy this file …
    proto: Any = None  # … or save this onnx.ModelProto
    external: tuple[Path, ...] = ()


def _require_onnx() -> None:
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError as exc:
            raise BackendUnavailableError(
                f"salad export-triton needs {module} to check the graphs it writes; install it with `pip install 'salad-edge[train]'`."
            ) from exc


def _encoder(root: Path, manifest: Manifest, precision: str) -> _Graph:
    """The encoder at `precision`: its own graph if the bundle has one, else the image → embedding part of model.<precision>."""
    key = manifest.graph_key("encoder", precision)
    if key in manifest.graphs:
        return _Graph(manifest.graphs[key], source=manifest.path_of(root, manifest.graphs[key].file))
    import onnx
    from onnx.utils import Extractor

    merged = manifest.graph("model", precision)  # BundleError with the list of graphs and the calibrate hint
    plain = manifest.graph("encoder")
    inputs = [t for t in merged.inputs if t.name in {i.name for i in plain.inputs}]
    outputs = [t for t in merged.outputs if t.name in {o.name for o in plain.outputs}]
    proto = onnx.load(str(manifest.path_of(root, merged.file)), load_external_data=False)
    sub = Extractor(proto).extract_model([t.name for t in inputs], [t.name for t in outputs])
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in sub.graph.initializer):
        raise BundleError(f"{root / merged.file}: its encoder part keeps weights in external data; export the encoder as a graph of its own.")
    spec = GraphSpec(
        file=f"{merged.file} (encoder part)", sha256="", precision=precision, opset=merged.opset, inputs=inputs, outputs=outputs,
        details={"extracted_from": merged.file},
    )
    return _Graph(spec, proto=sub)


def _scorer(root: Path, manifest: Manifest, precision: str) -> _Graph:
    """The scorer (float32 in every precision unless the bundle has its own variant), with the bank inside it."""
    key = manifest.graph_key("scorer", precision)
    spec = manifest.graphs[key] if key in manifest.graphs else manifest.graph("scorer")
    bundle = Bundle(root, manifest)
    if not bundle.takes_bank("scorer", spec.precision):
        return _Graph(spec, source=manifest.path_of(root, spec.file), external=tuple(manifest.path_of(root, f) for f in spec.external_data))
    # A --bank-as-input bundle: Triton batches every input, so bind bank.npy into the graph as export does.
    import onnx

    from salad.export.graphs import bank_tensor, bind_bank  # imports torch: only for this bundle form

    bank_file, bank = bundle.bank_path, bundle.load_bank()
    proto = bind_bank(onnx.load(str(manifest.path_of(root, spec.file))), bank_tensor(bank, None))
    bound = GraphSpec(
        file=spec.file, sha256="", precision=spec.precision, opset=spec.opset,
        inputs=[t for t in spec.inputs if t.name != "bank"], outputs=list(spec.outputs), details={"bank": f"bound from {bank_file.name}"},
    )
    return _Graph(bound, proto=proto)


def _write_graph(graph: _Graph, folder: Path) -> str:
    import onnx

    folder.mkdir(parents=True)
    target = folder / MODEL_FILE
    if graph.source is not None:
        shutil.copyfile(graph.source, target)
    else:
        onnx.save_model(graph.proto, str(target))
    for extra in graph.external:
        shutil.copyfile(extra, folder / extra.name)
    return sha256_file(target)


def _check_chain(repo: Path, root: Path, manifest: Manifest, encoder: _Graph, scorer: _Graph, names: dict[str, str],
                 precision: str, max_batch: int) -> dict[str, float]:
    """Run the written encoder → scorer with ONNX Runtime as the ensemble does; they must reproduce model.<precision>."""
    bundle = Bundle(root, manifest)
    enc = quiet_session(repo / names["encoder"] / VERSION / MODEL_FILE)
    sco = quiet_session(repo / names["scorer"] / VERSION / MODEL_FILE)
    merged_spec = manifest.graph("model", precision)
    merged = bundle.session("model", precision)
    images = bundle.load_reference(["image"])["image"]
    image_spec = encoder.spec.inputs[0]
    extra = bundle.static_feed("model", precision)
    got: dict[str, list[np.ndarray]] = {}
    want: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), max_batch):
        x = images[start : start + max_batch].astype(image_spec.dtype)
        embedding = dict(zip([o.name for o in enc.get_outputs()], enc.run(None, {image_spec.name: x}), strict=True))
        scores = dict(zip([o.name for o in sco.get_outputs()], sco.run(None, {t.name: embedding[t.name] for t in scorer.spec.inputs}), strict=True))
        for k, v in {**embedding, **scores}.items():
            got.setdefault(k, []).append(v)
        ref = merged.run(None, {image_spec.name: x, **extra})
        for k, v in zip([o.name for o in merged.get_outputs()], ref, strict=True):
            want.setdefault(k, []).append(v)
    tol = manifest.tolerances(precision)
    problems, measured = [], {}
    for name in SCORE_NAMES:
        diff = float(row_abs_diff(np.concatenate(got[name]), np.concatenate(want[name])).max(initial=0.0))
        measured[f"max_abs_{name}_diff"] = diff
        limit = tol.get(f"max_abs_{name}_diff", 1e-5)
        if not diff <= limit:
            problems.append(f"{name}: max |Δ| {diff:.3g} > {limit:g}")
    cosine = float(cosines(np.concatenate(got["embedding"]), np.concatenate(want["embedding"])).min(initial=1.0))
    measured["embedding_cosine_min"] = cosine
    if not cosine >= tol.get("embedding_cosine_min", 0.99999):
        problems.append(f"embedding: min cosine {cosine:.7f} < {tol.get('embedding_cosine_min', 0.99999)}")
    if problems:
        raise ExportValidationError(
            f"the Triton encoder → scorer chain does not reproduce {merged_spec.file} on {len(images)} reference films: "
            + "; ".join(problems) + ". Nothing was written."
        )
    return measured


# -- the repository -----------------------------------------------------------------------------------


def export_triton(
    bundle: str | Path,
    out: str | Path,
    *,
    precision: str = "fp32",
    max_batch: int = 32,
    name: str = "salad",
    tensorrt_accelerator: bool = False,
    queue_delay_us: int = 100,
    force: bool = False,
) -> Path:
    """Write the Triton model repository `out` for `bundle` at `precision`; return `out`.

    The repository appears whole or not at all, and only after ONNX Runtime has run its encoder →
    scorer chain on the bundle's reference films and matched the bundle's merged graph.
    """
    if precision not in PRECISIONS:
        raise SaladError(f"--precision {precision!r}; expected one of {list(PRECISIONS)}.")
    if max_batch < 1:
        raise SaladError(f"--max-batch {max_batch}; expected a positive batch size (e.g. 32).")
    if queue_delay_us < 0:
        raise SaladError(f"--max-queue-delay-us {queue_delay_us}; expected ≥ 0 microseconds.")
    if not _NAME.match(name):
        raise SaladError(f"--name {name!r}; a Triton model name here is letters, digits, '_', '.' and '-' (e.g. 'salad').")
    root, out = Path(bundle), Path(out)
    manifest = read_manifest(root, verify=True)
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents or out.resolve() in root.resolve().parents:
        raise SaladError(f"--out {out} overlaps the bundle {root}; choose a directory outside it.")
    _require_onnx()
    encoder, scorer = _encoder(root, manifest, precision), _scorer(root, manifest, precision)
    _check_wiring(encoder.spec, scorer.spec, manifest)
    names = {"encoder": f"{name}_encoder", "scorer": f"{name}_scorer", "ensemble": name}
    identity = {
        "salad.toolkit_version": salad.__version__,
        "salad.precision": precision,
        "salad.bank_sha256": str(manifest.bank.get("sha256", "")),
        "salad.bank_rows": str(manifest.bank.get("rows", "")),
        "salad.k": str(manifest.k),
        "salad.bundle_created": manifest.created,
    }
    preprocessing = json.dumps(manifest.preprocessing, sort_keys=True, ensure_ascii=False)
    with atomic_directory(out, force=force, replaceable=is_triton_repository, what="Triton model repository") as tmp:
        digests = {
            "encoder": _write_graph(encoder, tmp / names["encoder"] / VERSION),
            "scorer": _write_graph(scorer, tmp / names["scorer"] / VERSION),
        }
        (tmp / names["ensemble"] / VERSION).mkdir(parents=True)  # Triton wants a version folder, even empty
        configs = {
            "encoder": onnx_model_config(
                names["encoder"], encoder.spec, max_batch, queue_delay_us,
                {**identity, "salad.preprocessing": preprocessing, "salad.graph_sha256": digests["encoder"]},
                precision if tensorrt_accelerator else None,
            ),
            # The scorer stays float32 even under TensorRT: arccos near cos = 1 and sums over the bank need it.
            "scorer": onnx_model_config(
                names["scorer"], scorer.spec, max_batch, queue_delay_us,
                {**identity, "salad.graph_sha256": digests["scorer"]}, "fp32" if tensorrt_accelerator else None,
            ),
            "ensemble": ensemble_config(
                names["ensemble"], (names["encoder"], encoder.spec), (names["scorer"], scorer.spec), max_batch,
                {
                    **identity, "salad.preprocessing": preprocessing,
                    "salad.threshold": json.dumps(manifest.threshold, sort_keys=True, ensure_ascii=False),
                    "salad.scores": json.dumps(manifest.scores, sort_keys=True, ensure_ascii=False),
                    "salad.encoder_sha256": digests["encoder"], "salad.scorer_sha256": digests["scorer"],
                },
            ),
        }
        for key, config in configs.items():
            (tmp / names[key] / "config.pbtxt").write_text(to_pbtxt(config) + "\n", encoding="utf-8")
        measured = _check_chain(tmp, root, manifest, encoder, scorer, names, precision, max_batch)
        (tmp / "README.md").write_text(
            repository_readme(manifest, names, configs, precision, max_batch, tensorrt_accelerator, root, measured), encoding="utf-8",
        )
    return out


def is_triton_repository(path: Path) -> bool:
    """A directory `--force` may replace: a model repository (at least one MODEL/config.pbtxt), as export-triton writes."""
    return any(path.glob("*/config.pbtxt"))


def _check_wiring(encoder: GraphSpec, scorer: GraphSpec, manifest: Manifest) -> None:
    """The encoder's outputs must feed the scorer's inputs by name, dtype and shape."""
    produced = {t.name: t for t in encoder.outputs}
    for t in scorer.inputs:
        source = produced.get(t.name)
        if source is None or source.dtype != t.dtype or source.shape != t.shape:
            raise BundleError(
                f"the scorer input {t.name!r} {t.dtype}{t.shape} is not produced by the encoder (outputs "
                f"{[(o.name, o.dtype, o.shape) for o in encoder.outputs]}); the bundle's graphs disagree, re-export it."
            )
    size = int(manifest.preprocessing.get("size", 0))
    image = encoder.inputs[0]
    if [len(encoder.inputs), *image.shape[1:]] != [1, 1, size, size]:
        raise BundleError(f"encoder inputs {[(t.name, t.shape) for t in encoder.inputs]}; expected one image [batch, 1, {size}, {size}].")


# -- the repository's README ----------------------------------------------------------------------------


def _shape(tensor: Mapping[str, Any]) -> str:
    return f"{tensor['data_type'].removeprefix('TYPE_')} [{', '.join(str(d) for d in tensor['dims'])}]"


def repository_readme(
    manifest: Manifest, names: Mapping[str, str], configs: Mapping[str, Mapping[str, Any]], precision: str, max_batch: int,
    tensorrt_accelerator: bool, bundle: Path, measured: Mapping[str, float],
) -> str:
    """How to serve this repository and send it a film: written next to the models, with their real names."""
    ensemble = names["ensemble"]
    t = manifest.threshold
    rows = [
        f"| `{names[key]}` | `{configs[key]['platform']}` | "
        + ", ".join(f"`{i['name']}` {_shape(i)}" for i in configs[key]["input"]) + " | "
        + ", ".join(f"`{o['name']}` {_shape(o)}" for o in configs[key]["output"]) + " |"
        for key in ("ensemble", "encoder", "scorer")
    ]
    size = manifest.preprocessing.get("size")
    trt = (
        f"ONNX Runtime's TensorRT provider is enabled on GPUs (encoder `precision_mode` {TRT_PRECISION[precision]}, scorer FP32; "
        f"one profile over batch 1..{max_batch}; engines cached under /tmp/triton-trt-cache/ in the server)."
        if tensorrt_accelerator else "ONNX Runtime runs the models (CUDA on GPUs, else CPU); `--tensorrt-accelerator` adds TensorRT."
    )
    achieved = ", ".join(f"{k} {v:.3f}" for k, v in (t.get("achieved") or {}).items() if v is not None)
    return f"""# Triton model repository `{ensemble}` (salad-edge {salad.__version__})

Written by `salad export-triton` from the bundle `{bundle.name}` (created {manifest.created}) at precision
**{precision}**: memory bank of {manifest.bank.get('rows')} rows (sha256 `{str(manifest.bank.get('sha256', ''))[:16]}…`), K = {manifest.k}.
Send requests to the ensemble `{ensemble}`; it runs `{names['encoder']}` then `{names['scorer']}`.

| model | platform | inputs (per item) | outputs (per item) |
|---|---|---|---|
{chr(10).join(rows)}

Every model batches up to {max_batch} items (`max_batch_size`); the encoder and the scorer use dynamic
batching, so concurrent requests share one run. A per-item scalar is `[1]` for clients (Triton's
`reshape {{ shape: [] }}` rule): read `score[:, 0]`. {trt}

**Decision:** abnormal if `{t.get('score', 'score')}` > **{t.get('value')}** (operating point {t.get('operating_point')}; {achieved}
on the bundle's validation films). The ensemble's `parameters` carry the threshold (`salad.threshold`), the
preprocessing (`salad.preprocessing`) and the bundle identity (`salad.bank_sha256`, …), so a client needs no
other file. Before writing, ONNX Runtime ran the encoder → scorer chain on the bundle's
{manifest.reference.get('images')} reference films and matched the bundle's merged graph (max |Δscore|
{measured.get('max_abs_score_diff', float('nan')):.2g}, min embedding cosine {measured.get('embedding_cosine_min', float('nan')):.7f}).

## Start the server

```bash
docker run --rm --gpus all -p 8000:8000 -p 8001:8001 -p 8002:8002 \\
    -v "$PWD/REPO":/models nvcr.io/nvidia/tritonserver:<YY.MM>-py3 \\
    tritonserver --model-repository=/models
curl -sf localhost:8000/v2/health/ready && curl -s localhost:8000/v2/models/{ensemble}/config
```

Replace `REPO` with this folder and `<YY.MM>` with a Triton release. Without a GPU, leave out `--gpus all`:
the models run on CPU. Ports: 8000 HTTP, 8001 gRPC, 8002 metrics.

## Score films

```bash
pip install 'salad-edge[runtime]' 'tritonclient[http]'
salad score --triton http://localhost:8000 BUNDLE films/        # grpc://localhost:8001 for gRPC
```

`BUNDLE` is the bundle this repository came from: the client preprocesses exactly as the model was
trained (`salad.preprocess`), and refuses a server whose model was exported from another bundle.

## Send a film with tritonclient

```python
import json

import tritonclient.http as httpclient

from salad.preprocess import PreprocessConfig, load_image

client = httpclient.InferenceServerClient("localhost:8000")
params = client.get_model_config("{ensemble}")["parameters"]
preprocessing = PreprocessConfig.from_dict(json.loads(params["salad.preprocessing"]["string_value"]))
threshold = json.loads(params["salad.threshold"]["string_value"])

image = load_image("film.png", preprocessing)[None]  # float32 [1, 1, {size}, {size}] in [-1, 1]
request = httpclient.InferInput("image", list(image.shape), "FP32")
request.set_data_from_numpy(image)
outputs = [httpclient.InferRequestedOutput(name) for name in ("score", "knn_angle")]
result = client.infer("{ensemble}", [request], outputs=outputs)
score = float(result.as_numpy(threshold["score"])[0, 0])
print(f"{{threshold['score']}} {{score:.4f}}:", "abnormal" if score > threshold["value"] else "normal")
```
"""
