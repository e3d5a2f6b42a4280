"""Synthetic sites: a real site's films after one acquisition change, at a strength that makes a different site.

Reuses salad.acquisition's shifts at their strong settings and adds what a site swap can bring that the
robustness suite leaves out: a letterboxed export (black bands, the film squeezed when resized to a square)
and inverted polarity. Used by benchmarks/site_similarity.py to enlarge the estimator's pool and the targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from salad.acquisition import Shift, blur, collimation, gamma, invert, jpeg, noise, window


def letterbox(fraction: float) -> Shift:
    """Black bands of `fraction` of the width on the left and right (a 4:3 export of a square film)."""

    def apply(img: np.ndarray, seed: int) -> np.ndarray:
        h, w = img.shape
        band = round(w * fraction)
        out = np.zeros((h, w + 2 * band), np.float32)
        out[:, band : band + w] = img
        return out

    return apply


@dataclass(frozen=True)
class SiteShift:
    """A named acquisition change that turns one site's films into a synthetic site's."""

    name: str
    apply: Shift
    description: str


SITE_SHIFTS: dict[str, SiteShift] = {s.name: s for s in (
    SiteShift("gamma-bright", gamma(0.6), "x^0.6 (brighter mid-tones)"),
    SiteShift("gamma-dark", gamma(1.8), "x^1.8 (darker mid-tones)"),
    SiteShift("window", window(0.65, 0.06), "contrast ×0.65, level +0.06"),
    SiteShift("blur", blur(8.0), "Gaussian σ = 8 px at 1024²"),
    SiteShift("noise", noise(0.05), "Gaussian noise sd 0.05"),
    SiteShift("jpeg", jpeg(15), "JPEG quality 15"),
    SiteShift("collimation", collimation(0.12), "black border, 12 % of each side"),
    SiteShift("letterbox", letterbox(0.15), "black bands of 15 % of the width left and right"),
    SiteShift("invert", invert(), "inverted polarity (MONOCHROME1 read without inversion)"),
)}
