"""Parity (docs/architecture.md §9): does every runtime × precision make the PyTorch reference's decisions?

`compare` replays one input set through the PyTorch reference and each requested runtime ×
precision, measures tensor-level (embedding cosine, |Δscore|, |Δknn_angle|) and decision-level
(label agreement at the bundle threshold, Spearman, ΔAUC/ΔAUPRC) differences and the count of
non-finite outputs, and checks each against the precision's tolerances from the manifest.

The input set is the bundle's reference.npz (preprocessed films with the PyTorch outputs stored at
export) plus, when `data` is given, a labelled folder or CSV whose PyTorch outputs are computed here
by the torch runtime. Without torch (a console) or without checkpoint.pt (a --slim bundle) only the
reference films are used, and the report says so. Every metric of every row is measured before
anything raises, so one run lists every failure with the tolerance that would have passed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np

from salad.bundle import CHECKPOINT_FILE, EMBEDDING, IMAGE_INPUT, REFERENCE_FILE, Bundle
from salad.data import read_samples
from salad.errors import BackendUnavailableError, BundleError, ParityError, SaladError
from salad.manifest import PRECISIONS, Manifest, read_manifest
from salad.metrics import (  # noqa: F401 - spearman, require_sklearn: parity's public names before salad.metrics
    agreeing,
    cosines,
    detection_metrics,
    has_both_classes,
    label_agreement,
    max_p99,
    min_mean,
    require_sklearn,
    row_abs_diff,
    spearman,
)
from salad.preprocess import load_batch
from salad.scoring import SCORE_NAMES

from .base import BundleGraph, Runner, create_runner, runner_class
from .scorer import Scorer
from .torch_runner import TorchRunner

Outputs: TypeAlias = "dict[str, np.ndarray]"
Bound: TypeAlias = Literal["max", "min", "abs"]

#: The runtime whose fp32 outputs every other runtime and precision is held to.
REFERENCE_RUNTIME = "torch"
#: Outputs every compared graph must produce (the bundle's merged "model" graph).
COMPARED_OUTPUTS = (EMBEDDING, *SCORE_NAMES)

#: Every checked metric and how its value meets a tolerance: "max" value ≤ tol, "min" value ≥ tol,
#: "abs" |value| ≤ tol (signed differences such as ΔAUC).
METRICS: dict[str, Bound] = {
    "embedding_cosine_min": "min",
    "embedding_cosine_mean": "min",
    "max_abs_score_diff": "max",
    "p99_abs_score_diff": "max",
    "max_abs_knn_angle_diff": "max",
    "p99_abs_knn_angle_diff": "max",
    "label_agreement": "min",
    "spearman": "min",
    "delta_auc": "abs",
    "delta_auprc": "abs",
    "nonfinite": "max",
}
#: NaN or infinite outputs are never acceptable, whatever a manifest or caller says.
FIXED_TOLERANCES = {"nonfinite": 0.0}
#: Metrics measured on the labelled --data films only.
LABELLED_METRICS = ("auc", "auprc", "reference_auc", "reference_auprc", "delta_auc", "delta_auprc")


# -- the report ------------------------------------------------------------------------------------


def _safe_round(value: float, upper: bool) -> float:
    """`value` in as few significant digits (≥ 3) as still pass: rounded up for an upper bound, down for a lower."""
    for digits in range(3, 18):
        rounded = float(f"{value:.{digits}g}")
        if (rounded >= value) if upper else (rounded <= value):
            return rounded
    return value


def format_value(value: float | None) -> str:
    """A metric for people: 6 significant digits, more for values just below 1 (cosines), '-' when absent."""
    if value is None:
        return "-"
    if math.isnan(value):
        return "NaN"
    if 0.999 < value < 1.0:  # "1" would hide how far a cosine or correlation is from 1
        return f"{value:.{min(15, 2 + math.ceil(-math.log10(1.0 - value)))}f}".rstrip("0").rstrip(".")
    return f"{value:.6g}"


@dataclass(frozen=True)
class Check:
    """One metric of one runtime × precision against its tolerance.

    `tolerance` None means the precision has no tolerance for the metric (reported, not checked);
    `value` None means the metric could not be measured (e.g. ΔAUC without labelled data).
    """

    metric: str
    value: float | None
    tolerance: float | None
    bound: Bound

    @property
    def checked(self) -> bool:
        return self.value is not None and self.tolerance is not None

    @property
    def passed(self) -> bool:
        """False only for a measured, toleranced metric outside its tolerance (NaN always fails)."""
        if not self.checked:
            return True
        assert self.value is not None and self.tolerance is not None
        if self.bound == "min":
            return self.value >= self.tolerance
        return (abs(self.value) if self.bound == "abs" else self.value) <= self.tolerance

    @property
    def passing_tolerance(self) -> float | None:
        """The tightest tolerance this value meets (the smallest for "max"/"abs", the largest for "min")."""
        if self.value is None or math.isnan(self.value):
            return None
        if self.bound == "min":
            return _safe_round(self.value, upper=False)
        return _safe_round(abs(self.value), upper=True)

    def describe(self) -> str:
        """'max_abs_score_diff = 0.0031 > tolerance 1e-05 (a tolerance ≥ 0.00311 would pass)'."""
        value = format_value(self.value)
        if self.value is None:
            return f"{self.metric}: not measured"
        if self.tolerance is None:
            return f"{self.metric} = {value} (no tolerance for this precision: not checked)"
        shown = f"|{self.metric}| = {format_value(abs(self.value))}" if self.bound == "abs" else f"{self.metric} = {value}"
        op = ("≥" if self.passed else "<") if self.bound == "min" else ("≤" if self.passed else ">")
        text = f"{shown} {op} tolerance {self.tolerance:g}"
        if not self.passed:
            needed = self.passing_tolerance
            if needed is None:
                text += " (no tolerance passes NaN)"
            else:
                # repr: the short decimal needed was rounded to, so copying it into --tolerance really passes
                text += f" (a tolerance {'≤' if self.bound == 'min' else '≥'} {needed!r} would pass)"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric, "value": _json_number(self.value), "tolerance": self.tolerance, "bound": self.bound,
            "checked": self.checked, "passed": self.passed, "passing_tolerance": self.passing_tolerance,
        }


@dataclass
class ParityRow:
    """One runtime × precision compared with the reference: every metric, every check, the films that differ."""

    runtime: str
    precision: str
    device: str
    images: int
    metrics: dict[str, float | None]
    checks: list[Check]
    #: Films whose label at the bundle threshold differs from the reference's (at most 20 listed).
    disagreements: list[str] = field(default_factory=list)
    #: The film with the largest |Δscore|.
    worst_image: str | None = None

    @property
    def name(self) -> str:
        return f"{self.runtime}/{self.precision}"

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        """The JSON row: runtime, precision, every metric at top level, passed, checks, failures.

        The film counts are the report's ("images"), the same for every row.
        """
        return {
            "runtime": self.runtime,
            "precision": self.precision,
            "device": self.device,
            **{k: _json_number(v) for k, v in self.metrics.items()},
            "passed": self.passed,
            "failures": [c.describe() for c in self.failed_checks],
            "checks": [c.to_dict() for c in self.checks],
            "disagreements": list(self.disagreements),
            "worst_image": self.worst_image,
        }


@dataclass
class ParityReport:
    """The result of `compare`: what was compared with what, one row per runtime × precision, notes."""

    bundle: Path
    #: "pytorch" (torch ran here for the --data films) or "reference.npz" (stored outputs only).
    reference: str
    #: Film counts by source: {"reference": 32, "data": 80}.
    images: dict[str, int]
    threshold: float
    threshold_score: str
    rows: list[ParityRow]
    notes: list[str] = field(default_factory=list)
    data: str | None = None

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def failures(self) -> list[str]:
        """One line per failing check: 'onnxruntime/fp32: max_abs_score_diff = … > tolerance … (…)'."""
        return [f"{r.name}: {c.describe()}" for r in self.rows for c in r.failed_checks]

    def row(self, runtime: str, precision: str = "fp32") -> ParityRow:
        for r in self.rows:
            if (r.runtime, r.precision) == (runtime, precision):
                return r
        raise SaladError(f"the report has no row {runtime}/{precision}; it has {[r.name for r in self.rows]}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON: with one row its metrics sit at the top level; with several they are a list under "rows"."""
        context = {
            "bundle": str(self.bundle),
            "reference": self.reference,
            "images": dict(self.images),
            "data": self.data,
            "threshold": {"value": self.threshold, "score": self.threshold_score},
            "notes": list(self.notes),
        }
        if len(self.rows) == 1:
            return {**self.rows[0].to_dict(), **context}
        return {"passed": self.passed, **context, "rows": [r.to_dict() for r in self.rows]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def to_markdown(self) -> str:
        from .report import render_markdown

        return render_markdown(self)

    def format_table(self) -> str:
        from .report import render_table

        return render_table(self)

    def raise_if_failed(self) -> None:
        """ParityError listing every failing check of every row (nothing when all pass)."""
        if self.passed:
            return
        failing = [r.name for r in self.rows if not r.passed]
        raise ParityError(
            f"parity failed for {', '.join(failing)} against the PyTorch reference on {sum(self.images.values())} "
            f"film(s) of {self.bundle}:\n  " + "\n  ".join(self.failures)
            + "\nFix the graph or runtime, or, if the differences are acceptable, re-calibrate the variant or pass "
            "looser tolerances (--tolerance PRECISION:METRIC=VALUE)."
        )


def _json_number(value: float | None) -> float | None:
    """JSON has no NaN: a NaN metric becomes null (its check says it failed, `nonfinite` says why)."""
    return None if value is None or math.isnan(value) else float(value)


# -- metrics -----------------------------------------------------------------------------------------


def measure(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    threshold: float,
    threshold_score: str = "score",
    labels: np.ndarray | None = None,
) -> tuple[dict[str, float | None], np.ndarray]:
    """Every parity metric of `candidate` against `reference` (same films, same order).

    Decisions use `threshold_score` at `threshold` through salad.scoring.decide. `labels` (0/1, or
    -1 for an unlabelled film) give AUC/AUPRC on the labelled films when both classes are present.
    A NaN anywhere makes the metrics it enters NaN (their checks fail) and is counted in `nonfinite`.
    Returns the metrics and the indices of the films whose labels disagree.
    """
    ref = {k: np.asarray(reference[k], np.float64) for k in COMPARED_OUTPUTS}
    got = {k: np.asarray(candidate[k], np.float64) for k in COMPARED_OUTPUTS}
    m: dict[str, float | None] = dict.fromkeys(METRICS)
    m.update(dict.fromkeys(LABELLED_METRICS))
    m["embedding_cosine_min"], m["embedding_cosine_mean"] = min_mean(cosines(got[EMBEDDING], ref[EMBEDDING]))
    m["max_abs_score_diff"], m["p99_abs_score_diff"] = max_p99(row_abs_diff(got["score"], ref["score"]))
    m["max_abs_knn_angle_diff"], m["p99_abs_knn_angle_diff"] = max_p99(row_abs_diff(got["knn_angle"], ref["knn_angle"]))
    decided = got[threshold_score]
    same = agreeing(decided, ref[threshold_score], threshold)
    m["label_agreement"] = label_agreement(decided, ref[threshold_score], threshold)
    m["spearman"] = spearman(decided, ref[threshold_score])
    if labels is not None:
        known = np.asarray(labels) >= 0
        y = np.asarray(labels)[known]
        if has_both_classes(y):
            ref_auc, ref_ap = detection_metrics(y, ref[threshold_score][known])
            if np.all(np.isfinite(decided[known])):
                auc, ap = detection_metrics(y, decided[known])
            else:
                auc = ap = float("nan")
            m.update(auc=auc, auprc=ap, reference_auc=ref_auc, reference_auprc=ref_ap,
                     delta_auc=auc - ref_auc, delta_auprc=ap - ref_ap)
    m["nonfinite"] = float(sum(int((~np.isfinite(got[k])).sum()) for k in COMPARED_OUTPUTS))
    return m, np.flatnonzero(~same)


# -- tolerances --------------------------------------------------------------------------------------


def resolve_tolerances(
    manifest: Manifest,
    precisions: Iterable[str],
    overrides: Mapping[str, float] | Mapping[str, Mapping[str, float]] | None = None,
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Tolerances per precision: the manifest's (Manifest.tolerances), then `overrides`, then the fixed ones.

    `overrides` is either {metric: value} for every precision or {precision: {metric: value}}.
    Returns the tolerances and notes about manifest keys that are not parity metrics.
    """
    per_precision = _split_overrides(overrides)
    notes: list[str] = []
    out: dict[str, dict[str, float]] = {}
    for precision in precisions:
        base = manifest.tolerances(precision)
        unknown = sorted(set(base) - set(METRICS))
        if unknown:
            notes.append(f"manifest tolerances for {precision} name unknown metric(s) {unknown}; they are ignored.")
        tol = {k: float(v) for k, v in base.items() if k in METRICS}
        tol.update(per_precision.get("*", {}))
        tol.update(per_precision.get(precision, {}))
        tol.update(FIXED_TOLERANCES)
        out[precision] = tol
    return out, notes


def _split_overrides(overrides: Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    """{metric: v} → {"*": {…}}; {precision: {metric: v}} as is; refusing unknown names and fixed metrics."""
    if not overrides:
        return {}
    nested = all(isinstance(v, Mapping) for v in overrides.values())
    groups = dict(overrides) if nested else {"*": overrides}
    out: dict[str, dict[str, float]] = {}
    for precision, values in groups.items():
        if precision != "*" and precision not in PRECISIONS:
            raise SaladError(f"tolerance override for precision {precision!r}; expected one of {list(PRECISIONS)}.")
        for metric, value in values.items():
            if metric in FIXED_TOLERANCES:
                raise SaladError(f"tolerance {metric!r} is fixed at {FIXED_TOLERANCES[metric]:g}: NaN or infinite outputs never pass.")
            if metric not in METRICS:
                raise SaladError(f"unknown parity metric {metric!r} in tolerance overrides; expected one of {sorted(set(METRICS) - set(FIXED_TOLERANCES))}.")
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise SaladError(f"tolerance {metric}={value!r} is not a number.") from None
            if not math.isfinite(number):
                raise SaladError(f"tolerance {metric}={value!r}: expected a finite number.")
            if METRICS[metric] == "min" and number > 1:
                raise SaladError(f"tolerance {metric}={number:g} can never pass: {metric} is at most 1.")
            if METRICS[metric] != "min" and number < 0:
                raise SaladError(f"tolerance {metric}={number:g} can never pass: it bounds a magnitude, so use a value ≥ 0.")
            out.setdefault(precision, {})[metric] = number
    return out


def parse_tolerance_options(options: Sequence[str]) -> dict[str, dict[str, float]]:
    """CLI `--tolerance [PRECISION:]METRIC=VALUE` strings → {precision or "*": {metric: value}}."""
    out: dict[str, dict[str, float]] = {}
    for text in options:
        lhs, sep, value = text.partition("=")
        precision, _, metric = lhs.rpartition(":")
        if not sep or not metric.strip():
            raise SaladError(f"--tolerance {text!r}: expected [PRECISION:]METRIC=VALUE, e.g. max_abs_score_diff=1e-4 or int8:label_agreement=0.98.")
        try:
            number = float(value)
        except ValueError:
            raise SaladError(f"--tolerance {text!r}: {value!r} is not a number.") from None
        out.setdefault(precision.strip() or "*", {})[metric.strip()] = number
    _split_overrides(out)  # validate names and values now, with the option's wording
    return out


# -- the input set and the runs ------------------------------------------------------------------------


@dataclass
class _InputSet:
    """The films every runtime sees: the reference films first, then any --data films."""

    images: np.ndarray  # [n, 1, S, S] float32, already preprocessed
    names: list[str]
    n_reference: int
    stored: Outputs  # PyTorch outputs of the reference films, from reference.npz
    labels: np.ndarray | None = None  # 0/1 for --data films, -1 for reference films; None without --data

    def add_data(self, data: Path, manifest: Manifest) -> None:
        """Read and preprocess the labelled --data films once, for every runtime."""
        samples = read_samples(data)
        self.images = np.concatenate([self.images, load_batch([s.path for s in samples], manifest.preprocess_config)])
        self.names += [_display_name(s.path, data) for s in samples]
        self.labels = np.array([-1] * self.n_reference + [s.label for s in samples], dtype=np.int64)


def read_reference(root: Path, manifest: Manifest) -> tuple[np.ndarray, list[str], Outputs]:
    """reference.npz's images, film names ("reference.npz:NAME") and stored PyTorch outputs (never unpickling)."""
    bundle = Bundle(root, manifest)
    arrays = bundle.load_reference(("image", "path", *COMPARED_OUTPUTS))
    names = [f"{bundle.reference_path.name}:{p}" for p in arrays.pop("path")]  # told apart from the same film in --data
    return arrays.pop("image"), names, arrays


def torch_reference_reason(root: Path) -> str | None:
    """Why the PyTorch reference cannot run here (no torch, a --slim bundle), or None if it can."""
    reason = TorchRunner.unavailable_reason()
    if reason:
        return "PyTorch is not installed here"
    if not (root / CHECKPOINT_FILE).is_file():
        return f"the bundle has no {CHECKPOINT_FILE} (exported with --slim)"
    return None


def run_images(runner: Runner, images: np.ndarray, static: Mapping[str, np.ndarray] | None = None) -> Outputs:
    """All `images` through an active runner in chunks of its max_batch; outputs concatenated."""
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), runner.max_batch):
        out = runner.infer({IMAGE_INPUT: images[start : start + runner.max_batch], **(static or {})})
        for name, value in out.items():
            parts.setdefault(name, []).append(value)
    return {name: np.concatenate(values) for name, values in parts.items()}


