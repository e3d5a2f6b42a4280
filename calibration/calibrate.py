"""calibrate_bundle: add an fp16 or int8 variant to a bundle, measured against PyTorch in AUC, not tensor error.

Order: every cheap check (request, bundle sha256s, calibration films) runs before any graph is built.
The variant is built in a staging copy of the bundle (hard links, a sibling directory) and measured
there with the parity harness (salad.runtime.compare) exactly as `salad parity` will measure it
later. Only a variant that meets its precision's tolerances is committed, in one atomic step (see
`Staging.commit`): a killed calibration leaves either the old bundle, whose accepted variants are
all still there, or the new one. The whole run is one `Bundle.edit` (the bundle's writer lock), so
two calibrations never interleave. The report is written either way (a rejected one as <precision>.rejected.*).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from salad.bundle import Bundle
from salad.errors import BundleError, CalibrationError, CalibrationRejectedError, CalibrationUsageError, SaladError
from salad.metrics import detection_metrics, has_both_classes
from salad.renames import renamed_keywords

from .builders import BUILDERS, BuildRequest
from .graphs import CALIBRATION_METHODS, MIN_INT8_CHANNELS
from .measure import LATENCY_BATCHES, LATENCY_RUNS, cpu_info, file_sizes, latency
from .report import CalibrationReport
from .search import rejection, search
from .sources import MIN_IMAGES, CalibrationSource
from .staging import REPORT_DIR, VARIANT_GRAPHS, Staging, unstage
from .tolerances import default_tolerances

#: The precisions calibration adds: one builder each (calibration/builders.py).
VARIANTS = tuple(BUILDERS)


@renamed_keywords(images="films", min_images="min_films", data_labelled="labelled")
def calibrate_bundle(
    bundle: str | os.PathLike[str],
    precision: str,
    data: str | os.PathLike[str] | None = None,
    *,
    method: str = "minmax",
    films: int | None = None,
    per_channel: bool = True,
    min_films: int = MIN_IMAGES,
    max_auc_drop: float | None = None,
    labelled: str | os.PathLike[str] | None = None,
    report_dir: str | os.PathLike[str] | None = None,
    min_channels: int = MIN_INT8_CHANNELS,
    force: bool = False,
    latency_runs: int = LATENCY_RUNS,
    raise_on_failure: bool = True,
    threads: int | None = None,
) -> CalibrationReport:
    """Add the `precision` ("fp16" or "int8") variant of BUNDLE's encoder and merged model, in place.

    data: real normal films for int8 calibration (a folder, class folders or a CSV; label-0 films
    are used); fp16 needs none. method: minmax | entropy | percentile. films: how many to calibrate on
    (default all found, at most 500); fewer than `min_films` is refused. per_channel: int8 weights
    per output channel (default) or per tensor. min_channels: int8 layers with fewer channels in or
    out stay float (they are slower in int8 on CPUs; 0 quantizes every layer).
    max_auc_drop + labelled: accuracy-bounded mode — while |ΔAUC| on the labelled films
    exceeds max_auc_drop (or any parity tolerance fails), keep the next most error-prone layer in
    float; fail with the best figure reached if none fits.
    force: replace a variant the bundle already has. latency_runs: timed runs per latency figure.
    The keywords are the options of `salad calibrate`; the old images=, min_images= and data_labelled= still work
    with a DeprecationWarning.

    Returns the CalibrationReport (also written to report_dir or BUNDLE/calibration/). Raises
    CalibrationError, leaving the bundle unchanged, when the request or the films are not
    acceptable, and when the variant misses its tolerances — unless raise_on_failure is False: then
    the rejected variant's report comes back with accepted=False (the bundle is unchanged either way).
    """
    root = Path(bundle)
    _check_request(precision, method, films, min_films, max_auc_drop, labelled, min_channels, latency_runs)
    with Bundle.edit(root) as edit:  # one writer at a time; a left journal is finished, SIGTERM cleans up like Ctrl-C
        opened = edit.bundle
        manifest = opened.manifest
        existing = _existing_variant(opened, precision, force)
        notes: list[str] = []
        source = None
        if BUILDERS[precision].needs_films:
            source = CalibrationSource.from_data(data, manifest.preprocess_config, films=films, min_films=min_films)
        elif data is not None:
            notes.append(f"{precision} is a cast of the weights and needs no calibration films: --data {data} was not used.")
        if max_auc_drop is not None:
            _require_torch_reference(root)
            _require_both_classes(labelled)
        tolerances = dict(manifest.parity.get(precision) or default_tolerances(precision))

        with Staging(opened, precision) as stage:
            builder = BUILDERS[precision](stage, BuildRequest(source, method, per_channel, min_channels))
            found = search(builder, stage, tolerances, max_auc_drop, labelled, threads)
            fits, attempts, candidates, parity, row = found.fits, found.attempts, found.candidates, found.parity, found.row
            reference_films = _reference_film_auc(stage.path, precision)
            report = CalibrationReport(
                bundle=str(root), precision=precision, accepted=fits,
                graphs={manifest.graph_key(g, precision): f"{g}.{precision}.onnx" for g in VARIANT_GRAPHS},
                settings=_settings(precision, data, method, per_channel, min_films, films, min_channels, max_auc_drop, labelled),
                tolerances=tolerances, parity=parity.row_dict(), reference_films=reference_films,
                calibration=builder.calibration_summary(), layers_in_float=builder.layers_in_float(),
                layer_errors=builder.layer_errors(), attempts=attempts if max_auc_drop is not None else [],
                search_order=list(candidates or []),
                notes=notes + list(parity.notes) + builder.notes,
            )
            report.sizes = file_sizes(stage.path, [manifest.graphs["encoder"].file, f"encoder.{precision}.onnx",
                                                   manifest.graphs["model"].file, f"model.{precision}.onnx"])
            report.environment = cpu_info()
            report.latency = _latency(Bundle(stage.path, stage.manifest()), precision, latency_runs, threads)
            if not fits:
                report.failures = rejection(row, max_auc_drop, attempts, precision)
            unstage(report, stage.path, root)
            target = Path(report_dir) if report_dir is not None else root / REPORT_DIR
            in_bundle = report_dir is None
            if not fits or not in_bundle:
                report.write(target)  # a rejected variant's report: <precision>.rejected.json/.md
            if not fits and raise_on_failure:
                raise _rejected(report, root, bool(existing), parity.failure_records)
            if fits:
                stage.commit(edit, precision, report, in_bundle)
        return report


def _existing_variant(bundle: Bundle, precision: str, force: bool) -> list[str]:
    """The bundle's graphs of `precision` already there (refused without `force`); a CalibrationError without its fp32 graphs."""
    manifest = bundle.manifest
    existing = [k for k in (manifest.graph_key(g, precision) for g in VARIANT_GRAPHS) if k in manifest.graphs]
    if existing and not force:
        raise CalibrationError(
            f"{bundle.root}: already has the {precision} variant ({', '.join(existing)}); pass --force to calibrate it again "
            "(the current variant stays until the new one has passed its checks)."
        )
    for name in ("encoder", "scorer", "model"):
        try:
            manifest.graph(name, "fp32")
        except SaladError as exc:
            raise CalibrationError(f"{bundle.root}: cannot calibrate: {exc}") from exc
    return existing


