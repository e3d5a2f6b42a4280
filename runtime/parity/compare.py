"""`compare`: the input set (reference films + --data), the runs of each runtime × precision, the rows."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from salad.bundle import CHECKPOINT_FILE, IMAGE_INPUT, REFERENCE_FILE, Bundle
from salad.data import read_samples
from salad.errors import BackendUnavailableError, BundleError, ConfigError
from salad.manifest import PRECISIONS, Manifest
from salad.metrics import (
    require_sklearn,
    row_abs_diff,
)
from salad.preprocess import load_batch
from salad.progress import progress
from salad.renames import renamed_keywords

from ..base import BundleGraph, Runner, create_runner, runner_class
from ..scorer import Scorer
from ..torch_runner import TorchRunner
from .checks import COMPARED_OUTPUTS, REFERENCE_RUNTIME, Outputs, judge
from .measure import measure
from .model import ParityReport, ParityRow
from .tolerances import resolve_tolerances

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


def read_reference(bundle: Bundle) -> tuple[np.ndarray, list[str], Outputs]:
    """reference.npz's images, film names ("reference.npz:NAME") and stored PyTorch outputs (never unpickling)."""
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


def _request_problems(bundle: Bundle, pairs: Sequence[tuple[str, str]]) -> tuple[list[str], bool]:
    """Everything wrong with the requested runtime × precision pairs, found before any film is run;
    and whether all are missing backends."""
    root, manifest = bundle.root, bundle.manifest
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


@renamed_keywords(data="labelled")
def compare(
    bundle: str | os.PathLike[str],
    runtimes: Sequence[str] = ("onnxruntime",),
    precisions: Sequence[str] | None = None,
    labelled: str | os.PathLike[str] | None = None,
    tolerances: Mapping[str, float] | Mapping[str, Mapping[str, float]] | None = None,
    *,
    device: str | None = None,
    max_batch: int = 32,
    raise_on_failure: bool = False,
    runner_options: Mapping[str, Any] | None = None,
    reference_films: bool = True,
) -> ParityReport:
    """Compare each runtime × precision with the PyTorch reference on the bundle's reference films (+ `labelled`).

    precisions: default every precision the bundle has. tolerances: overrides of the manifest's
    per-precision tolerances, {metric: value} or {precision: {metric: value}}. device: for the
    compared runtimes (default each runtime's own; the PyTorch reference runs on the CPU).
    runner_options: backend options (threads, cache_dir, …); each runtime gets those it declares.
    Every metric of every row is measured first; with raise_on_failure a ParityError then lists
    every failing check. Unknown runtimes, missing backends or precisions raise before any work.
    The --labelled films are read and preprocessed once and held in memory (4·S² bytes each), so every
    runtime sees the same tensors. reference_films=False leaves the bundle's reference films out when `labelled`
    is compared (they are validation films: the demo reports parity on test films only). The keywords are
    `salad parity`'s options; the old data= still works with a DeprecationWarning.
    """
    opened = Bundle.open(Path(bundle), verify=True)
    root, manifest = opened.root, opened.manifest
    runtimes = list(dict.fromkeys([runtimes] if isinstance(runtimes, str) else runtimes))
    explicit = bool(precisions)
    precisions = list(dict.fromkeys([precisions] if isinstance(precisions, str) else precisions or manifest.precisions()))
    if not runtimes or not precisions:
        raise ConfigError("parity needs at least one runtime and one precision (e.g. --runtime onnxruntime --precision fp32).")
    # Asked for by default (every precision of the bundle), the torch reference takes part in fp32 only.
    pairs = [(r, p) for r in runtimes for p in precisions if explicit or r != REFERENCE_RUNTIME or p == "fp32"]
    problems, only_unavailable = _request_problems(opened, pairs)
    if problems:
        kind = BackendUnavailableError if only_unavailable else ConfigError  # an impossible request: exit 2
        raise kind(f"cannot compare {root}:\n  " + "\n  ".join(problems))
    tol, notes = resolve_tolerances(manifest, precisions, tolerances)

    images, names, stored = read_reference(opened)
    no_torch = torch_reference_reason(root)
    if not reference_films and labelled is not None and no_torch is None:
        images, names, stored = images[:0], [], {k: np.asarray(v)[:0] for k, v in stored.items()}
    inputs = _InputSet(images, names, len(images), stored)
    if labelled is not None and no_torch is None:
        inputs.add_data(Path(labelled), manifest)
        data_labels = inputs.labels[inputs.n_reference :] if inputs.labels is not None else np.zeros(0)
        if len(np.unique(data_labels)) < 2:
            notes.append(f"{labelled} holds only label-{int(data_labels[0])} films: AUC and AUPRC need normal and abnormal ones.")
        else:
            require_sklearn()  # before any film runs
    elif labelled is not None:
        notes.append(
            f"--labelled {labelled} was not used: {no_torch}, so its films have no PyTorch outputs. Compared on the "
            f"{inputs.n_reference} reference films only, against the PyTorch outputs stored in {REFERENCE_FILE}."
        )
    elif no_torch is not None:
        notes.append(f"{no_torch}: compared against the PyTorch outputs stored in {REFERENCE_FILE}.")

    runs = _Runs(opened, inputs, device=device, max_batch=max_batch, options=runner_options or {})
    first = runs.scorer(*pairs[0])  # reads and checks the bundle's threshold
    reference = runs.reference()
    rows = [
        _row(runtime, precision, *runs.outputs(runtime, precision), reference, inputs, first, tol[precision])
        for runtime, precision in progress(pairs, desc="parity", unit="row", disable=len(pairs) < 2)
    ]
    counts = {"reference": inputs.n_reference}
    if len(inputs.images) > inputs.n_reference:
        counts["data"] = len(inputs.images) - inputs.n_reference
    report = ParityReport(
        bundle=root, reference=REFERENCE_FILE + ("+torch" if "data" in counts else ""), images=counts,
        threshold=first.threshold, threshold_score=first.threshold_score, rows=rows, notes=notes,
        data=str(labelled) if labelled is not None else None,
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
        checks=judge(metrics, tolerances),
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

    def __init__(self, bundle: Bundle, inputs: _InputSet, *, device: str | None, max_batch: int,
                 options: Mapping[str, Any]) -> None:
        self.bundle, self.root, self.manifest, self.inputs = bundle, bundle.root, bundle.manifest, inputs
        self.device, self.max_batch, self.options = device, max_batch, dict(options)
        self._cache: dict[tuple[str, str, str], Outputs] = {}

    def scorer(self, runtime: str, precision: str, device: str | None = None) -> Scorer:
        """A Scorer (graph contract checked, threshold read) around a runner that is not active yet."""
        graph = BundleGraph.from_bundle(self.bundle, "model", precision)
        declared = runner_class(runtime).options
        options = {k: v for k, v in self.options.items() if k in declared}
        runner = create_runner(runtime, graph, max_batch=self.max_batch, device=device or self.device, **options)
        return Scorer(self.bundle, runner)

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
