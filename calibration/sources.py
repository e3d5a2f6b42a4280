"""Calibration images: real normal films only, checked before any graph sees them (docs/architecture.md §5).

A `CalibrationSource` is built from file paths and nothing else: there is no constructor that takes
arrays, shapes or a seed, so no code path can calibrate on synthetic data. Every film goes through
salad.preprocess.load_image with the bundle's own preprocessing config, exactly as a console would
score it, and films that cannot be X-rays (constant, thumbnail-sized, NaN) are refused by name.

`OrtCalibrationReader` adapts a source to ONNX Runtime's one-method reader
(`get_next() -> feed | None`), in fixed batches, with the `set_range`/`__len__` that
quantize_static's strided calibration uses to keep only one batch of activations in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from salad.data import evenly_spaced, list_hash, read_samples
from salad.errors import CalibrationError, DataError
from salad.imageio import read_image
from salad.preprocess import PreprocessConfig, preprocess
from salad.progress import progress
from salad.renames import renamed_keywords

#: Fewest films int8 calibration accepts by default: activation ranges from fewer are not representative.
MIN_IMAGES = 100
#: Films used when --films is not given: enough for stable ranges, bounded time on 2 CPU cores.
DEFAULT_MAX_IMAGES = 500
#: Films per calibration batch (and per ORT collect step).
BATCH = 16
#: A decoded film smaller than this fraction of the input size S on a side is a thumbnail, not an X-ray.
MIN_SIDE_FRACTION = 0.5
#: Preprocessed films (range [-1, 1]) with a smaller standard deviation carry no anatomy.
MIN_STD = 1e-3


@dataclass
class CalibrationSource:
    """Preprocessed real normal films, in a fixed order, with where they came from."""

    paths: list[Path]
    images: np.ndarray  # [n, 1, S, S] float32
    source: str
    found: int  # normal films found in the source (before --films was applied)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.paths)

    @property
    def list_sha256(self) -> str:
        """salad.data.list_hash of the films used: identifies the set without storing absolute paths."""
        return list_hash(self.paths)

    def batches(self, size: int = BATCH) -> Iterator[np.ndarray]:
        for start in range(0, self.count, size):
            yield self.images[start : start + size]

    @classmethod
    @renamed_keywords(images="films", min_images="min_films")
    def from_data(
        cls,
        data: str | os.PathLike[str] | None,
        config: PreprocessConfig,
        *,
        films: int | None = None,
        min_films: int = MIN_IMAGES,
    ) -> CalibrationSource:
        """Read `--data` (a folder of normals, class folders or a CSV: only label-0 films are used).

        films: use this many films (evenly spread over the sorted list); default all found, at most
        DEFAULT_MAX_IMAGES. Raises CalibrationError when data is missing, when fewer than
        `min_films` normal films are found or requested, or when a film is not X-ray-like. The keywords are
        `salad calibrate`'s options; the old images= and min_images= still work with a DeprecationWarning.
        """
        if data is None:
            raise CalibrationError(
                "int8 calibration needs real normal films: pass --data NORMALS (a folder of normal X-rays, class folders "
                f"or a CSV), at least {min_films} of them. There is no fallback to random or synthetic data: activation "
                "ranges from noise would not be the ranges of X-rays."
            )
        if min_films < 1:
            raise CalibrationError(f"--min-films {min_films}: expected a positive number of films.")
        try:
            samples = read_samples(Path(data))
        except DataError as exc:
            raise CalibrationError(f"cannot read calibration data: {exc}") from exc
        normals = sorted((s for s in samples if s.label == 0), key=lambda s: str(s.path))
        abnormal = len(samples) - len(normals)
        note = f" ({abnormal} abnormal film(s) in it are not used)" if abnormal else ""
        if len(normals) < min_films:
            raise CalibrationError(
                f"{data}: found {len(normals)} normal film(s){note}; int8 calibration needs at least {min_films}. "
                "Add more normal X-rays (the training normals are fine), or lower --min-films if you accept less "
                "representative activation ranges."
            )
        if films is not None and films < min_films:
            raise CalibrationError(f"--films {films} is below the minimum of {min_films} calibration films; use --films ≥ {min_films}.")
        wanted = min(len(normals), films if films is not None else DEFAULT_MAX_IMAGES)
        chosen = evenly_spaced(normals, wanted)  # patients and sources mixed
        arrays, problems = [], []
        for s in progress(chosen, desc="reading calibration films", unit="film"):
            try:
                arrays.append(_checked(s.path, config))
            except CalibrationError as exc:
                problems.append(str(exc))
        if problems:
            shown = "\n  ".join(problems[:10]) + (f"\n  … and {len(problems) - 10} more" if len(problems) > 10 else "")
            raise CalibrationError(
                f"{data}: {len(problems)} of {len(chosen)} calibration film(s) are not usable X-rays:\n  {shown}\n"
                "Remove them from the calibration folder: calibration must see what the console will score."
            )
        return cls([s.path for s in chosen], np.stack(arrays).astype(np.float32, copy=False), str(data), len(normals))


def _checked(path: Path, config: PreprocessConfig) -> np.ndarray:
    """Read and preprocess one film, refusing what cannot be an X-ray (with the reason)."""
    try:
        raw = read_image(path)
    except DataError as exc:
        raise CalibrationError(f"{path.name}: cannot be read ({exc})") from exc
    if raw.ndim != 2:
        raise CalibrationError(f"{path.name}: decoded to shape {raw.shape}; expected one grey H×W film")
    side = min(raw.shape)
    if side < MIN_SIDE_FRACTION * config.size:
        raise CalibrationError(
            f"{path.name}: decoded to {raw.shape[1]}×{raw.shape[0]} pixels, smaller than half the model input "
            f"{config.size}×{config.size}: a thumbnail or icon, not a radiograph"
        )
    if not np.isfinite(raw).all():
        raise CalibrationError(f"{path.name}: contains NaN or infinite pixel values")
    if float(np.ptp(raw)) == 0.0:
        raise CalibrationError(f"{path.name}: every pixel has the value {float(raw.flat[0]):g} (a constant image, not an X-ray)")
    image = preprocess(raw, config)
    if image.shape != (1, config.size, config.size):
        raise CalibrationError(f"{path.name}: preprocessed to shape {image.shape}; the bundle expects (1, {config.size}, {config.size})")
    if float(image.std()) < MIN_STD:
        raise CalibrationError(f"{path.name}: nearly constant after preprocessing (std {float(image.std()):.2g}); not an X-ray")
    return image


class OrtCalibrationReader:
    """ONNX Runtime's CalibrationDataReader over a CalibrationSource, one batch per `get_next`.

    Implements the reader protocol by duck typing (get_next/rewind/set_range/__len__) so that this
    module imports without onnxruntime; quantize_static only calls those methods.
    """

    def __init__(self, source: CalibrationSource, input_name: str = "image", batch: int = BATCH) -> None:
        self.batches = [np.ascontiguousarray(b) for b in source.batches(batch)]
        self.input_name = input_name
        self.start, self.end = 0, len(self.batches)
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= self.end:
            return None
        batch = self.batches[self.position]
        self.position += 1
        return {self.input_name: batch}

    def rewind(self) -> None:
        self.position = self.start

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, min(end_index, len(self.batches))
        self.position = self.start

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.rewind()
        while (feed := self.get_next()) is not None:
            yield feed
