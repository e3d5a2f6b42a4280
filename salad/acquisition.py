"""Acquisition shifts: what another machine, site or export does to the same film, at realistic strengths.

Each shift maps a display-ready grey film (H×W float32 in [0, 1], as salad.imageio returns it) to the
film another acquisition would have produced. The robustness suite applies them to held-out normal and
abnormal films alike (benchmarks/quality_protocol.py), and site similarity builds synthetic sites from
them. Deterministic: a shift that needs randomness (noise) takes a seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from salad.imageio import cv2

Shift = Callable[[np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class ShiftSpec:
    """A named shift at one strength: `apply(image, seed)`; `strength` is `mild`, `moderate` or `strong`."""

    name: str
    strength: str
    apply: Shift
    description: str


def _clip(img: np.ndarray) -> np.ndarray:
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def gamma(g: float) -> Shift:
    """Exposure / detector response curve: x ** g."""
    return lambda img, seed: _clip(np.power(np.clip(img, 0.0, 1.0), g))


def window(contrast: float, level: float = 0.0) -> Shift:
    """A different window: contrast about the film's mean, then a level offset."""

    def apply(img: np.ndarray, seed: int) -> np.ndarray:
        mean = float(img.mean())
        return _clip((img - mean) * contrast + mean + level)

    return apply


def blur(sigma: float) -> Shift:
    """Softer detector or reconstruction kernel; sigma in pixels of a 1024-pixel film, scaled to this one."""

    def apply(img: np.ndarray, seed: int) -> np.ndarray:
        s = sigma * max(img.shape) / 1024.0
        return _clip(cv2.GaussianBlur(img, (0, 0), sigmaX=max(s, 0.1)))

    return apply


def sharpen(amount: float, sigma: float = 2.0) -> Shift:
    """Edge enhancement (unsharp mask), as many consoles apply before export."""

    def apply(img: np.ndarray, seed: int) -> np.ndarray:
        s = sigma * max(img.shape) / 1024.0
        soft = cv2.GaussianBlur(img, (0, 0), sigmaX=max(s, 0.1))
        return _clip(img + amount * (img - soft))

    return apply


def noise(std: float) -> Shift:
    """Quantum noise of a lower dose: additive Gaussian noise (std in [0, 1] units)."""

    def apply(img: np.ndarray, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return _clip(img + rng.normal(0.0, std, img.shape).astype(np.float32))

    return apply


def jpeg(quality: int) -> Shift:
    """Lossy export: an 8-bit JPEG round trip at `quality`."""

    def apply(img: np.ndarray, seed: int) -> np.ndarray:
        ok, data = cv2.imencode(".jpg", np.round(_clip(img) * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
        decoded = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if ok else None
        if decoded is None:  # OpenCV encodes and decodes its own JPEG: a failure is a broken OpenCV install
            raise RuntimeError(f"OpenCV could not round-trip a {img.shape} image through JPEG quality {quality}")
        return decoded.astype(np.float32) / np.float32(255.0)

    return apply


def affine(rotate_deg: float = 0.0, scale: float = 1.0, shift: float = 0.0) -> Shift:
    """Positioning: rotation (degrees), scale about the centre (< 1 = zoom out) and a shift (fraction of the side)."""

    def apply(img: np.ndarray, seed: int) -> np.ndarray:
        h, w = img.shape
        m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), rotate_deg, scale)
        m[:, 2] += (shift * w, shift * h)
        return _clip(cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0))

    return apply


def collimation(fraction: float) -> Shift:
    """Tighter collimation: a black border of `fraction` of each side."""

    def apply(img: np.ndarray, seed: int) -> np.ndarray:
        out = img.copy()
        h, w = img.shape
        bh, bw = round(h * fraction), round(w * fraction)
        out[:bh], out[h - bh :], out[:, :bw], out[:, w - bw :] = 0.0, 0.0, 0.0, 0.0
        return out

    return apply


def text(lines: int = 2) -> Shift:
    """Burned-in text and a side marker, as portable films and some exports carry."""

    def apply(img: np.ndarray, seed: int) -> np.ndarray:
        h, w = img.shape
        mask = np.zeros((h, w), np.uint8)  # OpenCV draws text on 8-bit images only
        scale = max(h, w) / 700.0
        thick = max(1, round(scale * 2))
        for i in range(lines):
            cv2.putText(mask, f"PORTABLE {seed % 97:02d}:{i}", (round(0.04 * w), round((0.08 + 0.07 * i) * h)),
                        cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thick, cv2.LINE_AA)
        cv2.putText(mask, "R", (round(0.88 * w), round(0.12 * h)), cv2.FONT_HERSHEY_SIMPLEX, scale * 1.5, 255, thick, cv2.LINE_AA)
        return np.maximum(img, mask.astype(np.float32) / np.float32(255.0))

    return apply


