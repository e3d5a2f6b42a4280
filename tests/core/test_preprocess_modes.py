"""Per-film intensity modes, the central crop and the acquisition shifts, on real films."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from salad.acquisition import COMPOUND_SHIFTS, SHIFTS, shift_by_name, shifts
from salad.errors import DataError
from salad.imageio import read_image
from salad.preprocess import INTENSITY_MODES, PreprocessConfig, preprocess
from tests.conftest import SAMPLE_EVAL

FILM = sorted((SAMPLE_EVAL / "normal").glob("*.jpeg"))[0]


@pytest.mark.parametrize("mode", INTENSITY_MODES)
def test_every_intensity_mode_gives_the_network_range(mode: str) -> None:
    x = preprocess(read_image(FILM), PreprocessConfig(size=64, intensity_mode=mode, crop=0.8))
    assert x.shape == (1, 64, 64) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0 and np.isfinite(x).all()


@pytest.mark.parametrize("mode", ["zscore", "equalize", "clahe"])
def test_per_film_modes_undo_an_exposure_change(mode: str) -> None:
    """A global gamma change moves `display` input a lot and the normalised modes much less."""
    img = read_image(FILM)
    brighter = np.power(img, 0.75).astype(np.float32)

    def moved(m: str) -> float:
        cfg = PreprocessConfig(size=64, intensity_mode=m)
        return float(np.abs(preprocess(img, cfg) - preprocess(brighter, cfg)).mean())

    assert moved(mode) < moved("display") / 2


def test_the_crop_keeps_the_centre_and_old_configs_read_as_whole_films() -> None:
    img = np.zeros((100, 100), np.float32)
    img[:10] = 1.0  # a bright collimation edge at the top
    cropped = preprocess(img, PreprocessConfig(size=32, crop=0.8))
    assert cropped.max() == -1.0  # the edge is outside the central 80 %
    assert PreprocessConfig.from_dict({"size": 64}).crop == 1.0
    with pytest.raises(DataError, match=r"crop 0.2; expected the kept central fraction"):
        PreprocessConfig(size=64, crop=0.2)


def test_shifts_keep_the_film_range_and_change_it(tmp_path: Path) -> None:
    img = read_image(FILM)
    assert {s.strength for s in SHIFTS} == {"mild", "moderate", "strong"}
    for spec in shifts("moderate"):
        out = spec.apply(img, 3)
        assert out.shape == img.shape and out.dtype == np.float32, spec.name
        assert out.min() >= 0.0 and out.max() <= 1.0, spec.name
        assert np.abs(out - img).mean() > 1e-4, f"{spec.name} changed nothing"
    noisy = shift_by_name("noise")
    assert np.array_equal(noisy.apply(img, 1), noisy.apply(img, 1))  # seeded
    with pytest.raises(KeyError, match="no shift 'sepia'"):
        shift_by_name("sepia")


def test_compound_shifts_are_their_moderate_parts_applied_in_order() -> None:
    img = read_image(FILM)
    exposure, detail, framing = {"gamma", "gamma-dark", "window"}, {"blur", "sharpen", "noise", "jpeg"}, {
        "rotate", "zoom-in", "zoom-out", "shift", "collimation"}
    assert len({c.name for c in COMPOUND_SHIFTS}) == len(COMPOUND_SHIFTS) == 4
    for spec in COMPOUND_SHIFTS:
        names = spec.name.split("+")
        assert spec.strength == "compound" and spec not in SHIFTS
        assert set(names) & exposure and set(names) & detail and set(names) & framing, spec.name  # another acquisition
        by_hand = img
        for name in names:
            by_hand = shift_by_name(name).apply(by_hand, 7)
        out = spec.apply(img, 7)
        assert np.array_equal(out, by_hand) and out.dtype == np.float32 and 0.0 <= out.min() <= out.max() <= 1.0


@pytest.mark.parametrize("shift", ["collimation", "zoom-out", "shift"])
def test_trimming_removes_the_uniform_bands_framing_shifts_add(shift: str) -> None:
    from salad.preprocess import BORDER_SD, trim_uniform_border

    img = read_image(FILM)
    framed = shift_by_name(shift).apply(img, 0)
    trimmed = trim_uniform_border(framed)
    assert trimmed.shape[0] < img.shape[0] and trimmed.shape[1] < img.shape[1]
    for edge in (trimmed[0], trimmed[-1], trimmed[:, 0], trimmed[:, -1]):
        assert edge.std() >= BORDER_SD  # anatomy at every edge, no band left
    assert trim_uniform_border(img).shape == img.shape  # a film without bands is left whole


def test_a_zoomed_out_film_trims_back_to_the_film() -> None:
    img = read_image(FILM)
    framed = shift_by_name("zoom-out").apply(img, 0)

    def moved(border: str) -> float:
        cfg = PreprocessConfig(size=64, border=border)
        return float(np.abs(preprocess(img, cfg) - preprocess(framed, cfg)).mean())

    assert moved("trim") < moved("keep")


def test_trimming_stops_at_a_quarter_of_each_side() -> None:
    from salad.preprocess import BORDER_MAX, trim_uniform_border

    img = np.zeros((100, 80), np.float32)
    img[45:55, 38:42] = np.linspace(0, 1, 40, dtype=np.float32).reshape(10, 4)  # anatomy only in the middle
    assert trim_uniform_border(img).shape == (100 - 2 * int(100 * BORDER_MAX), 80 - 2 * int(80 * BORDER_MAX))
    with pytest.raises(DataError, match="border mode 'crop'"):
        PreprocessConfig(size=64, border="crop")
