"""Synthetic-site shifts on a real film: letterbox bands and polarity, the two the acquisition suite lacks."""

from __future__ import annotations

import numpy as np

from salad.imageio import read_image
from salad.similarity.sites import SITE_SHIFTS
from tests.conftest import SAMPLE_TRAIN
from tests.similarity.conftest import films


def test_letterbox_adds_black_bands_and_keeps_the_film() -> None:
    img = read_image(films(SAMPLE_TRAIN, 1)[0])
    out = SITE_SHIFTS["letterbox"].apply(img, 0)
    band = round(img.shape[1] * 0.15)
    assert out.shape == (img.shape[0], img.shape[1] + 2 * band)
    assert not out[:, :band].any() and not out[:, -band:].any()
    np.testing.assert_array_equal(out[:, band:-band], img)


def test_every_site_shift_gives_a_valid_film_and_inversion_is_exact() -> None:
    img = read_image(films(SAMPLE_TRAIN, 1)[0])
    for name, shift in SITE_SHIFTS.items():
        out = shift.apply(img, 3)
        assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0, name
        assert not np.array_equal(out, img), f"{name} left the film unchanged"
    np.testing.assert_allclose(SITE_SHIFTS["invert"].apply(img, 0), 1.0 - img, atol=1e-7)
