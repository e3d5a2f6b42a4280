"""One reader for radiographs: PNG/JPEG/TIFF (8/16-bit) and DICOM, returning display-ready grey floats.

Every reader returns a float32 H×W array in [0, 1] where bright means dense (bone white), the way a
radiologist sees the film. Preprocessing (salad.preprocess) then works on that one representation.
"""

from __future__ import annotations

import math
import os
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from salad.dicom_display import display_values, stretch
from salad.errors import DataError
from salad.filmcheck import check_film
from salad.progress import progress

#: Decompression-bomb guard: no radiograph has more pixels than this (about 13k × 13k).
MAX_PIXELS = 1 << 27
#: Files larger than this are refused from their size alone, before a byte is read (a 4k × 5k
#: 16-bit CR is about 40 MB uncompressed; a gigabyte is never one film).
MAX_FILE_BYTES = 1 << 30
#: Cap on the decoded raster, from the header (pixels × channels × bytes per sample) before
#: decoding: 128 MiB holds a 16-bit 8k × 8k film, larger than any flat panel or CR plate.
MAX_DECODED_BYTES = 1 << 27
#: DICOM modalities that are projection radiographs (computed, digital, conventional film):
#: what a chest detector was trained on. MR, CT, US, NM, MG, XA, PX (dental) … are refused.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "RG"})
#: A file without the (Type 1) Modality tag is accepted only when its SOP class is a radiograph's.
RADIOGRAPH_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
})
# OpenCV reads this cap when it is first imported; it refuses larger images while decoding. The
# header check below refuses them earlier; this stays as a second guard for what OpenCV sniffs.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))

import cv2  # noqa: E402

RASTER_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})
IMAGE_SUFFIXES = RASTER_SUFFIXES | DICOM_SUFFIXES
#: DICOM tags that must hold finite numbers for the modality/VOI LUTs (DS values in the file).
_NUMERIC_TAGS = ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth")


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
    _check_file(p)
    if p.suffix.lower() in DICOM_SUFFIXES or (p.suffix.lower() not in RASTER_SUFFIXES and _has_dicom_preamble(p)):
        reader = read_dicom
    elif p.suffix.lower() in RASTER_SUFFIXES:
        reader = read_raster
    else:
        raise DataError(
            f"{p}: not an image this toolkit reads (suffix {p.suffix!r}). "
            f"Expected one of {sorted(IMAGE_SUFFIXES)} or a DICOM file with a 'DICM' preamble."
        )
    try:
        image = reader(p)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError, struct.error) as exc:
        # A decoder's own error on a damaged file (pydicom converts tags lazily): still a refusal naming the file.
        raise DataError(f"{p}: cannot read this film ({type(exc).__name__}: {' '.join(str(exc).split())}). "
                        "The file is damaged or malformed; re-copy or re-export it.") from None
    return check_film(image, str(p))


def read_images(paths: Sequence[str | os.PathLike[str]], desc: str | None = None) -> tuple[list[np.ndarray], list[int], list[str]]:
    """The films of `paths` that can be read (as read_image gives them), their indices, and "path: why" for the others.

    desc: a progress bar with this label (salad.progress) when there are many films.
    """
    films, kept, skipped = [], [], []
    bar = progress(paths, desc=desc or "reading films", unit="film", disable=desc is None or len(paths) < 50)
    for i, p in enumerate(bar):
        try:
            films.append(read_image(p))
            kept.append(i)
        except (DataError, OSError) as exc:  # a DataError names its file already
            skipped.append(str(exc) if isinstance(exc, DataError) and str(exc).startswith(str(p)) else f"{p}: {exc}")
    return films, kept, skipped


def _check_file(path: Path) -> int:
    """The file's size from stat, before anything is read: a missing, special or oversized file is refused here."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file. Check the path (relative paths are resolved from {Path.cwd()}).") from None
    except OSError as exc:  # ELOOP (symlink loop), EACCES on a parent folder, ENAMETOOLONG …
        raise DataError(f"{path}: cannot open ({exc.strerror or exc}). Check the path and its permissions.") from None
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{path}: not a regular file (a folder, device or pipe); expected one image file.")
    if info.st_size > MAX_FILE_BYTES:
        raise DataError(
            f"{path}: {info.st_size:,} bytes is larger than the {MAX_FILE_BYTES:,}-byte cap for one film; "
            "refusing to read it. Check that it is a single radiograph (not an archive or a video)."
        )
    return info.st_size


def _read_bytes(path: Path) -> bytes:
    """The whole file, after the size check; OS errors (permissions, I/O) become a DataError naming the file."""
    _check_file(path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc}). Check the file's permissions and the disk.") from None


@dataclass(frozen=True)
class RasterHeader:
    """What a raster's header promises, read before decoding: format, size, channels, bytes per sample, pages."""

    format: str
    width: int
    height: int
    channels: int
    bytes_per_sample: int
    pages: int = 1

    @property
    def decoded_bytes(self) -> int:
        return self.width * self.height * self.channels * self.bytes_per_sample


