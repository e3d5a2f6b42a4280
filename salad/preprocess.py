"""The one preprocessing path shared by training, export, calibration and every runtime.

A display-ready grey image (salad.imageio) becomes a float32 [1, S, S] tensor in [-1, 1]. The
config travels with the weights (run config → bundle manifest), so a console preprocesses exactly
as the model was trained.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from salad.errors import DataError
from salad.imageio import cv2, read_image

#: Largest model input side: no network here takes more than a few hundred pixels, and a side of 4096 is already a
#: 64 MiB float32 tensor per film (a damaged config asking for more would exhaust memory, not score).
MAX_SIZE = 4096
RESIZE_MODES = ("stretch", "letterbox")
#: display: the reader's [0, 1] as it is; minmax: per-film stretch; the others normalise each film's intensity
#: after resizing, so exposure and window differences between sites and machines matter less:
#: zscore (mean 0, ±3 sd → ±1), equalize (histogram equalisation), clahe (contrast-limited, local).
INTENSITY_MODES = ("display", "minmax", "zscore", "equalize", "clahe")
#: keep: the film as it is; trim: cut uniform bands at the edges (collimation, a black margin from a zoomed-out or
#: shifted acquisition, a letterboxed export) before anything else, so framing does not read as disease.
BORDER_MODES = ("keep", "trim")
#: A row or column whose grey values vary less than this (sd on the [0, 1] film) is a uniform band, not anatomy.
BORDER_SD = 0.02
#: At most this fraction of each side is trimmed: a film that is mostly "border" is left for the reader to judge.
BORDER_MAX = 0.25
#: CLAHE's tile grid and clip limit (OpenCV's defaults are 8×8 and 40; 2.0 is the usual radiography setting).
CLAHE_TILES = 8
CLAHE_CLIP = 2.0


@dataclass(frozen=True)
class PreprocessConfig:
    """How raw films become network input: size S, one channel, resize and intensity modes."""

    size: int = 256
    channels: int = 1
    resize_mode: str = "stretch"  # "stretch" (as the Kermany films were made) or "letterbox" (keep aspect)
    intensity_mode: str = "display"  # see INTENSITY_MODES
    dicom: str = "modality-lut, voi-lut/window, monochrome1-invert"
    #: Central fraction of each side kept before resizing (1.0 = the whole film): drops collimation
    #: borders, burned-in text and markers, which differ between sites and say nothing about the lungs.
    crop: float = 1.0
    #: Border handling before the crop (see BORDER_MODES).
    border: str = "keep"

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or not 32 <= self.size <= MAX_SIZE:
            raise DataError(f"preprocessing size {self.size!r}; expected a whole number of pixels from 32 to {MAX_SIZE}.")
        if self.channels != 1:
            raise DataError(f"preprocessing channels={self.channels}; SALAD models take 1 grey channel.")
        if self.resize_mode not in RESIZE_MODES:
            raise DataError(f"resize mode {self.resize_mode!r}; expected one of {RESIZE_MODES}.")
        if self.intensity_mode not in INTENSITY_MODES:
            raise DataError(f"intensity mode {self.intensity_mode!r}; expected one of {INTENSITY_MODES}.")
        if self.border not in BORDER_MODES:
            raise DataError(f"border mode {self.border!r}; expected one of {BORDER_MODES}.")
        if not isinstance(self.crop, int | float) or isinstance(self.crop, bool) or not 0.5 <= float(self.crop) <= 1.0:
            raise DataError(f"preprocessing crop {self.crop!r}; expected the kept central fraction, a number in [0.5, 1].")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        known = {k: data[k] for k in ("size", "channels", "resize_mode", "intensity_mode", "dicom", "crop", "border") if k in data}
        return cls(**known)


def preprocess(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Grey float image in [0, 1] (H×W) → float32 [1, S, S] in [-1, 1]."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 2:
        raise DataError(f"expected a grey H×W image, received shape {img.shape}.")
    if config.border == "trim":
        img = trim_uniform_border(img)
    if config.crop < 1.0:
        img = central_crop(img, config.crop)
    if config.intensity_mode == "minmax":
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    s = config.size
    if config.resize_mode == "stretch":
        out = _resize(img, s, s)
    else:
        h, w = img.shape
        scale = s / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        out = np.zeros((s, s), dtype=np.float32)
        top, left = (s - nh) // 2, (s - nw) // 2
        out[top : top + nh, left : left + nw] = _resize(img, nh, nw)
    if config.intensity_mode in ("zscore", "equalize", "clahe"):
        out = normalise_intensity(out, config.intensity_mode)
    out = np.clip(out, 0.0, 1.0) * np.float32(2.0) - np.float32(1.0)
    return out[None].astype(np.float32, copy=False)


def trim_uniform_border(img: np.ndarray) -> np.ndarray:
    """Cut the uniform bands at each edge of an H×W film (rows/columns with sd < BORDER_SD), at most BORDER_MAX a side."""
    top, bottom = _content_span(img, 1)
    left, right = _content_span(img, 0)
    return img[top:bottom, left:right]


def _content_span(img: np.ndarray, axis: int) -> tuple[int, int]:
    """Where content (sd ≥ BORDER_SD) starts and ends among the rows (axis 1) or columns (axis 0), cut at most BORDER_MAX.

    Only the outer BORDER_MAX of each edge can set the cut, so those rows are measured alone (half the work) and the
    whole axis only when an edge holds no content row at all; numpy's std reduces each row (column) on its own, so
    each one's sd and the cut are those of the whole film (tests/core/test_decode_speed_identity.py).
    """
    n = img.shape[0] if axis == 1 else img.shape[1]
    limit = int(n * BORDER_MAX)

    def content(start: int, stop: int) -> np.ndarray:
        part = img[start:stop] if axis == 1 else img[:, start:stop]
        return np.asarray(part.std(axis=axis) >= BORDER_SD)

    head, tail = content(0, limit), content(n - limit, n)
    if head.any() and tail.any():
        return int(np.argmax(head)), n - int(np.argmax(tail[::-1]))
    every = content(0, n)
    first = int(np.argmax(every)) if every.any() else 0
    last = n - int(np.argmax(every[::-1])) if every.any() else n
    return min(first, limit), max(last, n - limit)


def central_crop(img: np.ndarray, fraction: float) -> np.ndarray:
    """The central `fraction` of each side of an H×W image."""
    h, w = img.shape
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    top, left = (h - ch) // 2, (w - cw) // 2
    return img[top : top + ch, left : left + cw]


def normalise_intensity(img: np.ndarray, mode: str) -> np.ndarray:
    """Per-film intensity normalisation of a [0, 1] S×S image into [0, 1] (see INTENSITY_MODES)."""
    if mode == "zscore":
        mean, std = float(img.mean()), float(img.std())
        if std < 1e-6:
            return np.full_like(img, 0.5)
        return ((img - mean) / (6.0 * std) + 0.5).astype(np.float32)
    # OpenCV's equalisation and CLAHE work on integer images: 16 bits keep the films' grey levels.
    grey = np.round(np.clip(img, 0.0, 1.0) * 65535.0).astype(np.uint16)
    if mode == "equalize":
        hist = np.bincount(grey.ravel(), minlength=65536).cumsum()
        lut = (hist - hist[0]) / max(1, hist[-1] - hist[0])
        return lut[grey].astype(np.float32)
    clahe = cv2.createCLAHE(clipLimit=CLAHE_CLIP, tileGridSize=(CLAHE_TILES, CLAHE_TILES))
    return (clahe.apply(grey).astype(np.float32) / np.float32(65535.0)).astype(np.float32)


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    if img.shape == (h, w):
        return img
    shrinking = h < img.shape[0] or w < img.shape[1]
    # INTER_AREA averages when shrinking (no aliasing of rib edges); bilinear when enlarging.
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def load_image(path: str | os.PathLike[str], config: PreprocessConfig) -> np.ndarray:
    """Read a file and preprocess it: [1, S, S] float32."""
    return preprocess(read_image(path), config)


def load_batch(paths: Sequence[str | os.PathLike[str]], config: PreprocessConfig) -> np.ndarray:
    """Read and preprocess several files into one [B, 1, S, S] float32 array."""
    return np.stack([load_image(p, config) for p in paths]) if paths else np.zeros((0, 1, config.size, config.size), np.float32)

