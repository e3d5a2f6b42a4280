"""Scorer: the shared preprocessing + one runner + the bundle's threshold, from files or arrays to labels.

`Scorer.from_bundle` verifies the manifest (schema and every sha256) before anything else, builds
the runner for the bundle's merged "model" graph at the requested precision, and activates it on
first use. Every runtime therefore sees exactly the same preprocessed tensors, and every label
comes from the one decision rule (salad.scoring.decide) at the threshold stored in the bundle.
Listeners (the drift guard, a progress bar, the DICOM node) bind to its events (runtime/events.py): `prepared` for
each film decoded, `scored` for each Result, `batch-scored` for each runner batch, so a film is decoded once whoever
else needs it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeAlias

import numpy as np

from salad.bundle import BANK_INPUT, IMAGE_INPUT, Bundle
from salad.errors import BundleError, ConfigError, DataError
from salad.filmcheck import check_film
from salad.imageio import read_image
from salad.manifest import PRECISIONS
from salad.preprocess import PreprocessConfig, preprocess
from salad.scoring import KNN_ANGLE, SCORE_NAMES, decide

from .base import BundleGraph, Runner, create_runner
from .events import (
    BATCH_SCORED,
    PREPARED,
    SCORED,
    Events,
    InterventionEvent,
    NotificationEvent,
    P,
    Prepared,
    Scored,
    ScoredBatch,
)
from .result import Result, Timings
from .verified import open_verified

ImageInput: TypeAlias = "str | os.PathLike[str] | np.ndarray"
#: Arrays may exceed [0, 1] by this much (rounding in a caller's own scaling) before they are refused.
RANGE_SLACK = 1e-3


class Scorer:
    """Preprocessing + a Runner + thresholds. Build it with `Scorer.from_bundle`; use `score`."""

    def __init__(self, bundle: Bundle, runner: Runner) -> None:
        self.bundle = bundle.root  # the folder: what messages name
        self.manifest = manifest = bundle.manifest
        self.runner = runner
        self.preprocess_config: PreprocessConfig = manifest.preprocess_config
        threshold = bundle.threshold
        self.threshold, self.threshold_score = threshold.value, threshold.score
        self._check_graph()
        self._extra_feed: dict[str, np.ndarray] = {}
        #: Milliseconds the last `activate()` took (engine load or build): the cold-start cost.
        self.activation_ms = 0.0
        #: The handlers bound to this scorer's events (PREPARED, SCORED: runtime/events.py).
        self.events = Events()
        self._taken = 0  # films taken in so far: the `index` of their events

    @classmethod
    def from_bundle(
        cls,
        path: Bundle | str | os.PathLike[str],
        runtime: str = "onnxruntime",
        precision: str = "fp32",
        device: str | None = None,
        max_batch: int = 32,
        **runner_options: Any,
    ) -> Scorer:
        """Verify the bundle, then prepare (not yet activate) `runtime` on its "model" graph at `precision`.

        `path` may be a Bundle already opened by `open_to_score` (a caller that reads it too opens it once).
        `device` defaults to the runtime's own default (cpu for torch and onnxruntime, cuda:0 for
        tensorrt); `runner_options` go to the backend (e.g. threads=2, cache_dir=…).
        """
        if precision not in PRECISIONS:
            raise ConfigError(f"precision {precision!r}; expected one of {list(PRECISIONS)}.")
        opened = path if isinstance(path, Bundle) else open_to_score(
            path, runtime, precision, cache_dir=runner_options.get("cache_dir"), use_cache=runner_options.get("use_cache", True))
        graph = BundleGraph.from_bundle(opened, "model", precision)
        runner = create_runner(runtime, graph, max_batch=max_batch, device=device, **runner_options)
        return cls(opened, runner)

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def runtime(self) -> str:
        return self.runner.name

    @property
    def precision(self) -> str:
        return self.runner.graph.precision

    @property
    def max_batch(self) -> int:
        return self.runner.max_batch

    def bind(self, event: NotificationEvent[P] | InterventionEvent[P, Any], handler: Callable[[P], object]) -> None:
        """Call `handler` on each `event` (runtime.events.PREPARED, SCORED) of this scorer."""
        self.events.bind(event, handler)

    def unbind(self, event: NotificationEvent[P] | InterventionEvent[P, Any], handler: Callable[[P], object]) -> None:
        self.events.unbind(event, handler)

    def bound(self, event: NotificationEvent[P] | InterventionEvent[P, Any],
              handler: Callable[[P], object]) -> AbstractContextManager[None]:
        """`with scorer.bound(PREPARED, handler):` — bound for the block only."""
        return self.events.bound(event, handler)

    def activate(self) -> None:
        """Load the engine now (otherwise the first `score` call does it)."""
        if self.runner.is_active:
            return
        start = time.perf_counter_ns()
        self._extra_feed.update(self.runner.graph.static_feed())
        self.runner.activate()
        self.activation_ms = (time.perf_counter_ns() - start) / 1e6

    def close(self) -> None:
        self.runner.deactivate()
        self._extra_feed.clear()

    def __enter__(self) -> Scorer:
        self.activate()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Scorer({self.bundle}, runtime={self.runtime!r}, precision={self.precision!r}, device={self.runner.device!r})"

    # -- scoring ---------------------------------------------------------------------------------

    def score(
        self, inputs: ImageInput | Sequence[ImageInput], *, on_error: Literal["raise", "record"] = "raise"
    ) -> list[Result]:
        """Score image files (PNG/JPEG/TIFF/DICOM) and/or grey arrays (H×W floats in [0, 1]; a 3-D array is a stack).

        With on_error="record", an image that cannot be read or preprocessed gives a Result with
        `error` set and the others are still scored; with "raise" (default) its DataError propagates.
        Each film decoded is announced as PREPARED, each Result as SCORED, in input order, and each runner batch as
        BATCH_SCORED, whose handler may stop the call there (runtime/events.py).
        """
        if on_error not in ("raise", "record"):
            raise ConfigError(f"on_error={on_error!r}; expected 'raise' or 'record'.")
        items = _expand(inputs)
        self.activate()
        results: list[Result | None] = [None] * len(items)
        first = self._taken  # the event index of items[0]
        self._taken += len(items)
        for start in range(0, len(items), self.max_batch):
            chunk = items[start : start + self.max_batch]
            done: list[tuple[int, str | None, float]] = []
            tensors: list[np.ndarray] = []
            for offset, (name, item) in enumerate(chunk):
                t0 = time.perf_counter_ns()
                try:
                    image, tensor = self._prepare(name, item)
                except Exception as exc:
                    # "record" keeps one bad film from stopping the others, whatever its reader raised
                    # (a decoder's own error type included): that film gets an error row instead.
                    if on_error == "raise":
                        raise
                    ms = (time.perf_counter_ns() - t0) / 1e6
                    results[start + offset] = Result.failure(name, exc, ms)
                    continue
                done.append((start + offset, name, (time.perf_counter_ns() - t0) / 1e6))
                tensors.append(tensor)
                self.events.notify(PREPARED, Prepared(first + start + offset, name, image, tensor))
            if tensors:
                self._infer(tensors, done, results, on_error)
            batch: list[Scored] = []
            for index in range(start, start + len(chunk)):
                result = results[index]
                if result is not None:
                    batch.append(Scored(first + index, result))
                    self.events.notify(SCORED, batch[-1])
            if not self.events.intervene(BATCH_SCORED, ScoredBatch(tuple(batch))):
                break  # the batch's handler stops the call: the films after it stay unscored and unannounced
        return [r for r in results if r is not None]

    def _infer(self, tensors: list[np.ndarray], done: list[tuple[int, str | None, float]], results: list[Result | None],
               on_error: Literal["raise", "record"]) -> None:
        """One batch through the runner: a Result (or, for a non-finite output, an error row) for each film of `done`."""
        out = self.runner.infer({IMAGE_INPUT: np.stack(tensors), **self._extra_feed})
        per_image = self.runner.last_inference_ms / len(tensors)
        labels = decide(out[self.threshold_score], self.threshold)
        bad = _non_finite_rows(out)
        for j, (index, name, pre_ms) in enumerate(done):
            if j in bad:
                error = DataError(
                    f"{name or 'array input'}: the {self.runtime}/{self.precision} runtime returned non-finite "
                    f"{bad[j]} for this film, so it is not labelled. Run `salad parity {self.bundle}` "
                    "to check the bundle on this runtime."
                )
                if on_error == "raise":
                    raise error
                results[index] = Result.failure(name, error, pre_ms)
                continue
            results[index] = Result(
                path=name,
                score=float(out["score"][j]),
                knn_angle=float(out[KNN_ANGLE][j]),
                label=int(labels[j]),
                timings=Timings(preprocess_ms=pre_ms, inference_ms=per_image, batch_size=len(tensors)),
            )

    def _prepare(self, name: str | None, item: str | os.PathLike[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the display-ready film, the runner's input): read or checked once, preprocessed once."""
        image = _check_array(item, name) if isinstance(item, np.ndarray) else read_image(item)
        return image, preprocess(image, self.preprocess_config)

    # -- bundle checks ---------------------------------------------------------------------------

    def _check_graph(self) -> None:
        spec = self.runner.spec
        names = [t.name for t in spec.inputs]
        where = f"{self.bundle / spec.file}"
        if IMAGE_INPUT not in names or set(names) - {IMAGE_INPUT, BANK_INPUT}:
            raise BundleError(f"{where}: graph inputs {names}; a scoring graph takes {IMAGE_INPUT!r} (and optionally {BANK_INPUT!r}).")
        missing = [n for n in SCORE_NAMES if n not in [t.name for t in spec.outputs]]
        if missing:
            raise BundleError(f"{where}: graph has no output(s) {missing}; expected {list(SCORE_NAMES)}.")
        image = next(t for t in spec.inputs if t.name == IMAGE_INPUT)
        s = self.preprocess_config.size
        if list(image.shape[1:]) != [1, s, s]:
            raise BundleError(
                f"{where}: input 'image' has shape {image.shape}, but the bundle preprocesses to [batch, 1, {s}, {s}]. "
                "The manifest is inconsistent; re-export the bundle."
            )