def read_raster_header(data: bytes, path: Path) -> RasterHeader:
    """Dimensions and bit depth from the first bytes of a PNG/JPEG/TIFF/BMP, without decoding any pixels.

    OpenCV has no header-only API and Pillow is not a core dependency, so PNG, TIFF and BMP headers
    are parsed here from their fixed, spec-defined layouts (a few struct reads each); JPEG uses
    simplejpeg's (libjpeg-turbo's) own header reader.
    """
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return _png_header(data)
        if data[:3] == b"\xff\xd8\xff":
            import simplejpeg

            h, w, colourspace, _ = simplejpeg.decode_jpeg_header(data)
            return RasterHeader("JPEG", w, h, 1 if colourspace == "Gray" else 3, 1)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_header(data)
        if data[:2] == b"BM":
            w, h = struct.unpack_from("<ii", data, 18)
            (bits,) = struct.unpack_from("<H", data, 28)
            return RasterHeader("BMP", abs(w), abs(h), max(1, math.ceil(bits / 8)), 1)
    except (struct.error, ValueError, IndexError) as exc:
        raise DataError(f"{path}: cannot decode image (corrupt or truncated header: {exc}); re-copy or re-export the image.") from None
    raise DataError(
        f"{path}: the file does not start like a PNG, JPEG, TIFF or BMP (first bytes {data[:8]!r}); "
        f"it is not really a {path.suffix} file. Re-export it as PNG or DICOM."
    )


def _png_header(data: bytes) -> RasterHeader:
    """PNG IHDR (always the first chunk): width, height, bit depth, colour type → channels."""
    width, height, depth, colour = struct.unpack_from(">IIBB", data, 16)
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(colour, 4)  # palette (3) decodes to BGR
    return RasterHeader("PNG", width, height, channels, 2 if depth > 8 else 1)


def _tiff_header(data: bytes) -> RasterHeader:
    """First IFD of a TIFF (ImageWidth, ImageLength, BitsPerSample, SamplesPerPixel) and the number of pages (IFDs)."""
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack_from(order + "I", data, 4)
    tags: dict[int, int] = {}
    pages, seen = 0, set()
    while offset and offset not in seen and pages < 100_000:  # `seen` stops an IFD chain that loops
        seen.add(offset)
        (count,) = struct.unpack_from(order + "H", data, offset)
        if pages == 0:
            for i in range(count):
                entry = offset + 2 + 12 * i
                tag, kind, n = struct.unpack_from(order + "HHI", data, entry)
                if tag in (256, 257, 258, 277) and kind in (3, 4):  # SHORT or LONG
                    size, code = (2, "H") if kind == 3 else (4, "I")
                    # BitsPerSample has one value per channel; values over 4 bytes live at an offset.
                    where = entry + 8 if size * n <= 4 else struct.unpack_from(order + "I", data, entry + 8)[0]
                    tags[tag] = struct.unpack_from(order + code, data, where)[0]
        pages += 1
        (offset,) = struct.unpack_from(order + "I", data, offset + 2 + 12 * count)
    bits = tags.get(258, 8)
    return RasterHeader("TIFF", tags.get(256, 0), tags.get(257, 0), tags.get(277, 1), max(1, math.ceil(bits / 8)), pages)


def read_raster(path: Path) -> np.ndarray:
    """PNG/JPEG/TIFF/BMP through OpenCV: 8-bit scales by 1/255, 16-bit by its own min/max range.

    The header is read first: multi-page TIFFs and rasters whose decoded size exceeds
    MAX_DECODED_BYTES or MAX_PIXELS are refused before a pixel is decoded; JPEG scan data is
    checked strictly (see _check_jpeg_scan) because libjpeg only warns about damage.
    """
    data = _read_bytes(path)
    if len(data) == 0:
        raise DataError(f"{path}: the file is empty (0 bytes). Re-copy or re-export the image.")
    header = read_raster_header(data, path)
    if header.pages > 1:
        raise DataError(
            f"{path}: multi-page {header.format} with {header.pages} pages; expected one radiograph per file. "
            "Split the pages into separate files."
        )
    pixels = header.width * header.height
    if pixels <= 0 or pixels > MAX_PIXELS or header.decoded_bytes > MAX_DECODED_BYTES:
        raise DataError(
            f"{path}: the {header.format} header says {header.width}×{header.height} pixels × {header.channels} channel(s) × "
            f"{8 * header.bytes_per_sample} bit = {header.decoded_bytes:,} bytes decoded; expected 1..{MAX_PIXELS:,} pixels "
            f"and at most {MAX_DECODED_BYTES:,} bytes. Refused before decoding (decompression-bomb guard); "
            "downsample the image if it is a real film."
        )
    if header.format == "JPEG":
        if not _jpeg_is_complete(data):
            # libjpeg only warns on a truncated stream and fills the rest with grey; refuse it instead.
            raise DataError(f"{path}: truncated JPEG (no end-of-image marker). Re-copy or re-export the image.")
        _check_jpeg_scan(data, path)
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise DataError(f"{path}: cannot decode image ({exc.err.strip() if exc.err else exc}).") from exc
    if img is None:
        raise DataError(f"{path}: cannot decode image (corrupt, truncated or not really a {path.suffix} file).")
    if img.ndim == 3:
        # Many exports (e.g. the Kermany set) store grey films as RGB/RGBA: take the luminance.
        code = cv2.COLOR_BGRA2GRAY if img.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        img = cv2.cvtColor(img, code)
    return _to_unit_range(img, path)


