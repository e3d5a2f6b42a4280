"""calibrate_bundle: add an fp16 or int8 variant to a bundle, measured against PyTorch in AUC, not tensor error.

Order: every cheap check (request, bundle sha256s, calibration films) runs before any graph is built.
The variant is built in a staging copy of the bundle (hard links, a sibling directory) and measured
there with the parity harness (salad.runtime.compare) exactly as `salad parity` will measure it
later. Only a variant that meets its precision's tolerances is committed, in one atomic step (see
`_Staging.commit`): a killed calibration leaves either the old bundle, whose accepted variants are
all still there, or the new one. The whole run holds the bundle's writer lock, so two calibrations
never interleave. The report is written either way (a rejected one as <precision>.rejected.*).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import salad
from salad.bundle import Bundle
from salad.errors import BundleError, CalibrationError, SaladError
from salad.fsutil import sigterm_as_interrupt, sweep_stale, temp_name, writer_lock
from salad.manifest import (
    GraphSpec,
    Manifest,
    commit_journal,
    complete_journal,
    confined,
    is_bundle,
    pending_name,
    read_manifest,
)
from salad.metrics import detection_metrics, has_both_classes

from .graphs import CALIBRATION_METHODS, MIN_INT8_CHANNELS
from .measure import LATENCY_BATCHES, LATENCY_RUNS, cpu_info, file_sizes, latency
from .report import Attempt, CalibrationReport
from .sources import MIN_IMAGES, CalibrationSource, OrtCalibrationReader
from .tolerances import default_tolerances

VARIANTS = ("fp16", "int8")
REPORT_DIR = "calibration"
#: Graph names of a variant: encoder.<p>.onnx and model.<p>.onnx (the scorer is shared and stays fp32).
VARIANT_GRAPHS = ("encoder", "model")


def calibrate_bundle(
    bundle: str | os.PathLike[str],
    precision: str,
    data: str | os.PathLike[str] | None = None,
    *,
    method: str = "minmax",
    images: int | None = None,
    per_channel: bool = True,
    min_images: int = MIN_IMAGES,
    max_auc_drop: float | None = None,
    data_labelled: str | os.PathLike[str] | None = None,
    report_dir: str | os.PathLike[str] | None = None,
    min_channels: int = MIN_INT8_CHANNELS,
    force: bool = False,
    latency_runs: int = LATENCY_RUNS,
    raise_on_failure: bool = True,
) -> CalibrationReport:
    """Add the `precision` ("fp16" or "int8") variant of BUNDLE's encoder and merged model, in place.

    data: real normal films for int8 calibration (a folder, class folders or a CSV; label-0 films
    are used); fp16 needs none. method: minmax | entropy | percentile. images: films to calibrate on
    (default all found, at most 500); fewer than `min_images` is refused. per_channel: int8 weights
    per output channel (default) or per tensor. min_channels: int8 layers with fewer channels in or
    out stay float (they are slower in int8 on CPUs; 0 quantizes every layer).
    max_auc_drop + data_labelled: accuracy-bounded mode — while |ΔAUC| on the labelled films
    exceeds max_auc_drop (or any parity tolerance fails), keep the next most error-prone layer in
    float; fail with the best figure reached if none fits.
    force: replace a variant the bundle already has. latency_runs: timed runs per latency figure.

    Returns the CalibrationReport (also written to report_dir or BUNDLE/calibration/). Raises
    CalibrationError, leaving the bundle unchanged, when the request or the films are not
    acceptable, and when the variant misses its tolerances — unless raise_on_failure is False: then
    the rejected variant's report comes back with accepted=False (the bundle is unchanged either way).
    """
    root = Path(bundle)
    _check_request(precision, method, images, min_images, max_auc_drop, data_labelled, min_channels, latency_runs)
    if not is_bundle(root):
        read_manifest(root)  # the "not a bundle" error
    with sigterm_as_interrupt(), writer_lock(root):  # one writer at a time; SIGTERM cleans up like Ctrl-C
        complete_journal(root)  # a commit a killed writer left half-done is finished first
        sweep_stale(root.resolve())  # staging copies and pending files of dead writers
        manifest = read_manifest(root, verify=True)
        existing = [k for k in (manifest.graph_key(g, precision) for g in VARIANT_GRAPHS) if k in manifest.graphs]
        if existing and not force:
            raise CalibrationError(
                f"{root}: already has the {precision} variant ({', '.join(existing)}); pass --force to calibrate it again "
                "(the current variant stays until the new one has passed its checks)."
            )
        for name in ("encoder", "scorer", "model"):
            try:
                manifest.graph(name, "fp32")
            except SaladError as exc:
                raise CalibrationError(f"{root}: cannot calibrate: {exc}") from exc
        notes: list[str] = []
        source = None
        if precision == "int8":
            source = CalibrationSource.from_data(data, manifest.preprocess_config, images=images, min_images=min_images)
        elif data is not None:
            notes.append(f"fp16 is a cast of the weights and needs no calibration films: --data {data} was not used.")
        if max_auc_drop is not None:
            _require_torch_reference(root, manifest)
            _require_both_classes(data_labelled)
        tolerances = dict(manifest.parity.get(precision) or default_tolerances(precision))

        with _Staging(root, manifest, precision) as stage:
            builder = _Fp16Builder(stage, precision) if precision == "fp16" else _Int8Builder(stage, source, method, per_channel, min_channels)
            attempts: list[Attempt] = []
            kept: list[str] = []
            candidates = None
            while True:
                builder.build(kept)
                stage.stage_variant(precision, builder, tolerances)
                problems = builder.structure_problems()
                if problems:
                    raise CalibrationError(f"the {precision} graphs built for {root} are not valid:\n  " + "\n  ".join(problems))
                parity = _parity(stage.path, precision, data_labelled)
                row = parity.rows[0]
                fits = row.passed and (max_auc_drop is None or _auc_fits(row.metrics.get("delta_auc"), max_auc_drop))
                attempts.append(Attempt(list(kept), dict(row.metrics), fits, _attempt_failures(row, max_auc_drop)))
                if fits or max_auc_drop is None or precision == "fp16":
                    break
                if candidates is None:
                    candidates = [e.name for e in builder.ranked_layers()]
                remaining = [c for c in candidates if c not in kept]
                if len(remaining) <= 1:  # keeping every layer float would not be an int8 variant any more
                    break
                kept.append(remaining[0])

            if max_auc_drop is not None and not fits and len(attempts) > 1:  # rebuild the best attempt for the report
                best = min(attempts, key=_auc_distance)
                if best is not attempts[-1]:
                    builder.build(best.kept_float)
                    stage.stage_variant(precision, builder, tolerances)
                    parity = _parity(stage.path, precision, data_labelled)
                    row = parity.rows[0]
            reference_films = _reference_film_auc(stage.path, precision)
            report = CalibrationReport(
                bundle=str(root), precision=precision, accepted=fits,
                graphs={manifest.graph_key(g, precision): f"{g}.{precision}.onnx" for g in VARIANT_GRAPHS},
                settings=_settings(precision, data, method, per_channel, min_images, images, min_channels, max_auc_drop, data_labelled),
                tolerances=tolerances, parity=parity.to_dict(), reference_films=reference_films,
                calibration=builder.calibration_summary(), layers_in_float=builder.layers_in_float(),
                layer_errors=builder.layer_errors(), attempts=attempts if max_auc_drop is not None else [],
                search_order=list(candidates or []),
                notes=notes + list(parity.notes) + builder.notes,
            )
            report.sizes = file_sizes(stage.path, [manifest.graphs["encoder"].file, f"encoder.{precision}.onnx",
                                                   manifest.graphs["model"].file, f"model.{precision}.onnx"])
            report.environment = cpu_info()
            report.latency = _latency(stage.path, stage.manifest(), precision, latency_runs)
            if not fits:
                report.failures = _rejection(row, max_auc_drop, attempts, precision)
            _unstage(report, stage.path, root)
            target = Path(report_dir) if report_dir is not None else root / REPORT_DIR
            in_bundle = report_dir is None
            if not fits or not in_bundle:
                report.write(target)  # a rejected variant's report: <precision>.rejected.json/.md
            if not fits and raise_on_failure:
                stays = (f" (its {precision} variant and that variant's report {root / REPORT_DIR / (precision + '.md')} stay as they were)"
                        if existing else "")
                raise CalibrationError(
                    f"{root}: the {precision} variant was not added:\n  " + "\n  ".join(report.failures)
                    + f"\nThe bundle is unchanged{stays}. Report of this rejected attempt: {report.files['markdown']}"
                )
            if fits:
                stage.commit(precision, report, in_bundle)
        return report


# -- request checks ------------------------------------------------------------------------------------


def _check_request(
    precision: str, method: str, images: int | None, min_images: int, max_auc_drop: float | None,
    data_labelled: str | os.PathLike[str] | None, min_channels: int, latency_runs: int,
) -> None:
    problems = []
    if precision not in VARIANTS:
        problems.append(f"precision {precision!r}: calibration makes {list(VARIANTS)} (fp32 is the exported bundle itself)")
    if method not in CALIBRATION_METHODS:
        problems.append(f"--method {method!r}: expected one of {list(CALIBRATION_METHODS)}")
    if images is not None and images < 1:
        problems.append(f"--images {images}: expected a positive number of films")
    if min_images < 1:
        problems.append(f"--min-images {min_images}: expected a positive number")
    if min_channels < 0:
        problems.append(f"--min-channels {min_channels}: expected ≥ 0")
    if latency_runs < 1:
        problems.append(f"latency_runs={latency_runs}: expected ≥ 1")
    if max_auc_drop is not None:
        if not (0 <= max_auc_drop < 1):
            problems.append(f"--max-auc-drop {max_auc_drop}: expected a number in [0, 1), e.g. 0.005")
        if data_labelled is None:
            problems.append("--max-auc-drop needs --data-labelled LABELLED (normal and abnormal films) to measure ΔAUC on")
    if data_labelled is not None and not Path(data_labelled).exists():
        problems.append(f"--data-labelled {data_labelled}: no such file or folder")
    if problems:
        raise CalibrationError("cannot calibrate:\n  " + "\n  ".join(problems))


def _require_torch_reference(root: Path, manifest: Manifest) -> None:
    from salad.runtime.parity import torch_reference_reason

    reason = torch_reference_reason(root)
    if reason:
        raise CalibrationError(
            f"--max-auc-drop measures ΔAUC against PyTorch on --data-labelled, but {reason}. "
            "Calibrate a bundle exported without --slim, on a machine with salad-edge[train]."
        )


def _require_both_classes(data_labelled: str | os.PathLike[str] | None) -> None:
    from salad.data import read_samples
    from salad.errors import DataError

    try:
        labels = {s.label for s in read_samples(Path(str(data_labelled)))}
    except DataError as exc:
        raise CalibrationError(f"cannot read --data-labelled: {exc}") from exc
    if labels != {0, 1}:
        raise CalibrationError(
            f"--data-labelled {data_labelled} holds only label-{labels.pop() if labels else '?'} films; ΔAUC needs normal and "
            "abnormal ones (class folders normal/ + pneumonia/…, or a CSV path,label)."
        )


def _auc_fits(delta: float | None, bound: float) -> bool:
    """|ΔAUC| within the bound: a rise is the same size of noise as a fall would be (parity also checks |ΔAUC|)."""
    return delta is not None and np.isfinite(delta) and abs(delta) <= bound


def _auc_distance(attempt: Attempt) -> float:
    delta = attempt.metrics.get("delta_auc")
    return abs(delta) if delta is not None and np.isfinite(delta) else float("inf")


def _attempt_failures(row: Any, max_auc_drop: float | None) -> list[str]:
    out = [c.describe() for c in row.failed_checks]
    delta = row.metrics.get("delta_auc")
    if max_auc_drop is not None and not _auc_fits(delta, max_auc_drop):
        out.append(f"|ΔAUC| = {'not measured' if delta is None else f'{abs(delta):.4g}'} > --max-auc-drop {max_auc_drop:g}")
    return out


def _rejection(row: Any, max_auc_drop: float | None, attempts: list[Attempt], precision: str) -> list[str]:
    lines = [f"{precision}: {c.describe()}" for c in row.failed_checks]
    if max_auc_drop is not None:
        best = min(attempts, key=_auc_distance)
        kept = len(best.kept_float)
        delta = best.metrics.get("delta_auc")
        lines.append(
            f"no variant kept |ΔAUC| ≤ {max_auc_drop:g} and every tolerance after {len(attempts)} attempt(s); the best reached "
            f"ΔAUC {'not measured' if delta is None else f'{delta:+.4g}'} with {kept} extra layer(s) in float"
        )
    elif precision == "int8":
        lines.append("retry with --max-auc-drop D --data-labelled LABELLED to keep the most error-prone layers in float, "
                     "or with --method entropy/percentile or more calibration films")
    return lines


def _settings(precision: str, data: Any, method: str, per_channel: bool, min_images: int, images: int | None,
              min_channels: int, max_auc_drop: float | None, data_labelled: Any) -> dict[str, Any]:
    if precision == "fp16":
        out: dict[str, Any] = {"precision": "fp16"}
    else:
        out = {"precision": "int8", "data": str(data), "method": method, "images": images if images is not None else "all (≤ 500)",
               "min_images": min_images, "weights": "per-channel" if per_channel else "per-tensor", "min_channels": min_channels}
    out["max_auc_drop"] = max_auc_drop
    out["data_labelled"] = str(data_labelled) if data_labelled is not None else None
    return out


# -- measurement -----------------------------------------------------------------------------------------


def _parity(root: Path, precision: str, data_labelled: Any) -> Any:
    from salad.runtime.parity import compare

    return compare(root, ["onnxruntime"], [precision], data=data_labelled, device="cpu")


def _reference_film_auc(root: Path, precision: str) -> dict[str, Any]:
    """ΔAUC/ΔAUPRC on reference.npz's labelled films: ONNX Runtime on the variant vs the stored PyTorch scores."""
    bundle = Bundle.open(root, verify=False)
    score_name = bundle.threshold.score
    ref = bundle.load_reference(["image", score_name])
    out: dict[str, Any] = {"images": int(len(ref["image"]))}
    try:
        labels = bundle.load_reference(["label"])["label"]
    except BundleError:  # a reference set without labels: no AUC to compare
        return out
    if not has_both_classes(labels):
        return out
    feed = {"image": ref["image"], **bundle.static_feed("model", precision)}
    got = bundle.session("model", precision).run([score_name], feed)[0]
    auc, ap = detection_metrics(labels, got)
    ref_auc, ref_ap = detection_metrics(labels, np.asarray(ref[score_name]))
    out.update(auc=auc, auprc=ap, reference_auc=ref_auc, reference_auprc=ref_ap, delta_auc=auc - ref_auc, delta_auprc=ap - ref_ap)
    return out


