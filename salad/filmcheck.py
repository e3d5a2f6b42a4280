"""What a decoded image must be to be scored as a radiograph: big enough, not a strip, not blank.

salad.imageio.read_image applies `check_film` to every film it returns, so score, parity, calibration,
evaluation, drift, bundle choice, similarity and the DICOM node all refuse the same images with the same
reason (they get an error row, never a label). The thresholds are reasoned below, from real films.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.ma  # noqa: F401 - np.percentile imports it on first use (numpy 2): here, not in a console's first film

from salad.errors import DataError

#: A film's shorter side must have at least this many pixels. The smallest radiograph exports in use are 224 px
#: a side (the training sets here, resized by third parties); below 64 px a rib is about one pixel wide and the
#: film must be enlarged more than 3.5× to reach a 224-256 px model input: a thumbnail, icon or strip, not a film.
MIN_SIDE = 64
#: A film's longer side may be at most this many times its shorter one. Chest films are about 1.2:1 (35 × 43 cm)
#: and the most elongated plates (stitched full-spine or full-leg films, 35 × 130 cm) about 3.7:1; a longer strip
#: is a line of pixels, a ruler or a banner, and stretching it to a square model input would be meaningless.
MAX_ASPECT = 4.0
#: The 1st-99th percentile spread of a film on the reader's [0, 1] scale must be at least this. Over the 6,203 real
#: chest films of the Kermany and NIH sets and the pydicom-data CR films the smallest spread is 0.33 (median 0.80);
#: 0.05 (13 of 256 grey levels) leaves a 6× margin and refuses blank, constant and single-speck images, whose
#: pixels then carry no anatomy for a detector to judge (they scored "abnormal" before this check).
MIN_SPREAD = 0.05
#: Percentiles are taken on at most this many pixels (a strided view, every k-th row and column): ~0.1 ms on a
#: console. The check refuses spreads 6× below any real film's, so a 16k-pixel sample estimates it with room to
#: spare; on all of a 224² film np.percentile cost ~0.4 ms, as much as the CPU preset's whole inference.
_SPREAD_SAMPLE = 1 << 14


def check_film(image: np.ndarray, where: str) -> np.ndarray:
    """`image` (H×W in [0, 1]) if it can be a radiograph; a DataError naming `where` if it is too small, too thin or blank.

    The one rule every reader passes (salad.imageio.read_image); MIN_SIDE, MAX_ASPECT and MIN_SPREAD are reasoned above.
    """
    h, w = image.shape[:2]
    short, long = min(h, w), max(h, w)
    if short < MIN_SIDE:
        raise DataError(
            f"{where}: {w}×{h} pixels; a radiograph has at least {MIN_SIDE} pixels on its shorter side, so this is a "
            "thumbnail, icon or strip, not a film. Score the full-resolution film."
        )
    if long > MAX_ASPECT * short:
        raise DataError(
            f"{where}: {w}×{h} pixels, {long / short:.1f}:1; a radiograph is at most {MAX_ASPECT:g}:1 (a chest film about "
            "1.2:1), so this strip is not a film. Score the whole film, not a cut-out."
        )
    step = max(1, math.ceil(math.sqrt(image.size / _SPREAD_SAMPLE)))
    sample = image[::step, ::step]
    if float(sample.min()) == float(sample.max()) and float(image.min()) == float(image.max()):
        raise DataError(
            f"{where}: every pixel has the value {float(image.flat[0]):g} (a constant image, not an X-ray); nothing in it "
            "can be scored. Check the export (a blank or all-black film) and re-send the film."
        )
    if _spread_at_least(sample, MIN_SPREAD):
        return image
    p1, p99 = (float(v) for v in np.percentile(sample, (1, 99)))
    if p99 - p1 < MIN_SPREAD:
        raise DataError(
            f"{where}: nearly constant: 98 % of its pixels lie between {p1:.3f} and {p99:.3f} on the 0-1 grey scale "
            f"(spread {p99 - p1:.3f}, a radiograph's is at least {MIN_SPREAD:g}); a blank film with a few specks or "
            "text carries no anatomy to score. Check the export and re-send the film."
        )
    return image


def _spread_at_least(sample: np.ndarray, spread: float) -> bool:
    """True when the sample's 1st-99th percentile spread is surely ≥ `spread`, by two counts instead of a sort.

    np.percentile costs ~0.3 ms even on 16k pixels (more than the CPU preset's inference), while nearly every film
    passes by far. Take a window [a, a + spread] in the middle of the sample's range: if more than the 1st
    percentile's rank of pixels lie at or below a, and as many at or above a + spread, both order statistics the
    linear-interpolated percentiles use lie beyond the window, so p99 − p1 ≥ spread: exact, not an estimate.
    False only means "compute the percentiles".
    """
    lo, hi = float(sample.min()), float(sample.max())
    if hi - lo < spread:
        return False
    a = lo + (hi - lo - spread) / 2
    need = math.floor((sample.size - 1) * 0.01) + 2  # ranks lo and lo + 1 of the interpolated 1st percentile
    low, high = np.float64(a), np.float64(a + spread)  # float64 bounds: the comparison is not rounded to float32
    return bool(np.count_nonzero(sample <= low) >= need and np.count_nonzero(sample >= high) >= need)