def _jpeg_is_complete(data: bytes) -> bool:
    tail = data[-64:].rstrip(b"\x00\r\n ")
    return tail.endswith(b"\xff\xd9")


def _check_jpeg_scan(data: bytes, path: Path) -> None:
    """Refuse a JPEG whose entropy-coded data is damaged, even when it still ends in an EOI marker.

    libjpeg(-turbo) treats damaged scan data ("Corrupt JPEG data: premature end of data segment",
    "bad Huffman code") as a warning and fills the missing blocks with grey: OpenCV prints the
    warning to stderr and returns the image, Pillow ignores it, and pylibjpeg-libjpeg decodes a cut
    scan without complaint. simplejpeg (libjpeg-turbo, wheels for every platform) raises on those
    warnings with strict=True, so it is the check; OpenCV still decodes, so pixels are unchanged.
    """
    import simplejpeg

    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY", strict=True)
    except ValueError as exc:
        raise DataError(
            f"{path}: damaged JPEG scan data ({exc}); a decoder would fill the damaged part with grey. "
            "Re-copy or re-export the image."
        ) from None


def _to_unit_range(img: np.ndarray, path: Path) -> np.ndarray:
    if img.dtype == np.uint8:
        return img.astype(np.float32) / np.float32(255.0)
    if img.dtype in (np.uint16, np.int16, np.int32, np.uint32, np.float32, np.float64):
        arr = img.astype(np.float32)  # float32, not float64: halves the working memory of a 16-bit film
        if not np.all(np.isfinite(arr)):
            raise DataError(f"{path}: image contains NaN or infinite values.")
        return _stretch(arr)
    raise DataError(f"{path}: unsupported pixel type {img.dtype}; expected 8- or 16-bit grey.")


def _stretch(arr: np.ndarray) -> np.ndarray:
    """Min/max to [0, 1] in float32 (one working copy, scaled in place): never float64."""
    out = np.asarray(arr, dtype=np.float32)
    return stretch(out, float(out.min()), float(out.max()))