def _rejected(report: CalibrationReport, root: Path, existing: bool, parity_failures: list[dict[str, Any]]) -> CalibrationRejectedError:
    """The error of a variant that missed its tolerances: each failure, the bundle unchanged, and the rejected report."""
    precision = report.precision
    stays = (f" (its {precision} variant and that variant's report {root / REPORT_DIR / (precision + '.md')} stay as they were)"
             if existing else "")
    return CalibrationRejectedError(
        f"{root}: the {precision} variant was not added:\n  " + "\n  ".join(report.failures)
        + f"\nThe bundle is unchanged{stays}. Report of this rejected attempt: {report.files['markdown']}",
        failures=[{"check": "calibration gate", "message": line} for line in report.failures] + parity_failures,
    )


# -- request checks ------------------------------------------------------------------------------------


def _check_request(
    precision: str, method: str, images: int | None, min_images: int, max_auc_drop: float | None,
    data_labelled: str | os.PathLike[str] | None, min_channels: int, latency_runs: int,
) -> None:
    problems = []
    if precision not in BUILDERS:
        problems.append(f"precision {precision!r}: calibration makes {BUILDERS.names()} (fp32 is the exported bundle itself)")
    if method not in CALIBRATION_METHODS:
        problems.append(f"--method {method!r}: expected one of {list(CALIBRATION_METHODS)}")
    if images is not None and images < 1:
        problems.append(f"--films {images}: expected a positive number of films")
    if min_images < 1:
        problems.append(f"--min-films {min_images}: expected a positive number")
    if min_channels < 0:
        problems.append(f"--min-channels {min_channels}: expected ≥ 0")
    if latency_runs < 1:
        problems.append(f"latency_runs={latency_runs}: expected ≥ 1")
    if max_auc_drop is not None:
        if not (0 <= max_auc_drop < 1):
            problems.append(f"--max-auc-drop {max_auc_drop}: expected a number in [0, 1), e.g. 0.005")
        if data_labelled is None:
            problems.append("--max-auc-drop needs --labelled LABELLED (normal and abnormal films) to measure ΔAUC on")
    if data_labelled is not None and not Path(data_labelled).exists():
        problems.append(f"--labelled {data_labelled}: no such file or folder")
    if problems:
        raise CalibrationUsageError("cannot calibrate:\n  " + "\n  ".join(problems))