def invert() -> Shift:
    """Inverted polarity (a MONOCHROME1 film read without its inversion)."""
    return lambda img, seed: _clip(1.0 - img)


#: The suite at three strengths. "moderate" is what one site differs from another by in practice;
#: acceptance is judged there. (Polarity inversion is a data error, not a shift: the drift guard's business.)
SHIFTS: tuple[ShiftSpec, ...] = (
    ShiftSpec("gamma", "mild", gamma(0.9), "x^0.9"),
    ShiftSpec("gamma", "moderate", gamma(0.75), "x^0.75 (brighter mid-tones)"),
    ShiftSpec("gamma", "strong", gamma(0.6), "x^0.6"),
    ShiftSpec("gamma-dark", "moderate", gamma(1.33), "x^1.33 (darker mid-tones)"),
    ShiftSpec("window", "mild", window(0.9), "contrast ×0.9"),
    ShiftSpec("window", "moderate", window(0.8, 0.03), "contrast ×0.8, level +0.03"),
    ShiftSpec("window", "strong", window(0.65, 0.06), "contrast ×0.65, level +0.06"),
    ShiftSpec("blur", "mild", blur(2.0), "Gaussian σ = 2 px at 1024²"),
    ShiftSpec("blur", "moderate", blur(4.0), "Gaussian σ = 4 px at 1024²"),
    ShiftSpec("blur", "strong", blur(8.0), "Gaussian σ = 8 px at 1024²"),
    ShiftSpec("sharpen", "moderate", sharpen(0.8), "unsharp mask, amount 0.8, σ = 2 px at 1024²"),
    ShiftSpec("noise", "mild", noise(0.01), "Gaussian noise sd 0.01"),
    ShiftSpec("noise", "moderate", noise(0.025), "Gaussian noise sd 0.025"),
    ShiftSpec("noise", "strong", noise(0.05), "Gaussian noise sd 0.05"),
    ShiftSpec("jpeg", "moderate", jpeg(40), "JPEG quality 40"),
    ShiftSpec("jpeg", "strong", jpeg(15), "JPEG quality 15"),
    ShiftSpec("rotate", "moderate", affine(rotate_deg=5.0), "rotation 5°"),
    ShiftSpec("zoom-out", "moderate", affine(scale=0.9), "scale 0.9 (black margin)"),
    ShiftSpec("zoom-in", "moderate", affine(scale=1.1), "scale 1.1"),
    ShiftSpec("shift", "moderate", affine(shift=0.04), "shifted by 4 % of the side"),
    ShiftSpec("collimation", "moderate", collimation(0.06), "black border, 6 % of each side"),
    ShiftSpec("text", "moderate", text(), "burned-in text and a side marker"),
)


def compose(*parts: ShiftSpec) -> Shift:
    """Several shifts applied in order to the same film (one seed for all)."""

    def apply(img: np.ndarray, seed: int) -> np.ndarray:
        for part in parts:
            img = part.apply(img, seed)
        return img

    return apply


def _compound(*names: str) -> ShiftSpec:
    parts = [shift_by_name(n) for n in names]
    return ShiftSpec("+".join(names), "compound", compose(*parts), " then ".join(p.description for p in parts))


def shifts(strength: str | None = None) -> list[ShiftSpec]:
    """The suite's shifts, all or at one strength."""
    return [s for s in SHIFTS if strength is None or s.strength == strength]


def shift_by_name(name: str, strength: str = "moderate") -> ShiftSpec:
    """One shift of the suite; a KeyError lists what exists."""
    for s in SHIFTS:
        if s.name == name and s.strength == strength:
            return s
    raise KeyError(f"no shift {name!r} at strength {strength!r}; have {sorted({(s.name, s.strength) for s in SHIFTS})}")


#: Another acquisition: exposure, detail and framing changed together, each at its moderate strength. One moderate
#: shift at a time leaves the pixel-kNN floors near their clean figures; these move them as far as an independent
#: test set of the same hospital did (docs/quality.md, "Compound shifts"), so they stand in for a new acquisition.
COMPOUND_SHIFTS: tuple[ShiftSpec, ...] = (
    _compound("gamma-dark", "blur", "zoom-in"),
    _compound("gamma", "sharpen", "collimation", "text"),
    _compound("window", "noise", "jpeg", "shift", "rotate"),
    _compound("gamma-dark", "blur", "zoom-in", "collimation", "rotate"),
)
