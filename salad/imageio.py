"""One reader for radiographs: PNG/JPEG/TIFF (8/16-bit) and DICOM, returning display-ready grey floats.

Every reader returns a float32 H×W array in [0, 1] where bright means dense (bone white), the way a
radiologist sees the film. Preprocessing (salad.preprocess) then works on that one representation.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from salad.errors import DataError

#: Decompression-bomb guard: no radiograph has more pixels than this (about 13k × 13k).
MAX_PIXELS = 1 << 27
# OpenCV reads this cap when it is first imported; it refuses larger images while decoding.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))

import cv2  # noqa: E402

RASTER_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})
IMAGE_SUFFIXES = RASTER_SUFFIXES | DICOM_SUFFIXES


def is_image_path(path: Path) -> bool:
    """True for files the reader handles by name; extension-less files are probed as DICOM."""
    return path.suffix.lower() in IMAGE_SUFFIXES or (path.suffix == "" and _has_dicom_preamble(path))


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one radiograph as float32 H×W in [0, 1], bone bright; raise DataError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file. Check the path (relative paths are resolved from {Path.cwd()}).")
    if p.suffix.lower() in DICOM_SUFFIXES or (p.suffix.lower() not in RASTER_SUFFIXES and _has_dicom_preamble(p)):
        return read_dicom(p)
    if p.suffix.lower() in RASTER_SUFFIXES:
        return read_raster(p)
    raise DataError(
        f"{p}: not an image this toolkit reads (suffix {p.suffix!r}). "
        f"Expected one of {sorted(IMAGE_SUFFIXES)} or a DICOM file with a 'DICM' preamble."
    )


def read_raster(path: Path) -> np.ndarray:
    """PNG/JPEG/TIFF/BMP through OpenCV: 8-bit scales by 1/255, 16-bit by its own min/max range."""
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes). Re-copy or re-export the image.")
    if path.suffix.lower() in (".jpg", ".jpeg") and not _jpeg_is_complete(data):
        # libjpeg only warns on a truncated stream and fills the rest with grey; refuse it instead.
        raise DataError(f"{path}: truncated JPEG (no end-of-image marker). Re-copy or re-export the image.")
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise DataError(f"{path}: cannot decode image ({exc.err.strip() if exc.err else exc}).") from exc
    if img is None:
        raise DataError(f"{path}: cannot decode image (corrupt, truncated or not really a {path.suffix} file).")
    if img.size > MAX_PIXELS:
        raise DataError(f"{path}: {img.shape} has more than {MAX_PIXELS} pixels; refusing a decompression bomb.")
    if img.ndim == 3:
        # Many exports (e.g. the Kermany set) store grey films as RGB/RGBA: take the luminance.
        code = cv2.COLOR_BGRA2GRAY if img.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        img = cv2.cvtColor(img, code)
    return _to_unit_range(img, path)


def _jpeg_is_complete(data: np.ndarray) -> bool:
    tail = data[-64:].tobytes().rstrip(b"\x00\r\n ")
    return tail.endswith(b"\xff\xd9")


def _to_unit_range(img: np.ndarray, path: Path) -> np.ndarray:
    if img.dtype == np.uint8:
        return img.astype(np.float32) / np.float32(255.0)
    if img.dtype in (np.uint16, np.int16, np.int32, np.uint32, np.float32, np.float64):
        arr = img.astype(np.float64)
        if not np.all(np.isfinite(arr)):
            raise DataError(f"{path}: image contains NaN or infinite values.")
        return _stretch(arr)
    raise DataError(f"{path}: unsupported pixel type {img.dtype}; expected 8- or 16-bit grey.")


def _stretch(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def read_dicom(path: Path) -> np.ndarray:
    """DICOM: modality LUT/rescale → VOI LUT or window → MONOCHROME1 inversion → [0, 1] floats.

    Colour, multi-frame and undecodable compressed data are rejected with a clear error.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc}).") from exc
    if "PixelData" not in ds:
        raise DataError(f"{path}: DICOM has no pixel data (is it a structured report or presentation state?).")
    samples = int(ds.get("SamplesPerPixel", 1))
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DataError(
            f"{path}: colour DICOM ({photometric}, {samples} samples per pixel); "
            "expected a grey radiograph (MONOCHROME1 or MONOCHROME2)."
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise DataError(f"{path}: multi-frame DICOM ({frames} frames); expected a single radiograph.")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * cols > MAX_PIXELS or rows <= 0 or cols <= 0:
        raise DataError(f"{path}: {rows}×{cols} pixels is outside 1..{MAX_PIXELS}; refusing to decode.")
    try:
        raw = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for truncated or undecodable pixel data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise DataError(
            f"{path}: cannot decode pixel data (transfer syntax {name}): {exc}. "
            "If it is compressed, install pylibjpeg, pylibjpeg-openjpeg and pylibjpeg-libjpeg; "
            "if it is truncated, re-send it from the modality."
        ) from exc
    if raw.shape != (rows, cols):
        raise DataError(f"{path}: decoded shape {raw.shape} does not match Rows×Columns {rows}×{cols}.")
    values = apply_modality_lut(raw, ds)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        values = apply_voi_lut(values, ds, index=0, prefer_lut=True)
    unit = _stretch(np.asarray(values, dtype=np.float64))
    if photometric == "MONOCHROME1":
        # MONOCHROME1 shows its lowest value as white: invert so that bone is bright like MONOCHROME2.
        unit = np.float32(1.0) - unit
    return unit