def _require_torch_reference(root: Path) -> None:
    from salad.runtime.parity import torch_reference_reason

    reason = torch_reference_reason(root)
    if reason:
        raise CalibrationError(
            f"--max-auc-drop measures ΔAUC against PyTorch on --labelled, but {reason}. "
            "Calibrate a bundle exported without --slim, on a machine with salad-edge[train]."
        )


def _require_both_classes(data_labelled: str | os.PathLike[str] | None) -> None:
    from salad.data import read_samples
    from salad.errors import DataError

    try:
        labels = {s.label for s in read_samples(Path(str(data_labelled)))}
    except DataError as exc:
        raise CalibrationError(f"cannot read --labelled: {exc}") from exc
    if labels != {0, 1}:
        raise CalibrationError(
            f"--labelled {data_labelled} holds only label-{labels.pop() if labels else '?'} films; ΔAUC needs normal and "
            "abnormal ones (class folders normal/ + pneumonia/…, or a CSV path,label)."
        )


def _settings(precision: str, data: Any, method: str, per_channel: bool, min_images: int, images: int | None,
              min_channels: int, max_auc_drop: float | None, data_labelled: Any) -> dict[str, Any]:
    if not BUILDERS[precision].needs_films:  # a cast (fp16 or a plug-in's): nothing about films to record
        out: dict[str, Any] = {"precision": precision}
    else:
        out = {"precision": precision, "data": str(data), "method": method, "images": images if images is not None else "all (≤ 500)",
               "min_images": min_images, "weights": "per-channel" if per_channel else "per-tensor", "min_channels": min_channels}
    out["max_auc_drop"] = max_auc_drop
    out["data_labelled"] = str(data_labelled) if data_labelled is not None else None
    return out


# -- measurement -----------------------------------------------------------------------------------------


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


def _latency(bundle: Bundle, precision: str, runs: int, threads: int | None = None) -> dict[str, Any]:
    images = bundle.load_reference(["image"])["image"]
    graphs, static = {}, {}
    for name in VARIANT_GRAPHS:
        for p in ("fp32", precision):
            label = f"{name}.{p}"
            graphs[label] = bundle.graph_path(name, p)
            static[label] = bundle.static_feed(name, p)
    return latency(graphs, images[: max(LATENCY_BATCHES)], static=static, runs=runs, threads=threads)
