"""Calibration films: only real normal X-rays, refused by name and count when they cannot be used."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import salad
from salad.calibration.sources import DEFAULT_MAX_IMAGES, CalibrationSource, OrtCalibrationReader
from salad.data import list_hash
from salad.errors import CalibrationError
from salad.preprocess import PreprocessConfig

SAMPLE = Path(salad.__file__).parent / "sample"
SAMPLE_TRAIN = SAMPLE / "train" / "normal"
SAMPLE_EVAL = SAMPLE / "eval"
CONFIG = PreprocessConfig(size=64)


def films(folder: Path, n: int) -> Path:
    """A folder holding the first n shipped normal films."""
    folder.mkdir(parents=True)
    for src in sorted(SAMPLE_TRAIN.glob("*.jpeg"))[:n]:
        shutil.copy(src, folder / src.name)
    return folder


def test_no_data_is_refused_without_fallback() -> None:
    with pytest.raises(CalibrationError, match=r"needs real normal films: pass --data NORMALS.*no fallback to random or synthetic data"):
        CalibrationSource.from_data(None, CONFIG)


def test_too_few_films_says_how_many_were_found(tmp_path: Path) -> None:
    folder = films(tmp_path / "few", 7)
    with pytest.raises(CalibrationError, match=r"few: found 7 normal film\(s\); int8 calibration needs at least 100\. Add more"):
        CalibrationSource.from_data(folder, CONFIG)
    assert CalibrationSource.from_data(folder, CONFIG, min_films=7).count == 7


def test_abnormal_films_are_not_counted(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match=r"found 40 normal film\(s\) \(40 abnormal film\(s\) in it are not used\); .*at least 100"):
        CalibrationSource.from_data(SAMPLE_EVAL, CONFIG)
    source = CalibrationSource.from_data(SAMPLE_EVAL, CONFIG, min_films=40)
    assert source.count == 40 and all(p.parent.name == "normal" for p in source.paths)


def test_fewer_images_than_the_minimum_are_refused() -> None:
    with pytest.raises(CalibrationError, match=r"--films 50 is below the minimum of 100 calibration films"):
        CalibrationSource.from_data(SAMPLE_TRAIN, CONFIG, films=50)


def test_constant_and_thumbnail_images_are_refused_by_name(tmp_path: Path) -> None:
    folder = films(tmp_path / "mixed", 5)
    cv2.imwrite(str(folder / "blank.png"), np.full((512, 512), 128, np.uint8))
    cv2.imwrite(str(folder / "icon.png"), (np.arange(144).reshape(12, 12) % 256).astype(np.uint8))
    with pytest.raises(CalibrationError) as info:
        CalibrationSource.from_data(folder, CONFIG, min_films=5)
    message = str(info.value)
    assert "2 of 7 calibration film(s) are not usable X-rays" in message
    assert "blank.png: every pixel has the value 0.50" in message and "(a constant image, not an X-ray)" in message
    # the reader refuses a 12×12 icon itself (salad.filmcheck), before calibration's own half-the-input rule
    assert "icon.png: 12×12 pixels; a radiograph has at least 64 pixels on its shorter side" in message


def test_the_shipped_normals_are_used_with_their_list_hash() -> None:
    source = CalibrationSource.from_data(SAMPLE_TRAIN, CONFIG)
    files = sorted(SAMPLE_TRAIN.glob("*.jpeg"))
    assert source.count == source.found == len(files) == 200 < DEFAULT_MAX_IMAGES
    assert source.images.shape == (200, 1, 64, 64) and source.images.dtype == np.float32
    assert -1.0 <= source.images.min() < source.images.max() <= 1.0
    assert source.list_sha256 == list_hash(files)


def test_images_are_spread_over_the_list_and_deterministic() -> None:
    a = CalibrationSource.from_data(SAMPLE_TRAIN, CONFIG, films=120)
    b = CalibrationSource.from_data(SAMPLE_TRAIN, CONFIG, films=120)
    files = sorted(SAMPLE_TRAIN.glob("*.jpeg"))
    assert a.count == 120 and a.found == 200 and a.paths == b.paths
    assert a.paths[0] == files[0] and a.paths[-1] == files[-1] and len(set(a.paths)) == 120


def test_reader_speaks_onnxruntimes_protocol_in_batches() -> None:
    source = CalibrationSource.from_data(SAMPLE_TRAIN, CONFIG)
    reader = OrtCalibrationReader(source, batch=16)
    assert len(reader) == 13  # ceil(200 / 16)
    feeds = list(reader)
    assert [f["image"].shape[0] for f in feeds] == [16] * 12 + [8]
    np.testing.assert_array_equal(np.concatenate([f["image"] for f in feeds]), source.images)
    reader.set_range(2, 4)
    assert reader.get_next()["image"] is reader.batches[2]  # type: ignore[index]
    assert reader.get_next() is not None and reader.get_next() is None
    reader.rewind()
    assert reader.get_next()["image"] is reader.batches[2]  # type: ignore[index]