def _latency(root: Path, manifest: Manifest, precision: str, runs: int) -> dict[str, Any]:
    bundle = Bundle(root, manifest)
    images = bundle.load_reference(["image"])["image"]
    graphs, static = {}, {}
    for name in VARIANT_GRAPHS:
        for p in ("fp32", precision):
            label = f"{name}.{p}"
            graphs[label] = bundle.graph_path(name, p)
            static[label] = bundle.static_feed(name, p)
    return latency(graphs, images[: max(LATENCY_BATCHES)], static=static, runs=runs)


# -- the builders ------------------------------------------------------------------------------------------


class _Fp16Builder:
    """encoder.fp16.onnx (float16 body, float32 I/O and normalisation) + the fp32 scorer → model.fp16.onnx."""

    def __init__(self, stage: _Staging, precision: str) -> None:
        self.stage = stage
        self.precision = precision
        self.notes: list[str] = []
        self.encoder: Any = None
        self.model: Any = None
        self.kept: list[str] = []

    def build(self, kept: Sequence[str]) -> None:
        import onnx

        from .graphs import fp16_encoder, merge_with_scorer

        m = self.stage.original
        enc32 = onnx.load(str(self.stage.path / m.graphs["encoder"].file))
        converted = fp16_encoder(enc32)
        self.kept = converted.kept_float32
        if converted.clamped_values:
            self.notes.append(f"{converted.clamped_values} encoder constant(s) lay outside float16's normal range and were clamped by the converter.")
        self.encoder = converted.proto
        self.model = merge_with_scorer(self.encoder, self.stage.load_scorer(), m.bank.get("initializer"))

    def structure_problems(self) -> list[str]:
        from .graphs import scorer_precision_problems

        return [f"model.{self.precision}.onnx: {p}" for p in scorer_precision_problems(self.model)]

    def details(self) -> dict[str, Any]:
        import onnxconverter_common

        return {
            "calibration_method": None,
            "calibration_images": 0,
            "calibration_list_sha256": None,
            "converter": f"onnxconverter-common {onnxconverter_common.__version__} float16.convert_float_to_float16 (keep_io_types)",
            "encoder": "float16 weights and activations; image in and embedding out stay float32",
            "layers_in_float": list(self.kept),
            "scorer": "float32 (scorer.onnx merged unchanged)",
        }

    def calibration_summary(self) -> dict[str, Any]:
        return {"method": "cast (no calibration films)", "float32_nodes": len(self.kept)}

    def layers_in_float(self) -> dict[str, str]:
        return {n: "L2-normalisation tail: float16 can overflow a sum of squares and loses the epsilon" for n in self.kept}

    def layer_errors(self) -> list[Any]:
        return []

    def ranked_layers(self) -> list[Any]:
        return []


