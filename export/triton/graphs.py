"""The two graphs a repository serves (the encoder, or the image → embedding part of the merged model; the
scorer with its bank inside), and the ONNX Runtime check that chained they reproduce the bundle."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from salad.bundle import Bundle, quiet_session
from salad.errors import BackendUnavailableError, BundleError, ExportValidationError
from salad.manifest import (
    GraphSpec,
    Manifest,
    sha256_file,
)
from salad.metrics import cosines, row_abs_diff
from salad.scoring import SCORES
from salad.verdict import default_tolerances, failed, judge

from .config import MODEL_FILE, VERSION

# -- the bundle's graphs ------------------------------------------------------------------------------


@dataclass
class _Graph:
    """A graph to serve: its spec (from the manifest) and the bytes or file that become model.onnx."""

    spec: GraphSpec
    source: Path | None = None  # copy this file …
    proto: Any = None  # … or save this onnx.ModelProto
    external: tuple[Path, ...] = ()


def require_onnx() -> None:
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError as exc:
            raise BackendUnavailableError(
                f"salad export-triton needs {module} to check the graphs it writes; install it with `pip install 'salad-edge[train]'`."
            ) from exc


def encoder_graph(bundle: Bundle, precision: str) -> _Graph:
    """The encoder at `precision`: its own graph if the bundle has one, else the image → embedding part of model.<precision>."""
    root, manifest = bundle.root, bundle.manifest
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
        raise BundleError(
            f"{root / merged.file}: its encoder part keeps weights in external data; export the encoder as a graph of its own."
        )
    spec = GraphSpec(
        file=f"{merged.file} (encoder part)", sha256="", precision=precision, opset=merged.opset, inputs=inputs, outputs=outputs,
        details={"extracted_from": merged.file},
    )
    return _Graph(spec, proto=sub)


def scorer_graph(bundle: Bundle, precision: str) -> _Graph:
    """The scorer (float32 in every precision unless the bundle has its own variant), with the bank inside it."""
    root, manifest = bundle.root, bundle.manifest
    key = manifest.graph_key("scorer", precision)
    spec = manifest.graphs[key] if key in manifest.graphs else manifest.graph("scorer")
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


def write_graph(graph: _Graph, folder: Path) -> str:
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


def check_chain(repo: Path, bundle: Bundle, encoder: _Graph, scorer: _Graph, names: dict[str, str],
                 precision: str, max_batch: int) -> dict[str, float]:
    """Run the written encoder → scorer with ONNX Runtime as the ensemble does; they must reproduce model.<precision>."""
    manifest = bundle.manifest
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
        scorer_feed = {t.name: embedding[t.name] for t in scorer.spec.inputs}
        scores = dict(zip([o.name for o in sco.get_outputs()], sco.run(None, scorer_feed), strict=True))
        for k, v in {**embedding, **scores}.items():
            got.setdefault(k, []).append(v)
        ref = merged.run(None, {image_spec.name: x, **extra})
        for k, v in zip([o.name for o in merged.get_outputs()], ref, strict=True):
            want.setdefault(k, []).append(v)
    tol = {**default_tolerances("fp32"), **manifest.tolerances(precision)}
    measured = {
        score.diff_metric("max"): float(row_abs_diff(np.concatenate(got[name]), np.concatenate(want[name])).max(initial=0.0))
        for name, score in SCORES.items()
    }
    measured["embedding_cosine_min"] = float(
        cosines(np.concatenate(got["embedding"]), np.concatenate(want["embedding"])).min(initial=1.0))
    output = {score.diff_metric("max"): name for name, score in SCORES.items()}
    problems = [
        f"{output[c.metric]}: {c.sentence('.3g', 'max |Δ|')}" if c.metric in output else f"embedding: {c.sentence('.7f')}"
        for c in failed(judge(measured, tol))
    ]
    if problems:
        raise ExportValidationError(
            f"the Triton encoder → scorer chain does not reproduce {merged_spec.file} on {len(images)} reference films: "
            + "; ".join(problems) + ". Nothing was written.",
            failures=[{"check": "triton chain", "message": p} for p in problems],
        )
    return measured


def check_wiring(encoder: GraphSpec, scorer: GraphSpec, manifest: Manifest) -> None:
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
