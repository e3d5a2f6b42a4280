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

RESIZE_MODES = ("stretch", "letterbox")
INTENSITY_MODES = ("display", "minmax")


@dataclass(frozen=True)
class PreprocessConfig:
    """How raw films become network input: size S, one channel, resize and intensity modes."""

    size: int = 256
    channels: int = 1
    resize_mode: str = "stretch"  # "stretch" (as the Kermany films were made) or "letterbox" (keep aspect)
    intensity_mode: str = "display"  # "display": reader's [0,1] → [-1,1]; "minmax": per-image stretch first
    dicom: str = "modality-lut, voi-lut/window, monochrome1-invert"

    def __post_init__(self) -> None:
        if self.size < 32:
            raise DataError(f"preprocessing size {self.size} is too small; expected ≥ 32 pixels.")
        if self.channels != 1:
            raise DataError(f"preprocessing channels={self.channels}; SALAD models take 1 grey channel.")
        if self.resize_mode not in RESIZE_MODES:
            raise DataError(f"resize mode {self.resize_mode!r}; expected one of {RESIZE_MODES}.")
        if self.intensity_mode not in INTENSITY_MODES:
            raise DataError(f"intensity mode {self.intensity_mode!r}; expected one of {INTENSITY_MODES}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        known = {k: data[k] for k in ("size", "channels", "resize_mode", "intensity_mode", "dicom") if k in data}
        return cls(**known)


def preprocess(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Grey float image in [0, 1] (H×W) → float32 [1, S, S] in [-1, 1]."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 2:
        raise DataError(f"expected a grey H×W image, received shape {img.shape}.")
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
    out = np.clip(out, 0.0, 1.0) * np.float32(2.0) - np.float32(1.0)
    return out[None].astype(np.float32, copy=False)


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