class _Int8Builder:
    """encoder.int8.onnx (Q/DQ, calibrated on real normals) + the fp32 scorer → model.int8.onnx."""

    def __init__(self, stage: _Staging, source: CalibrationSource | None, method: str, per_channel: bool, min_channels: int) -> None:
        from .graphs import prepare_for_quantization, weighted_layers

        assert source is not None
        self.stage, self.source, self.method, self.per_channel = stage, source, method, per_channel
        self.precision = "int8"
        self.notes: list[str] = []
        self.work = Path(tempfile.mkdtemp(prefix="quant-", dir=stage.path))
        self.prepared = self.work / "prepared.onnx"
        self.ranges = self.work / "ranges.json"
        proto = prepare_for_quantization(stage.path / stage.original.graphs["encoder"].file, self.prepared)
        self.layers = weighted_layers(proto)
        self.by_channels = {
            layer.name: f"{layer.channels_in}→{layer.channels_out} channels (< {min_channels}): int8 kernels are slower than float ones on so few channels"
            for layer in self.layers if layer.channels < min_channels
        }
        if len(self.by_channels) == len(self.layers):
            raise CalibrationError(
                f"every weighted layer of the encoder has fewer than --min-channels {min_channels} channels, so nothing would be "
                "quantized; lower --min-channels (0 quantizes every layer)."
            )
        self.kept: list[str] = []
        self.encoder: Any = None
        self.model: Any = None
        self._errors: list[Any] | None = None

    def build(self, kept: Sequence[str]) -> None:
        from .graphs import merge_with_scorer, quantize_encoder

        self.kept = list(kept)
        exclude = [*self.by_channels, *self.kept]
        out = self.work / "encoder.int8.onnx"
        reader = OrtCalibrationReader(self.source)
        self.encoder = quantize_encoder(self.prepared, out, reader, method=self.method, per_channel=self.per_channel,
                                        exclude=exclude, ranges_cache=self.ranges)
        self.model = merge_with_scorer(self.encoder, self.stage.load_scorer(), self.stage.original.bank.get("initializer"))

    def structure_problems(self) -> list[str]:
        from .graphs import quantized_layers, scorer_precision_problems, tensorrt_qdq_problems

        problems = [f"model.int8.onnx: {p}" for p in scorer_precision_problems(self.model)]
        problems += [f"encoder.int8.onnx: {p}" for p in tensorrt_qdq_problems(self.encoder)]
        if not quantized_layers(self.encoder):
            problems.append("encoder.int8.onnx: no layer was quantized")
        return problems

    def layers_in_float(self) -> dict[str, str]:
        out = dict(self.by_channels)
        out.update({n: "kept float by the accuracy-bounded search (largest quantisation noise)" for n in self.kept})
        return out

    def details(self) -> dict[str, Any]:
        import onnxruntime

        from .graphs import quantized_layers

        return {
            "calibration_method": self.method,
            "calibration_images": self.source.count,
            "calibration_list_sha256": self.source.list_sha256,
            "layers_in_float": list(self.layers_in_float()),
            "quantized_layers": len(quantized_layers(self.encoder)),
            "format": "QDQ",
            "weights": f"int8 symmetric, {'per output channel' if self.per_channel else 'per tensor'}",
            "activations": "int8 symmetric (zero point 0), per tensor",
            "bias": "float32",
            "quantizer": f"onnxruntime {onnxruntime.__version__} quantize_static",
            "scorer": "float32 (scorer.onnx merged unchanged)",
        }

    def calibration_summary(self) -> dict[str, Any]:
        return {"method": self.method, "images": self.source.count, "normal_films_found": self.source.found,
                "list_sha256": self.source.list_sha256}

    def layer_errors(self) -> list[Any]:
        """Per-layer quantisation error, measured once on the encoder with every eligible layer in int8.

        The figures explain the search order, so they stay those of that first encoder; `quantized`
        and `reason_float` say what each layer finally is.
        """
        import dataclasses

        from .sensitivity import layer_errors

        if self._errors is None:  # first called before the search keeps any layer float (see calibrate_bundle)
            path = self.work / "encoder.int8.onnx"
            self._errors = layer_errors(self.prepared, path, self.layers, self.source, self.layers_in_float())
        final = self.layers_in_float()
        return [dataclasses.replace(e, quantized=e.name not in final, reason_float=final.get(e.name)) for e in self._errors]

    def ranked_layers(self) -> list[Any]:
        """Quantized layers, noisiest first (the order the accuracy-bounded search keeps them float)."""
        from .sensitivity import rank_by_noise

        if self._errors is None:
            self.layer_errors()
        assert self._errors is not None
        return rank_by_noise(self._errors)