def open_to_score(path: str | os.PathLike[str], runtime: str = "onnxruntime", precision: str = "fp32", *,
                  cache_dir: str | os.PathLike[str] | None = None, use_cache: bool = True) -> Bundle:
    """The bundle, verified as a Scorer on `runtime` at `precision` needs it: what it reads, every time, and nothing else.

    The ONNX runtimes read the chosen graph (and its external data or bank); the torch reference reads the checkpoint
    too, so it verifies all. Files unchanged since they last verified are not hashed again (runtime/verified.py;
    `use_cache=False` or $SALAD_NO_CACHE=1 hashes every time).
    """
    graphs = None if runtime == "torch" else [("model", precision)]
    return open_verified(Path(path), graphs, cache_dir=cache_dir, use_cache=use_cache)[0]


def _expand(inputs: ImageInput | Sequence[ImageInput]) -> list[tuple[str | None, str | os.PathLike[str] | np.ndarray]]:
    """Inputs as (name, item) pairs: a path or 2-D array is one image, a 3-D array a stack of images."""
    if isinstance(inputs, str | os.PathLike | np.ndarray):
        inputs = [inputs]
    items: list[tuple[str | None, str | os.PathLike[str] | np.ndarray]] = []
    for item in inputs:
        if isinstance(item, np.ndarray):
            if item.ndim == 3:
                items.extend((None, image) for image in item)
            else:
                items.append((None, item))
        elif isinstance(item, str | os.PathLike):
            items.append((str(item), item))
        else:
            raise DataError(f"cannot score a {type(item).__name__}; expected a file path or a numpy array (H×W grey in [0, 1]).")
    return items


