"""One reader for rasters and DICOM: real CR radiographs, bone-bright MONOCHROME1, clear refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from salad.errors import DataError
from salad.imageio import read_image
from salad.preprocess import PreprocessConfig, load_image, preprocess

from ..conftest import SAMPLE_TRAIN


def _centre_vs_lungs(img: np.ndarray) -> tuple[float, float]:
    h, w = img.shape
    spine = img[int(0.3 * h) : int(0.7 * h), int(0.46 * w) : int(0.54 * w)].mean()
    lungs = np.mean([img[int(0.3 * h) : int(0.5 * h), int(0.2 * w) : int(0.35 * w)].mean(),
                     img[int(0.3 * h) : int(0.5 * h), int(0.65 * w) : int(0.8 * w)].mean()])
    return float(spine), float(lungs)


def test_monochrome1_cr_is_read_bone_bright(dicom_files: dict[str, Path]) -> None:
    import pydicom

    path = dicom_files["RG1_UNCR.dcm"]
    assert pydicom.dcmread(path, stop_before_pixels=True).PhotometricInterpretation == "MONOCHROME1"
    img = read_image(path)
    assert img.dtype == np.float32 and img.min() >= 0.0 and img.max() <= 1.0
    spine, lungs = _centre_vs_lungs(img)
    assert spine > lungs + 0.1, f"spine {spine:.3f} should be brighter than the lung fields {lungs:.3f}"
    # the raw stored values are the other way round: MONOCHROME1 stores bone as low values
    raw = pydicom.dcmread(path).pixel_array.astype(np.float32)
    raw_spine, raw_lungs = _centre_vs_lungs(raw)
    assert raw_spine < raw_lungs


def test_raw_and_jpeg2000_copies_of_one_film_read_identically(dicom_files: dict[str, Path]) -> None:
    a = read_image(dicom_files["RG1_UNCR.dcm"])
    b = read_image(dicom_files["RG1_J2KR.dcm"])
    np.testing.assert_array_equal(a, b)


def test_kermany_jpeg_is_grey_in_unit_range_and_preprocesses_to_minus_one_one() -> None:
    path = sorted(SAMPLE_TRAIN.iterdir())[0]
    img = read_image(path)
    assert img.ndim == 2 and img.shape == (224, 224)
    x = load_image(path, PreprocessConfig(size=128))
    assert x.shape == (1, 128, 128) and x.dtype == np.float32
    assert -1.0 <= x.min() < -0.5 and 0.5 < x.max() <= 1.0


def test_sixteen_bit_png_uses_its_range(tmp_path: Path) -> None:
    import cv2

    ramp = np.tile(np.linspace(100, 4000, 64, dtype=np.uint16), (64, 1))
    cv2.imwrite(str(tmp_path / "ramp.png"), ramp)
    img = read_image(tmp_path / "ramp.png")
    assert img.min() == 0.0 and img.max() == 1.0
    assert np.all(np.diff(img[0]) >= 0)


def test_letterbox_keeps_aspect_and_pads_black() -> None:
    img = np.ones((100, 200), dtype=np.float32)
    x = preprocess(img, PreprocessConfig(size=64, resize_mode="letterbox"))
    assert x[0, 0, 0] == -1.0 and x[0, 32, 32] == pytest.approx(1.0)
    assert np.isclose(x[0, :, 10], 1.0).sum() == 32  # 200→64 wide means 100→32 high


def test_truncated_jpeg_is_refused(tmp_path: Path) -> None:
    data = sorted(SAMPLE_TRAIN.iterdir())[0].read_bytes()
    bad = tmp_path / "cut.jpeg"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.jpeg: truncated JPEG"):
        read_image(bad)


def test_truncated_dicom_is_refused(dicom_files: dict[str, Path], tmp_path: Path) -> None:
    data = dicom_files["RG1_UNCR.dcm"].read_bytes()
    bad = tmp_path / "cut.dcm"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match=r"cut\.dcm: "):
        read_image(bad)


def test_non_image_and_colour_dicom_are_refused(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    txt = tmp_path / "notes.txt"
    txt.write_text("not an image")
    with pytest.raises(DataError, match=r"notes\.txt: not an image"):
        read_image(txt)
    fake = tmp_path / "fake.png"
    fake.write_text("not a png")
    with pytest.raises(DataError, match=r"fake\.png: the file does not start like a PNG, JPEG, TIFF or BMP"):
        read_image(fake)
    import pydicom

    colour = pydicom.dcmread(get_testdata_file("US1_UNCR.dcm"))
    colour.Modality = "CR"  # an RGB secondary capture labelled CR: refused for its colour, not its modality
    colour.save_as(tmp_path / "colour.dcm", enforce_file_format=True)
    with pytest.raises(DataError, match=r"colour\.dcm: colour DICOM \(RGB, 3 samples per pixel\)"):
        read_image(tmp_path / "colour.dcm")
    with pytest.raises(DataError, match=r"US1_UNCR\.dcm: DICOM modality 'US' is not a projection radiograph"):
        read_image(get_testdata_file("US1_UNCR.dcm"))
