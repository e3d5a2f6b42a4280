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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import salad
from salad.bundle import Bundle
from salad.errors import ConfigError
from salad.manifest import (
    PRECISIONS,
    atomic_directory,
)

from .config import (
    NAME_PATTERN,
    TRT_PRECISION,
    VERSION,
    config_text,
    ensemble_config,
    onnx_model_config,
    require_model_config,
)
from .graphs import check_chain, check_wiring, encoder_graph, require_onnx, scorer_graph, write_graph

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
        raise ConfigError(f"--precision {precision!r}; expected one of {list(PRECISIONS)}.")
    if max_batch < 1:
        raise ConfigError(f"--max-batch {max_batch}; expected a positive batch size (e.g. 32).")
    if queue_delay_us < 0:
        raise ConfigError(f"--max-queue-delay-us {queue_delay_us}; expected ≥ 0 microseconds.")
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"--name {name!r}; a Triton model name here is letters, digits, '_', '.' and '-' (e.g. 'salad').")
    root, out = Path(bundle), Path(out)
    opened = Bundle.open(root, verify=True)
    manifest = opened.manifest
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents or out.resolve() in root.resolve().parents:
        raise ConfigError(f"--out {out} overlaps the bundle {root}; choose a directory outside it.")
    require_onnx()
    require_model_config()
    encoder, scorer = encoder_graph(opened, precision), scorer_graph(opened, precision)
    check_wiring(encoder.spec, scorer.spec, manifest)
    names = {"encoder": f"{name}_encoder", "scorer": f"{name}_scorer", "ensemble": name}
    identity = {
        "salad.toolkit_version": salad.__version__,
        "salad.precision": precision,
        "salad.bank_sha256": manifest.bank.sha256,
        "salad.bank_rows": str(manifest.bank.rows),
        "salad.k": str(manifest.k),
        "salad.bundle_created": manifest.created,
    }
    preprocessing = json.dumps(manifest.preprocessing, sort_keys=True, ensure_ascii=False)
    with atomic_directory(out, force=force, replaceable=is_triton_repository, what="Triton model repository") as tmp:
        digests = {
            "encoder": write_graph(encoder, tmp / names["encoder"] / VERSION),
            "scorer": write_graph(scorer, tmp / names["scorer"] / VERSION),
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
                    "salad.threshold": json.dumps(manifest.threshold.to_json(), sort_keys=True, ensure_ascii=False),
                    "salad.scores": json.dumps(manifest.scores.to_json(), sort_keys=True, ensure_ascii=False),
                    "salad.encoder_sha256": digests["encoder"], "salad.scorer_sha256": digests["scorer"],
                },
            ),
        }
        for key, config in configs.items():
            (tmp / names[key] / "config.pbtxt").write_text(config_text(config), encoding="utf-8")
        measured = check_chain(tmp, opened, encoder, scorer, names, precision, max_batch)
        (tmp / "README.md").write_text(
            repository_readme(opened, names, configs, precision, max_batch, tensorrt_accelerator, measured), encoding="utf-8",
        )
    return out


def is_triton_repository(path: Path) -> bool:
    """A directory `--force` may replace: a model repository (at least one MODEL/config.pbtxt), as export-triton writes."""
    return any(path.glob("*/config.pbtxt"))


# -- the repository's README ----------------------------------------------------------------------------


def _shape(tensor: Mapping[str, Any]) -> str:
    return f"{tensor['data_type'].removeprefix('TYPE_')} [{', '.join(str(d) for d in tensor['dims'])}]"


def repository_readme(
    bundle: Bundle, names: Mapping[str, str], configs: Mapping[str, Mapping[str, Any]], precision: str, max_batch: int,
    tensorrt_accelerator: bool, measured: Mapping[str, float],
) -> str:
    """How to serve this repository and send it a film: written next to the models, with their real names."""
    manifest = bundle.manifest
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
    achieved = ", ".join(f"{k} {v:.3f}" for k, v in (t.achieved or {}).items() if v is not None)
    return f"""# Triton model repository `{ensemble}` (salad-edge {salad.__version__})

Written by `salad export-triton` from the bundle `{bundle.root.name}` (created {manifest.created}) at precision
**{precision}**: memory bank of {manifest.bank.rows} rows (sha256 `{manifest.bank.sha256[:16]}…`), K = {manifest.k}.
Send requests to the ensemble `{ensemble}`; it runs `{names['encoder']}` then `{names['scorer']}`.

| model | platform | inputs (per item) | outputs (per item) |
|---|---|---|---|
{chr(10).join(rows)}

Every model batches up to {max_batch} items (`max_batch_size`); the encoder and the scorer use dynamic
batching, so concurrent requests share one run. A per-item scalar is `[1]` for clients (Triton's
`reshape {{ shape: [] }}` rule): read `score[:, 0]`. {trt}

**Decision:** abnormal if `{t.score or 'score'}` > **{t.value}** (operating point {t.operating_point}; {achieved}
on the bundle's validation films). The ensemble's `parameters` carry the threshold (`salad.threshold`), the
preprocessing (`salad.preprocessing`) and the bundle identity (`salad.bank_sha256`, …), so a client needs no
other file. Before writing, ONNX Runtime ran the encoder → scorer chain on the bundle's
{manifest.reference.images} reference films and matched the bundle's merged graph (max |Δscore|
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
