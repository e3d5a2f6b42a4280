"""DICOM as a console receives it: MONOCHROME1 shown bone-bright, compressed and raw files identical."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from salad.imageio import read_dicom, read_image


def centre_and_lungs(image: np.ndarray) -> tuple[float, float]:
    """Mean of the spine/mediastinum strip and of the two lung fields, over the middle rows of a PA chest film."""
    h, w = image.shape
    rows = slice(int(0.3 * h), int(0.7 * h))
    centre = image[rows, int(0.45 * w) : int(0.55 * w)].mean()
    lungs = np.concatenate([image[rows, int(0.2 * w) : int(0.35 * w)].ravel(), image[rows, int(0.65 * w) : int(0.8 * w)].ravel()]).mean()
    return float(centre), float(lungs)


def test_monochrome1_is_shown_bone_bright(dicom_files: dict[str, Path]) -> None:
    path = dicom_files["RG1_UNCR.dcm"]
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    # As stored, MONOCHROME1 makes dense tissue dark: the mediastinum is *below* the lungs ...
    raw_centre, raw_lungs = centre_and_lungs(ds.pixel_array.astype(np.float64))
    assert raw_centre < raw_lungs
    # ... and the reader shows it the way a radiologist reads a film: bone and mediastinum bright.
    image = read_dicom(path)
    assert image.dtype == np.float32 and image.min() >= 0.0 and image.max() <= 1.0
    centre, lungs = centre_and_lungs(image)
    assert centre > lungs + 0.1, (centre, lungs)


def test_lossless_jpeg2000_decodes_to_the_raw_pixels(dicom_files: dict[str, Path]) -> None:
    raw = read_image(dicom_files["RG1_UNCR.dcm"])
    j2k = read_image(dicom_files["RG1_J2KR.dcm"])
    assert pydicom.dcmread(dicom_files["RG1_J2KR.dcm"]).file_meta.TransferSyntaxUID.is_compressed
    assert raw.shape == j2k.shape
    np.testing.assert_allclose(j2k, raw, atol=1e-6)
