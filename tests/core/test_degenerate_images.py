"""Images that cannot be radiographs (1×1, strips, thumbnails, constant or blank) are refused by the one reader, naming why.

Files are written with OpenCV and pydicom (from a real CR of pydicom-data) in tmp_path; the real films of the
shared sets and of pydicom-data must still read.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from salad.errors import DataError
from salad.filmcheck import MAX_ASPECT, MIN_SIDE, MIN_SPREAD, check_film
from salad.imageio import read_image, read_images

from ..conftest import KERMANY, REPO, SAMPLE_EVAL, SAMPLE_TRAIN

NIH = REPO.parent / "shared" / "data" / "nih-cxr"
FILM = sorted(SAMPLE_TRAIN.glob("*.jpeg"))[0]
CR_FILMS = ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG3_UNCR.dcm", "RG3_J2KR.dcm")


def pydicom_data(name: str) -> Path:
    pytest.importorskip("data_store", reason="pydicom-data is not installed (pip install pydicom-data)")
    from pydicom.data import get_testdata_file

    return Path(str(get_testdata_file(name)))


def png(path: Path, pixels: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), pixels), path
    return path


def dicom_with_pixels(path: Path, pixels: np.ndarray) -> Path:
    """The real RG1 CR (its tags, modality and MONOCHROME1) with other pixel data: a faulty modality's export."""
    ds = pydicom.dcmread(pydicom_data("RG1_UNCR.dcm"))
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def film_pixels() -> np.ndarray:
    img = cv2.imread(str(FILM), cv2.IMREAD_GRAYSCALE)
    assert img is not None
    return img


def test_real_films_still_read() -> None:
    """Every CR film of pydicom-data and a spread of the shared Kermany and NIH films (every 25th) pass the check."""
    films = [pydicom_data(name) for name in CR_FILMS]
    for root in (KERMANY, NIH):
        films += sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpeg", ".png"))[::25]
    films += sorted(SAMPLE_EVAL.rglob("*.jpeg"))
    assert len(films) > 250
    images, kept, skipped = read_images(films)
    assert skipped == [] and len(kept) == len(films)
    # the margins the thresholds were chosen with hold on these films
    spreads = [float(np.subtract(*np.percentile(img, (99, 1)))) for img in images]
    assert min(spreads) > 4 * MIN_SPREAD
    assert min(min(img.shape) for img in images) >= 3 * MIN_SIDE
    assert max(max(img.shape) / min(img.shape) for img in images) < MAX_ASPECT