def _request_problems(root: Path, manifest: Manifest, pairs: Sequence[tuple[str, str]]) -> tuple[list[str], bool]:
    """Everything wrong with the requested runtime × precision pairs, found before any film is run;
    and whether all are missing backends."""
    problems: list[str] = []
    only_unavailable = True
    for runtime in dict.fromkeys(r for r, _ in pairs):
        cls = runner_class(runtime)  # unknown names raise, listing the registered ones
        reason = cls.unavailable_reason()
        if reason:
            problems.append(f"the {runtime} runtime is unavailable: {reason}")
        elif runtime == REFERENCE_RUNTIME and not (root / CHECKPOINT_FILE).is_file():
            problems.append(
                f"the {runtime} runtime needs {CHECKPOINT_FILE}, which this bundle does not have (exported with --slim); "
                "compare the other runtimes with the outputs stored in reference.npz instead"
            )
            only_unavailable = False
    for precision in dict.fromkeys(p for _, p in pairs):
        if precision not in PRECISIONS:
            problems.append(f"precision {precision!r}: expected one of {list(PRECISIONS)}")
            only_unavailable = False
            continue
        try:
            manifest.graph("model", precision)
        except BundleError as exc:
            problems.append(str(exc))
            only_unavailable = False
        if precision != "fp32" and (REFERENCE_RUNTIME, precision) in pairs:
            problems.append(
                f"the {REFERENCE_RUNTIME} runtime is the fp32 reference and has no {precision} variant; "
                f"compare {precision} with --runtime onnxruntime or tensorrt"
            )
            only_unavailable = False
    return problems, only_unavailable