def read_dicom(path: Path) -> np.ndarray:
    """DICOM: modality LUT/rescale → VOI LUT or window → MONOCHROME1 inversion → [0, 1] floats.

    Refused with a DataError naming the file: files over MAX_FILE_BYTES, modalities that are not
    projection radiographs, colour, multi-frame, oversized and undecodable or truncated pixel data,
    non-numeric or non-finite rescale/window tags, and non-finite values after the LUTs.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    size = _check_file(path)
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc}).") from exc
    _check_modality(ds, path)
    if "PixelData" not in ds:
        if "Rows" in ds and "Columns" in ds:
            raise DataError(
                f"{path}: DICOM declares a {ds.get('Rows')}×{ds.get('Columns')} image but the file ({size:,} bytes) ends "
                "before its pixel data: it is truncated. Re-send it from the modality."
            )
        raise DataError(f"{path}: DICOM has no pixel data (is it a structured report or presentation state?).")
    samples = _int_tag(ds, "SamplesPerPixel", 1, path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DataError(
            f"{path}: colour DICOM ({photometric}, {samples} samples per pixel); "
            "expected a grey radiograph (MONOCHROME1 or MONOCHROME2)."
        )
    frames = _int_tag(ds, "NumberOfFrames", 1, path)
    if frames != 1:
        raise DataError(f"{path}: multi-frame DICOM ({frames} frames); expected a single radiograph.")
    rows, cols = _int_tag(ds, "Rows", 0, path), _int_tag(ds, "Columns", 0, path)
    bits = _int_tag(ds, "BitsAllocated", 16, path)
    expected = rows * cols * math.ceil(bits / 8)
    if rows * cols > MAX_PIXELS or rows <= 0 or cols <= 0 or expected > MAX_DECODED_BYTES:
        raise DataError(
            f"{path}: {rows}×{cols} pixels × {bits} bit = {expected:,} bytes; expected 1..{MAX_PIXELS:,} pixels and at most "
            f"{MAX_DECODED_BYTES:,} bytes. Refusing to decode."
        )
    params = _numeric_tags(ds, path)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    compressed = bool(getattr(syntax, "is_compressed", False))
    if not compressed and bits % 8 == 0:
        found = len(ds.PixelData)
        if found < expected:
            raise DataError(
                f"{path}: truncated pixel data: expected {expected:,} bytes ({rows}×{cols} × {bits} bit), found {found:,}. "
                "The file was cut short in transfer; re-send it from the modality."
            )
    try:
        raw = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for truncated or undecodable pixel data
        name = getattr(syntax, "name", syntax)
        hint = (
            "If a decoder is missing, install pylibjpeg, pylibjpeg-openjpeg and pylibjpeg-libjpeg; otherwise the data is "
            "damaged or truncated: re-send it from the modality."
            if compressed else "The data does not match its Rows/Columns/BitsAllocated tags: re-send it from the modality."
        )
        raise DataError(f"{path}: cannot decode pixel data (transfer syntax {name}): {' '.join(str(exc).split())}. {hint}") from exc
    if raw.shape != (rows, cols):
        raise DataError(f"{path}: decoded shape {raw.shape} does not match Rows×Columns {rows}×{cols}.")
    return display_values(raw, ds, photometric, path, params)


def _check_modality(ds: Any, path: Path) -> None:
    """Accept projection radiographs only (RADIOGRAPH_MODALITIES); without a Modality tag, a radiograph's SOP class."""
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality:
        if modality not in RADIOGRAPH_MODALITIES:
            raise DataError(
                f"{path}: DICOM modality {modality!r} is not a projection radiograph; expected one of "
                f"{sorted(RADIOGRAPH_MODALITIES)}. This detector was trained on chest X-rays: score CR/DX films only."
            )
        return
    sop = str(ds.get("SOPClassUID", "") or "")
    if sop not in RADIOGRAPH_SOP_CLASSES:
        raise DataError(
            f"{path}: DICOM has no Modality tag and its SOP class {sop or 'is missing'} is not CR or DX image storage; "
            f"expected a radiograph (Modality one of {sorted(RADIOGRAPH_MODALITIES)}). Fix the export at the modality."
        )


def _int_tag(ds: Any, keyword: str, default: int, path: Path) -> int:
    """A whole-number DICOM tag (IS/US), `default` when absent or empty; a text value is a DataError naming tag and value."""
    try:
        raw = ds.get(keyword, None)
    except Exception:  # pydicom converts IS lazily and may raise on bad text
        raw = ds[keyword].repval if keyword in ds else None
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return default
    try:
        return int(str(raw).strip())
    except (TypeError, ValueError, OverflowError):
        raise DataError(
            f"{path}: DICOM {keyword} = {str(raw)!r} is not a whole number; expected e.g. {default or 1}. "
            "Fix the tag at the modality (or its export settings) and re-send the film."
        ) from None


def _numeric_tags(ds: Any, path: Path) -> dict[str, list[float]]:
    """The rescale/window tags as finite floats; a text or NaN/Inf value is a DataError naming the tag and value."""
    found: dict[str, list[float]] = {}
    for keyword in _NUMERIC_TAGS:
        if keyword not in ds:
            continue
        try:
            raw = ds[keyword].value
        except Exception as exc:  # pydicom converts DS lazily and raises ValueError/TypeError on bad text
            raise DataError(f"{path}: DICOM {keyword} cannot be read ({exc}); expected a decimal number.") from None
        items = list(raw) if isinstance(raw, list | tuple) or type(raw).__name__ == "MultiValue" else [raw]
        numbers: list[float] = []
        for item in items:
            try:
                number = float(item)
            except (TypeError, ValueError):
                number = math.nan
                finite = False
            else:
                finite = math.isfinite(number)
            if not finite:
                raise DataError(
                    f"{path}: DICOM {keyword} = {str(raw)!r} is not a finite number; expected a decimal such as 1.0. "
                    "Fix the tag at the modality (or its export settings) and re-send the film."
                )
            numbers.append(number)
        found[keyword] = numbers
    if "RescaleSlope" in found and any(v == 0 for v in found["RescaleSlope"]):
        raise DataError(f"{path}: DICOM RescaleSlope = 0 maps every pixel to one value; expected a non-zero slope.")
    return found
