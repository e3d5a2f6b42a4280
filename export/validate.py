"""Bundle validation: structure (onnx.checker, shape inference, the graph contract) and ORT-vs-PyTorch parity.

Runs right after export, inside the temporary directory, and on any existing bundle through
`validate_bundle`. Needs onnx, onnxruntime and numpy only (the PyTorch side is reference.npz), and
checks everything before raising one ExportValidationError that lists every failing output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from salad.bundle import Bundle
from salad.errors import ExportValidationError
from salad.manifest import GraphSpec, confined
from salad.metrics import agreeing, cosines, row_abs_diff
from salad.scoring import KNN_ANGLE, SCORE_NAMES, SCORES
from salad.verdict import failed, judge

from .spec import BATCH, MIN_OPSET, REFERENCE_FILE, VALIDATION_BATCH_SIZES

#: The tolerance (manifest parity key) on each scalar output's max |Δ|; embeddings are held to a cosine.
_TOLERANCE_OF = {name: score.diff_metric("max") for name, score in SCORES.items()}
_REL_EPS = 1e-8
#: Mean kNN angles (rad) below this are too close to cos = 1 for float32 arccos to give stable scores.
_WELL_CONDITIONED_ANGLE = 1e-2


@dataclass
class _Comparison:
    """One output of one graph at one batch size against its expected values."""

    max_abs: float
    max_rel: float
    worst: int
    cosine_min: float | None = None
    agreement: float | None = None
    disagree: list[int] | None = None


def _compare(name: str, got: np.ndarray, want: np.ndarray, threshold: float, decided_by: str) -> _Comparison:
    per_image = row_abs_diff(got, want)
    want64 = want.astype(np.float64)
    rel = np.abs(got.astype(np.float64) - want64) / np.maximum(np.abs(want64), _REL_EPS)  # relative Δ: validation's own
    cmp = _Comparison(float(per_image.max(initial=0.0)), float(rel.max(initial=0.0)), int(per_image.argmax()) if per_image.size else 0)
    if name == "embedding":
        cos = cosines(got, want)
        cmp.cosine_min = float(cos.min(initial=1.0))
        cmp.worst = int(cos.argmin()) if cos.size else 0
    if name == decided_by:
        same = agreeing(got, want, threshold)
        cmp.agreement = float(same.mean()) if same.size else 1.0
        cmp.disagree = np.flatnonzero(~same).tolist()
    return cmp


def _failures(cmp: _Comparison, name: str, where: str, tol: dict[str, float], paths: np.ndarray, threshold: float) -> list[str]:
    """Human lines for every tolerance `cmp` breaks (none when it passes), judged by salad.verdict."""
    worst = str(paths[cmp.worst]) if len(paths) else "?"
    diffs = f"max |Δ| {cmp.max_abs:.3g}, max rel {cmp.max_rel:.3g}, worst image {worst}"
    measured: dict[str, float | None] = {}
    if cmp.cosine_min is not None:
        measured["embedding_cosine_min"] = cmp.cosine_min
    key = _TOLERANCE_OF.get(name)
    if key is not None:
        measured[key] = cmp.max_abs
    if cmp.agreement is not None:
        measured["label_agreement"] = cmp.agreement
    out = []
    for check in failed(judge(measured, tol)):
        if check.metric == "label_agreement":
            names = ", ".join(str(paths[i]) for i in (cmp.disagree or [])[:5])
            out.append(
                f"{where} output {name!r}: labels at threshold {threshold:.6g} agree on {cmp.agreement:.1%} of images "
                f"< {tol['label_agreement']:.1%}{check.would_pass()} (differ: {names})"
            )
        else:
            text = check.sentence(".7f", "min cosine") if check.bound == "min" else check.sentence(".3g", "max |Δ|")
            out.append(f"{where} output {name!r}: {text} ({diffs})")
    return out


def check_structure(root: Path, key: str, spec: GraphSpec) -> list[str]:
    """onnx.checker (full, with shape inference) on the file, then its opset and I/O against the manifest."""
    import onnx

    from .graphs import tensor_specs

    path = confined(root, spec.file)
    where = f"{key} ({spec.file})"
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # noqa: BLE001 - checker and inference raise several types
        return [f"{where}: onnx.checker failed: {type(exc).__name__}: {str(exc).strip()[:500]}"]
    problems = []
    proto = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET or opset != spec.opset:
        problems.append(f"{where}: opset {opset}, manifest says {spec.opset}; expected ≥ {MIN_OPSET}")
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    except Exception as exc:  # noqa: BLE001
        return [*problems, f"{where}: shape inference failed: {type(exc).__name__}: {str(exc).strip()[:500]}"]
    for kind, got, want in (
        ("inputs", tensor_specs(list(inferred.graph.input)), spec.inputs),
        ("outputs", tensor_specs(list(inferred.graph.output)), spec.outputs),
    ):
        if [(t.name, t.dtype, list(t.shape)) for t in got] != [(t.name, t.dtype, list(t.shape)) for t in want]:
            problems.append(
                f"{where}: {kind} are {[(t.name, t.dtype, t.shape) for t in got]}, "
                f"manifest expects {[(t.name, t.dtype, t.shape) for t in want]}"
            )
    external = {
        e.value for t in inferred.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
        for e in t.external_data if e.key == "location"
    }
    if external != set(spec.external_data):
        problems.append(f"{where}: external data files {sorted(external)}, manifest lists {sorted(spec.external_data)}")
    return problems


def _run(session: Any, feeds: dict[str, np.ndarray], batched: Sequence[str], batch: int, n: int) -> dict[str, np.ndarray]:
    """Run `session` over n images in chunks of `batch`, slicing only the per-image inputs."""
    names = [o.name for o in session.get_outputs()]
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for start in range(0, n, batch):
        feed = {k: (v[start : start + batch] if k in batched else v) for k, v in feeds.items()}
        for i, arr in enumerate(session.run(names, feed)):
            parts[i].append(arr)
    return {name: np.concatenate(p) for name, p in zip(names, parts, strict=True)}


def check_parity(
    bundle: Bundle, tolerances: dict[str, float], batch_sizes: Sequence[int] = VALIDATION_BATCH_SIZES,
) -> tuple[dict[str, Any], list[str]]:
    """ONNX Runtime (CPU) on reference.npz for every fp32 graph, all images at once and at each batch size.

    Each run is compared with the PyTorch outputs, and each batch size with the all-at-once run.
    Returns the measured worst values per graph and the list of failures.
    """
    manifest = bundle.manifest
    ref = bundle.load_reference()
    n = len(ref["image"])
    threshold, decided_by = bundle.threshold.value, bundle.threshold.score
    paths = ref["path"]
    report: dict[str, Any] = {}
    failures: list[str] = []
    for key in ("encoder", "scorer", "model"):
        spec = manifest.graph(key)
        where = f"{key} ({spec.file})"
        feeds: dict[str, np.ndarray] = {t.name: ref[t.name] for t in spec.inputs if t.name in ref}
        feeds.update(bundle.static_feed(key))
        unknown = [t.name for t in spec.inputs if t.name not in feeds]
        if unknown:
            failures.append(f"{where}: manifest inputs {unknown} have no data in {REFERENCE_FILE} (expected image/embedding/bank)")
            continue
        batched = [t.name for t in spec.inputs if t.shape and t.shape[0] == BATCH]
        try:
            session = bundle.session(key)
            full = _run(session, feeds, batched, max(n, 1), n)
            runs = {b: _run(session, feeds, batched, b, n) for b in batch_sizes if b < n}
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            failures.append(f"{where}: ONNX Runtime could not run it: {type(exc).__name__}: {str(exc).strip()[:500]}")
            continue
        worst: dict[str, Any] = {"batch_sizes": [n, *runs], "max_abs_diff": {}, "max_rel_diff": {}, "batch_max_abs_diff": {}}
        for name in (t.name for t in spec.outputs):
            if name not in full or name not in ref:
                failures.append(f"{where}: manifest output {name!r} is not among the graph's outputs {sorted(full)}")
                continue
            cmps = []
            for b, out in ((n, full), *runs.items()):
                cmp = _compare(name, out[name], ref[name], threshold, decided_by)
                failures += _failures(cmp, name, f"{where} at batch {b}", tolerances, paths, threshold)
                cmps.append(cmp)
                if b != n:
                    vs_full = _compare(name, out[name], full[name], threshold, decided_by)
                    worst["batch_max_abs_diff"][name] = max(worst["batch_max_abs_diff"].get(name, 0.0), vs_full.max_abs)
                    failures += _failures(vs_full, name, f"{where} at batch {b} vs batch {n}", tolerances, paths, threshold)
            worst["max_abs_diff"][name] = max(c.max_abs for c in cmps)
            worst["max_rel_diff"][name] = max(c.max_rel for c in cmps)
            if name == "embedding":
                worst["embedding_cosine_min"] = min(c.cosine_min for c in cmps if c.cosine_min is not None)
            if name == decided_by:
                worst["label_agreement"] = min(c.agreement for c in cmps if c.agreement is not None)
        report[key] = worst
    return report, failures


def validate_bundle(
    bundle: str | Path, *, tolerances: dict[str, float] | None = None, batch_sizes: Sequence[int] = VALIDATION_BATCH_SIZES,
) -> dict[str, Any]:
    """Check a bundle's files, structure and ORT-vs-PyTorch parity; raise listing every failure.

    Returns the measured parity per graph (what export records under graphs[...].details["parity"]).
    """
    opened = Bundle.open(Path(bundle), verify=True)
    root, manifest = opened.root, opened.manifest
    tol = dict(tolerances or manifest.tolerances("fp32"))
    structure: list[str] = []
    for key in ("encoder", "scorer", "model"):
        structure += check_structure(root, key, manifest.graph(key))
    report, parity_failures = check_parity(opened, tol, batch_sizes)
    failures = structure + parity_failures
    if failures:
        hint = _conditioning_hint(root) if any(f"'{n}'" in f for f in parity_failures for n in SCORE_NAMES) else ""
        raise ExportValidationError(
            f"{root}: {len(failures)} check(s) failed (ONNX Runtime CPU against the PyTorch outputs in "
            f"{REFERENCE_FILE}; fp32 tolerances {tol}):\n  " + "\n  ".join(failures) + hint,
            failures=[{"check": "structure" if f in structure else "parity", "graph": f.split(":", 1)[0].split()[0],
                       "message": f} for f in failures],
        )
    return report


def _conditioning_hint(root: Path) -> str:
    """Explain score failures caused by float32 arccos near cos = 1 rather than by the graphs."""
    angles = Bundle.open(root, verify=False).load_reference([KNN_ANGLE])[KNN_ANGLE].astype(np.float64) * np.pi
    tiny = int((angles < _WELL_CONDITIONED_ANGLE).sum())
    if not tiny:
        return ""
    return (
        f"\n{tiny} of {len(angles)} reference images lie within {angles.min():.2g} rad of their K nearest bank rows: "
        "near cos = 1 float32 arccos resolves only ~4e-4 rad, so such scores are rounding noise in any runtime. "
        "The embeddings have collapsed onto the bank (an under-trained run); train longer and export again."
    )