def compare(
    bundle: str | os.PathLike[str],
    runtimes: Sequence[str] = ("onnxruntime",),
    precisions: Sequence[str] | None = None,
    data: str | os.PathLike[str] | None = None,
    tolerances: Mapping[str, float] | Mapping[str, Mapping[str, float]] | None = None,
    *,
    device: str | None = None,
    max_batch: int = 32,
    raise_on_failure: bool = False,
) -> ParityReport:
    """Compare each runtime × precision with the PyTorch reference on the bundle's reference films (+ `data`).

    precisions: default every precision the bundle has. tolerances: overrides of the manifest's
    per-precision tolerances, {metric: value} or {precision: {metric: value}}. device: for the
    compared runtimes (default each runtime's own; the PyTorch reference runs on the CPU).
    Every metric of every row is measured first; with raise_on_failure a ParityError then lists
    every failing check. Unknown runtimes, missing backends or precisions raise before any work.
    The --data films are read and preprocessed once and held in memory (4·S² bytes each), so every
    runtime sees the same tensors.
    """
    root = Path(bundle)
    manifest = read_manifest(root, verify=True)
    runtimes = list(dict.fromkeys([runtimes] if isinstance(runtimes, str) else runtimes))
    explicit = bool(precisions)
    precisions = list(dict.fromkeys([precisions] if isinstance(precisions, str) else precisions or manifest.precisions()))
    if not runtimes or not precisions:
        raise SaladError("parity needs at least one runtime and one precision (e.g. --runtime onnxruntime --precision fp32).")
    # Asked for by default (every precision of the bundle), the torch reference takes part in fp32 only.
    pairs = [(r, p) for r in runtimes for p in precisions if explicit or r != REFERENCE_RUNTIME or p == "fp32"]
    problems, only_unavailable = _request_problems(root, manifest, pairs)
    if problems:
        kind = BackendUnavailableError if only_unavailable else SaladError
        raise kind(f"cannot compare {root}:\n  " + "\n  ".join(problems))
    tol, notes = resolve_tolerances(manifest, precisions, tolerances)

    images, names, stored = read_reference(root, manifest)
    inputs = _InputSet(images, names, len(images), stored)
    no_torch = torch_reference_reason(root)
    if data is not None and no_torch is None:
        inputs.add_data(Path(data), manifest)
        data_labels = inputs.labels[inputs.n_reference :] if inputs.labels is not None else np.zeros(0)
        if len(np.unique(data_labels)) < 2:
            notes.append(f"{data} holds only label-{int(data_labels[0])} films: AUC and AUPRC need normal and abnormal ones.")
        else:
            require_sklearn()  # before any film runs
    elif data is not None:
        notes.append(
            f"--data {data} was not used: {no_torch}, so its films have no PyTorch outputs. Compared on the "
            f"{inputs.n_reference} reference films only, against the PyTorch outputs stored in {REFERENCE_FILE}."
        )
    elif no_torch is not None:
        notes.append(f"{no_torch}: compared against the PyTorch outputs stored in {REFERENCE_FILE}.")

    runs = _Runs(root, manifest, inputs, device=device, max_batch=max_batch)
    first = runs.scorer(*pairs[0])  # reads and checks the bundle's threshold
    reference = runs.reference()
    rows = [
        _row(runtime, precision, *runs.outputs(runtime, precision), reference, inputs, first, tol[precision])
        for runtime, precision in pairs
    ]
    counts = {"reference": inputs.n_reference}
    if len(inputs.images) > inputs.n_reference:
        counts["data"] = len(inputs.images) - inputs.n_reference
    report = ParityReport(
        bundle=root, reference=REFERENCE_FILE + ("+torch" if "data" in counts else ""), images=counts,
        threshold=first.threshold, threshold_score=first.threshold_score, rows=rows, notes=notes,
        data=str(data) if data is not None else None,
    )
    if raise_on_failure:
        report.raise_if_failed()
    return report