# -- staging and commit ---------------------------------------------------------------------------------


class _Staging:
    """A sibling copy of the bundle, where variants are built and measured.

    Files are hard links (copies where linking fails, and always for ONNX external data, which
    onnx.checker refuses to read through a hard link).
    """

    def __init__(self, root: Path, manifest: Manifest, precision: str) -> None:
        self.root = root
        self.original = manifest
        keys = [manifest.graph_key(g, precision) for g in VARIANT_GRAPHS]
        self.replaced = {manifest.graphs[k].file for k in keys if k in manifest.graphs}
        self.external = {f for g in manifest.graphs.values() for f in g.external_data}
        real = root.resolve()
        try:  # a sibling, so that hard links work and the variant files can be moved in with os.replace
            self.path = real.parent / temp_name(f".{real.name}.calibrate-")  # the owner pid lets a later run sweep it
            self.path.mkdir(mode=0o700)
        except OSError:  # a read-only parent: inside the bundle, which must be writable anyway
            self.path = root / temp_name(".calibrate-")
            self.path.mkdir(mode=0o700)
        self._manifest: Manifest | None = None

    def __enter__(self) -> _Staging:
        try:
            for name in sorted(self.original.listed_files()):
                if name in self.replaced:
                    continue  # rebuilt here: a link would let the rebuild write into the bundle's own file
                src, dst = self.root / name, self.path / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                if name in self.external:  # onnx's checker refuses hard-linked external data ("hardlink attack")
                    shutil.copy2(src, dst)
                    continue
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
            self.original.write(self.path)
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def load_scorer(self) -> Any:
        import onnx

        return onnx.load(str(self.path / self.original.graphs["scorer"].file), load_external_data=False)

    def manifest(self) -> Manifest:
        return self._manifest or self.original

    def stage_variant(self, precision: str, builder: Any, tolerances: dict[str, float]) -> None:
        """Write the builder's two graphs into the staging bundle and list them in its manifest."""
        import onnx

        from salad.manifest import sha256_file

        from .graphs import opset_of, set_metadata

        base_model = onnx.load(str(self.path / self.original.graphs["model"].file), load_external_data=False)
        base_encoder = onnx.load(str(self.path / self.original.graphs["encoder"].file), load_external_data=False)
        manifest = Manifest.from_dict(json.loads(json.dumps(self.original.to_dict())))
        details = builder.details()
        for name, proto, base in (("encoder", builder.encoder, base_encoder), ("model", builder.model, base_model)):
            key = manifest.graph_key(name, precision)
            file = f"{name}.{precision}.onnx"
            set_metadata(proto, base, {"salad.graph": key, "salad.precision": precision, "salad.toolkit_version": salad.__version__})
            (self.path / file).unlink(missing_ok=True)  # never write through a hard link into the bundle itself
            onnx.save_model(proto, str(self.path / file))
            fp32 = self.original.graphs[name]
            manifest.graphs[key] = GraphSpec(
                file=file, sha256=sha256_file(self.path / file), precision=precision, opset=opset_of(proto),
                inputs=list(fp32.inputs), outputs=list(fp32.outputs), external_data=list(fp32.external_data), details=dict(details),
            )
        manifest.parity[precision] = dict(tolerances)
        self.check_files(manifest, precision)
        manifest.write(self.path)
        self._manifest = manifest

    def check_files(self, manifest: Manifest, precision: str) -> None:
        """onnx.checker (full) and the fp32 graph's input/output contract on both written files."""
        import onnx

        from .graphs import io_problems

        problems = []
        for name in VARIANT_GRAPHS:
            spec = manifest.graph(name, precision)
            path = self.path / spec.file
            try:
                onnx.checker.check_model(str(path), full_check=True)
            except Exception as exc:  # noqa: BLE001 - checker and inference raise several types
                problems.append(f"{spec.file}: onnx.checker failed: {type(exc).__name__}: {str(exc).strip()[:300]}")
                continue
            problems += [f"{spec.file}: {p}" for p in io_problems(onnx.load(str(path), load_external_data=False), self.original.graphs[name])]
        if problems:
            raise CalibrationError(f"the {precision} graphs are not valid:\n  " + "\n  ".join(problems))

    def commit(self, precision: str, report: CalibrationReport, report_in_bundle: bool) -> None:
        """Commit the variant (and its report) to the bundle in one atomic step; call with the writer lock held.

        1. the variant's files (and report) are moved into the bundle under pending names (.NAME.pending-PID),
           which the current manifest does not list, so the bundle still verifies as before;
        2. the journal (the renames + the complete new manifest) is written with one atomic rename —
           the commit point;
        3. the renames and manifest.json are applied and the journal removed (complete_journal, which
           the next writer or reader repeats, idempotently, if this process is killed in step 3).
        Killed before step 2: the old bundle with every accepted variant, plus pending files a later run sweeps.
        """
        staged = self.manifest()
        keys = [staged.graph_key(g, precision) for g in VARIANT_GRAPHS]
        current = read_manifest(self.root, verify=False)
        moves: list[tuple[Path, str]] = [(self.path / staged.graphs[k].file, staged.graphs[k].file) for k in keys]
        report_name = None
        if report_in_bundle:
            folder = self.path / REPORT_DIR
            written = report.write(folder)
            for kind, final in report.file_names().items():
                moves.append((Path(written[kind]), f"{REPORT_DIR}/{final}"))
            report_name = f"{REPORT_DIR}/{report.file_names()['json']}"
        renames: list[tuple[str, str]] = []
        try:
            for source, final in moves:
                pending = pending_name(final)
                target = confined(self.root, pending)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
                renames.append((pending, final))
            for k in keys:
                current.graphs[k] = staged.graphs[k]
                current.graphs[k].details["parity"] = {m: report.parity.get(m) for m in ("images", "label_agreement", "delta_auc", "max_abs_score_diff", "embedding_cosine_min")}
            current.parity[precision] = dict(report.tolerances)
            current.calibration[precision] = {
                **report.calibration,
                "layers_in_float": list(report.layers_in_float),
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "report": report_name or _relative(report.files.get("json"), self.root),
            }
            commit_journal(self.root, renames, current)
        except BaseException:
            if not (self.root / ".journal.json").exists():  # not committed: the pending files are litter
                for pending, _ in renames:
                    (self.root / pending).unlink(missing_ok=True)
            raise
        if report_in_bundle:
            report.files = {kind: str(self.root / REPORT_DIR / name) for kind, name in report.file_names().items()}
        read_manifest(self.root, verify=True)


def _unstage(report: CalibrationReport, staging: Path, root: Path) -> None:
    """Name the bundle, never the staging copy (deleted when calibration ends), in the report's figures and messages."""
    def fix(value: Any) -> Any:
        return json.loads(json.dumps(value).replace(json.dumps(str(staging))[1:-1], json.dumps(str(root))[1:-1]))

    report.parity = fix(report.parity)
    report.notes = fix(report.notes)
    report.failures = fix(report.failures)


def _relative(path: str | None, root: Path) -> str | None:
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