def _check_array(image: np.ndarray, name: str | None) -> np.ndarray:
    what = name or "array input"
    if image.dtype.kind not in "fiub":
        raise DataError(f"{what}: dtype {image.dtype}; expected a numeric grey image (float in [0, 1]).")
    if image.ndim != 2:
        raise DataError(f"{what}: shape {image.shape}; expected one grey H×W image (or a B×H×W stack).")
    if image.size == 0:
        raise DataError(f"{what}: empty image of shape {image.shape}.")
    values = image.astype(np.float32, copy=False)
    lo, hi = float(values.min()), float(values.max())  # NaN propagates into min/max: no separate isfinite pass
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise DataError(f"{what}: contains NaN or infinite values.")
    if lo < -RANGE_SLACK or hi > 1 + RANGE_SLACK:
        raise DataError(
            f"{what}: values span [{lo:g}, {hi:g}]; expected a grey image in [0, 1] "
            "(divide 8-bit images by 255, or read files with salad.imageio.read_image)."
        )
    return check_film(values, what)  # the reader's rule: too small, too thin or blank is refused, never labelled


def _non_finite_rows(out: dict[str, np.ndarray]) -> dict[int, str]:
    """Row → what was non-finite in it (embedding, score, knn_angle): those films must not get a label."""
    bad: dict[int, str] = {}
    for key, values in out.items():
        arr = np.asarray(values)
        if arr.ndim == 0 or arr.dtype.kind != "f":
            continue
        finite = np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
        for j in np.flatnonzero(~finite).tolist():
            bad[j] = f"{bad[j]}, {key}" if j in bad else key
    return bad