def _row(
    runtime: str, precision: str, candidate: Outputs, device: str, reference: Outputs, inputs: _InputSet,
    decider: Scorer, tolerances: Mapping[str, float],
) -> ParityRow:
    metrics, disagree = measure(reference, candidate, decider.threshold, decider.threshold_score, inputs.labels)
    diff = row_abs_diff(candidate["score"], reference["score"])
    worst = None if not diff.size or np.all(np.isnan(diff)) else int(np.nanargmax(diff))
    return ParityRow(
        runtime=runtime, precision=precision, device=device, images=len(inputs.images), metrics=metrics,
        checks=[Check(k, metrics[k], tolerances.get(k), bound) for k, bound in METRICS.items()],
        disagreements=[inputs.names[i] for i in disagree[:20]],
        worst_image=None if worst is None else inputs.names[worst],
    )


def _display_name(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) if root.is_dir() else path.name
    except ValueError:
        return path.name


class _Runs:
    """Runs each runtime × precision × device once over the input set; torch fp32 on CPU doubles as the reference."""

    def __init__(self, root: Path, manifest: Manifest, inputs: _InputSet, *, device: str | None, max_batch: int) -> None:
        self.root, self.manifest, self.inputs = root, manifest, inputs
        self.device, self.max_batch = device, max_batch
        self._cache: dict[tuple[str, str, str], Outputs] = {}

    def scorer(self, runtime: str, precision: str, device: str | None = None) -> Scorer:
        """A Scorer (graph contract checked, threshold read) around a runner that is not active yet."""
        graph = BundleGraph.from_manifest(self.root, self.manifest, "model", precision)
        runner = create_runner(runtime, graph, max_batch=self.max_batch, device=device or self.device)
        return Scorer(self.root, self.manifest, runner)

    def outputs(self, runtime: str, precision: str, device: str | None = None) -> tuple[Outputs, str]:
        """The runtime's outputs for every film of the input set, and the device they were computed on."""
        runner = self.scorer(runtime, precision, device).runner
        key = (runtime, precision, runner.device)
        if key not in self._cache:
            with runner:
                out = run_images(runner, self.inputs.images, runner.graph.static_feed())
            missing = [k for k in COMPARED_OUTPUTS if k not in out]
            if missing:
                raise BundleError(f"{runner.graph.path}: graph has no output(s) {missing}; parity compares {list(COMPARED_OUTPUTS)}.")
            self._cache[key] = out
        return self._cache[key], runner.device

    def reference(self) -> Outputs:
        """Stored PyTorch outputs for the reference films; the torch runtime's on the CPU for --data films."""
        stored, n = self.inputs.stored, self.inputs.n_reference
        if len(self.inputs.images) == n:
            return {k: np.asarray(stored[k]) for k in COMPARED_OUTPUTS}
        live, _ = self.outputs(REFERENCE_RUNTIME, "fp32", "cpu")
        return {k: np.concatenate([np.asarray(stored[k]), live[k][n:]]) for k in COMPARED_OUTPUTS}