@pytest.mark.parametrize(
    ("name", "shape", "why"),
    [
        ("dot.png", (1, 1), r"1×1 pixels; a radiograph has at least 64 pixels on its shorter side"),
        ("line.png", (1, 5000), r"5000×1 pixels; a radiograph has at least 64 pixels on its shorter side"),
        ("column.png", (5000, 1), r"1×5000 pixels; a radiograph has at least 64 pixels"),
        ("icon.png", (40, 48), r"48×40 pixels; a radiograph has at least 64 pixels .* thumbnail, icon or strip"),
        ("strip.png", (64, 300), r"300×64 pixels, 4\.7:1; a radiograph is at most 4:1"),
        ("tall.png", (1200, 200), r"200×1200 pixels, 6\.0:1; a radiograph is at most 4:1"),
    ],
)
def test_too_small_and_too_thin_images_are_refused(tmp_path: Path, name: str, shape: tuple[int, int], why: str) -> None:
    """Real film content resized to the shape (so only the shape is wrong), written as a PNG."""
    pixels = cv2.resize(film_pixels(), (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    with pytest.raises(DataError, match=rf"{name}: {why}"):
        read_image(png(tmp_path / name, pixels))


def test_the_largest_accepted_aspect_and_smallest_side_read(tmp_path: Path) -> None:
    pixels = cv2.resize(film_pixels(), (4 * MIN_SIDE, MIN_SIDE), interpolation=cv2.INTER_AREA)
    assert read_image(png(tmp_path / "edge.png", pixels)).shape == (MIN_SIDE, 4 * MIN_SIDE)


@pytest.mark.parametrize("value", [0, 128, 255])
def test_constant_8_bit_images_are_refused(tmp_path: Path, value: int) -> None:
    path = png(tmp_path / f"blank{value}.png", np.full((512, 512), value, np.uint8))
    with pytest.raises(DataError, match=rf"blank{value}\.png: every pixel has the value {value / 255:g} \(a constant image"):
        read_image(path)


def test_constant_16_bit_png_and_jpeg_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"blank16\.png: every pixel has the value 0 \(a constant image"):
        read_image(png(tmp_path / "blank16.png", np.full((300, 300), 4000, np.uint16)))
    jpeg = tmp_path / "grey.jpeg"
    assert cv2.imwrite(str(jpeg), np.full((300, 300), 90, np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
    with pytest.raises(DataError, match=r"grey\.jpeg: every pixel has the value"):
        read_image(jpeg)


def test_a_blank_film_with_specks_or_a_label_is_refused_as_nearly_constant(tmp_path: Path) -> None:
    specks = np.full((512, 512), 128, np.uint8)
    specks[0, 0], specks[100, 200], specks[511, 511] = 0, 255, 255
    with pytest.raises(DataError, match=r"specks\.png: nearly constant: 98 % of its pixels lie between 0\.502 and 0\.502 .*spread 0\.000"):
        read_image(png(tmp_path / "specks.png", specks))
    label = np.zeros((600, 500), np.uint8)
    cv2.putText(label, "NO IMAGE", (20, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.0, 255, 2)  # a burned-in label on a black film
    with pytest.raises(DataError, match=r"label\.png: nearly constant"):
        read_image(png(tmp_path / "label.png", label))


def test_degenerate_dicoms_are_refused(tmp_path: Path) -> None:
    """The real CR's header with constant, one-pixel and strip pixel data, as a faulty modality would send them."""
    with pytest.raises(DataError, match=r"flat\.dcm: every pixel has the value"):
        read_image(dicom_with_pixels(tmp_path / "flat.dcm", np.full((1955, 1841), 812, np.uint16)))
    with pytest.raises(DataError, match=r"dot\.dcm: 1×1 pixels"):
        read_image(dicom_with_pixels(tmp_path / "dot.dcm", np.full((1, 1), 812, np.uint16)))
    ramp = np.tile(np.arange(4000, dtype=np.uint16) % 4096, (2, 1))
    with pytest.raises(DataError, match=r"strip\.dcm: 4000×2 pixels"):
        read_image(dicom_with_pixels(tmp_path / "strip.dcm", ramp))
    one_hot = np.full((512, 512), 812, np.uint16)
    one_hot[7, 7] = 4095  # a dead pixel: after the min/max stretch the rest is one grey value
    with pytest.raises(DataError, match=r"hot\.dcm: nearly constant"):
        read_image(dicom_with_pixels(tmp_path / "hot.dcm", one_hot))


def test_read_images_reports_each_refusal_once_with_its_file(tmp_path: Path) -> None:
    good = Path(shutil.copy(FILM, tmp_path / "good.jpeg"))
    dot = png(tmp_path / "dot.png", np.full((1, 1), 9, np.uint8))
    images, kept, skipped = read_images([dot, good])
    assert kept == [1] and len(images) == 1
    assert skipped == [f"{dot}: 1×1 pixels; a radiograph has at least 64 pixels on its shorter side, so this is a thumbnail, "
                       "icon or strip, not a film. Score the full-resolution film."]


def test_check_film_on_arrays() -> None:
    film = film_pixels().astype(np.float32) / 255
    assert check_film(film, "film") is film
    with pytest.raises(DataError, match=r"^array: every pixel has the value 0\.5 "):
        check_film(np.full((100, 100), 0.5, np.float32), "array")


def test_the_counting_shortcut_never_passes_a_film_the_percentiles_would_refuse() -> None:
    """`_spread_at_least` (two counts instead of np.percentile) only says True where the percentile spread is ≥ the
    threshold, on real films (all take the shortcut) and on random, speckled, narrow and near-threshold arrays."""
    from salad.filmcheck import _spread_at_least

    films = [pydicom_data(name) for name in CR_FILMS] + sorted(KERMANY.rglob("*.jpeg"))[::200]
    images, _, _ = read_images(films)
    assert all(_spread_at_least(img, MIN_SPREAD) for img in images)
    rng = np.random.default_rng(7)
    shortcuts = 0
    for i in range(600):
        h, w = (int(v) for v in rng.integers(64, 200, 2))
        if i % 3 == 0:  # a blank film with a growing share of specks: crosses the 1 % rank the shortcut counts
            a = np.full((h, w), 0.5, np.float32)
            k = int(rng.integers(1, h * w // 30 + 2))
            a.flat[rng.choice(h * w, k, replace=False)] = rng.random(k)
        elif i % 3 == 1:  # narrow grey: spread around the threshold
            a = np.clip(0.5 + rng.uniform(0.005, 0.04) * rng.standard_normal((h, w)), 0, 1).astype(np.float32)
        else:
            a = rng.beta(0.5, 0.5, (h, w)).astype(np.float32)
        if _spread_at_least(a, MIN_SPREAD):
            shortcuts += 1
            p1, p99 = np.percentile(a, (1, 99))
            assert p99 - p1 >= MIN_SPREAD
    assert 100 < shortcuts < 600  # both branches were exercised


# -- DICOM tags that are not numbers ---------------------------------------------------------------------


@pytest.mark.parametrize(("keyword", "text"), [("NumberOfFrames", "x1"), ("Rows", "abc"), ("SamplesPerPixel", "one")])
def test_a_text_in_a_whole_number_tag_is_a_typed_refusal(tmp_path: Path, keyword: str, text: str) -> None:
    """The value is written into the file as a faulty modality writes it (pydicom keeps the bad IS/US text)."""
    ds = pydicom.dcmread(pydicom_data("RG1_UNCR.dcm"))
    tag = pydicom.datadict.tag_for_keyword(keyword)
    assert tag is not None
    ds[tag] = pydicom.DataElement(tag, "IS", "1")  # IS holds text, so the bad value survives a save
    ds[tag]._value = text
    path = tmp_path / f"{keyword}.dcm"
    with warnings.catch_warnings():  # pydicom warns that the value is not a valid IS, and keeps it
        warnings.simplefilter("ignore")
        ds.save_as(path, enforce_file_format=True)
        with pytest.raises(DataError, match=rf"{keyword}\.dcm: DICOM {keyword} = '{text}' is not a whole number"):
            read_image(path)
        _, kept, skipped = read_images([path, FILM])
    assert kept == [1] and len(skipped) == 1 and skipped[0].startswith(f"{path}: DICOM {keyword} = '{text}'")
