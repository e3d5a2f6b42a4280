"""Hostile inputs on real films: every one is refused with a DataError naming the file, or reported, never scored."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from salad.data import Unreadable, read_samples, scan_images
from salad.errors import DataError
from salad.imageio import MAX_DECODED_BYTES, MAX_FILE_BYTES, read_dicom, read_image

from ..conftest import SAMPLE_EVAL, SAMPLE_TRAIN

FILM = sorted(SAMPLE_TRAIN.glob("*.jpeg"))[0]


def grey(path: Path) -> np.ndarray:
    """A real film as 8-bit grey, read directly with OpenCV (the test's own oracle, not the reader under test)."""
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert img is not None, path
    return img


def dicom_data(name: str) -> Path:
    """A real DICOM from pydicom's own test files or the pydicom-data package (no download)."""
    pytest.importorskip("data_store", reason="pydicom-data is not installed (pip install pydicom-data)")
    from pydicom.data import get_testdata_file

    return Path(str(get_testdata_file(name)))


def patched_dicom(out: Path, keyword: str, text: str, source: str = "RG1_UNCR.dcm") -> Path:
    """A copy of a real CR whose `keyword` holds `text` as raw bytes in the file, as a faulty modality writes it.

    pydicom refuses to set a DS to "abcde", so a unique valid placeholder of the same length is
    written first and then replaced byte for byte in the saved file.
    """
    ds = pydicom.dcmread(dicom_data(source))
    placeholder = "31415."[: len(text)].ljust(len(text), "9")
    setattr(ds, keyword, placeholder)
    if keyword == "RescaleSlope":
        ds.RescaleIntercept = "0"
    ds.save_as(out, enforce_file_format=True)
    data = out.read_bytes()
    assert data.count(placeholder.encode()) == 1, f"placeholder {placeholder!r} is not unique in {out}"
    out.write_bytes(data.replace(placeholder.encode(), text.encode()))
    return out


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Run the block without root's permission override (tests run as root here): effective uid nobody."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary folder that an unprivileged user can traverse (pytest's tmp_path has 0700 parents)."""
    folder = Path(tempfile.mkdtemp(prefix="salad-input-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for p in [folder, *folder.rglob("*")]:
            if not p.is_symlink():
                p.chmod(0o755)
        shutil.rmtree(folder)


# -- defect 1: non-finite rescale -------------------------------------------------------------------


@pytest.mark.parametrize("slope", ["NaN   ", "Inf   ", "1e999 "])
def test_non_finite_rescale_slope_is_refused(tmp_path: Path, slope: str) -> None:
    path = patched_dicom(tmp_path / "slope.dcm", "RescaleSlope", slope)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid DS while reading
        with pytest.raises(DataError, match=rf"slope\.dcm: DICOM RescaleSlope = '{slope.strip()}' is not a finite number"):
            read_image(path)


# -- defects 4/16: text in numeric tags, oversized files ------------------------------------------


@pytest.mark.parametrize(("keyword", "text"), [("WindowCenter", "abcde "), ("RescaleSlope", "xyzzy ")])
def test_text_in_a_numeric_dicom_tag_is_a_data_error(tmp_path: Path, keyword: str, text: str) -> None:
    path = patched_dicom(tmp_path / "tag.dcm", keyword, text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=rf"tag\.dcm: DICOM {keyword} = '{text.strip()}' is not a finite number; expected"):
            read_image(path)


@pytest.mark.parametrize("name", ["huge.dcm", "huge.png", "IMG0001"])
def test_a_file_over_the_byte_cap_is_refused_before_it_is_read(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with open(path, "wb") as fh:  # sparse: no disk space and no memory, but stat says 1 GiB + 1
        fh.write(b"\0" * 128 + b"DICM")
        fh.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(DataError, match=rf"{name}: 1,073,741,825 bytes is larger than the 1,073,741,824-byte cap"):
        read_image(path)


# -- defect 6: damaged JPEG scan data that still ends in EOI --------------------------------------


@pytest.mark.parametrize("damage", ["cut-then-eoi", "zeroed-block"])
def test_jpeg_with_damaged_scan_data_is_refused(tmp_path: Path, damage: str) -> None:
    data = FILM.read_bytes()
    bad = data[: len(data) // 2] + b"\xff\xd9" if damage == "cut-then-eoi" else data[:3000] + bytes(500) + data[3500:]
    path = tmp_path / "damaged.jpeg"
    path.write_bytes(bad)
    assert bad.endswith(b"\xff\xd9") and cv2.imdecode(np.frombuffer(bad, np.uint8), cv2.IMREAD_UNCHANGED) is not None
    with pytest.raises(DataError, match=r"damaged\.jpeg: damaged JPEG scan data \(Corrupt JPEG data"):
        read_image(path)


def test_every_shipped_film_passes_the_strict_jpeg_check() -> None:
    films = sorted(SAMPLE_EVAL.rglob("*.jpeg"))
    assert len(films) == 80
    for film in films:
        assert read_image(film).shape == (224, 224)


# -- defect 7: modality -----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "modality"), [("MR_small.dcm", "MR"), ("CT_small.dcm", "CT")])
def test_mr_and_ct_are_refused_naming_the_modality(name: str, modality: str) -> None:
    with pytest.raises(
        DataError, match=rf"{name}: DICOM modality '{modality}' is not a projection radiograph; expected one of \['CR', 'DX', 'RG'\]"
    ):
        read_image(dicom_data(name))


def test_missing_modality_is_decided_by_the_sop_class(tmp_path: Path) -> None:
    cr = pydicom.dcmread(dicom_data("RG1_UNCR.dcm"))
    del cr.Modality
    cr.save_as(tmp_path / "cr.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(read_image(tmp_path / "cr.dcm"), read_image(dicom_data("RG1_UNCR.dcm")))
    mr = pydicom.dcmread(dicom_data("MR_small.dcm"))
    del mr.Modality
    mr.save_as(tmp_path / "mr.dcm", enforce_file_format=True)
    with pytest.raises(
        DataError, match=r"mr\.dcm: DICOM has no Modality tag and its SOP class 1\.2\.840\.10008\.5\.1\.4\.1\.1\.4 is not CR or DX"
    ):
        read_image(tmp_path / "mr.dcm")


# -- defect 8: JPEG lossless ------------------------------------------------------------------------


def test_jpeg_lossless_dicom_decodes_with_the_declared_dependencies(tmp_path: Path) -> None:
    requires = importlib.metadata.requires("salad-edge") or []
    assert any(r.startswith("pylibjpeg-libjpeg") and "extra" not in r for r in requires), requires
    src = dicom_data("JPEG-LL.dcm")  # a real JPEG Lossless SV1 file (NM): relabelled CR, as a CR plate sends it
    ds = pydicom.dcmread(src)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    ds.Modality = "CR"
    ds.save_as(tmp_path / "jpll.dcm", enforce_file_format=True)
    image = read_image(tmp_path / "jpll.dcm")
    assert image.shape == (1024, 256) and image.dtype == np.float32
    # the same pixels stored uncompressed read identically: the lossless decode is exact
    ds.decompress()
    ds.save_as(tmp_path / "native.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(image, read_image(tmp_path / "native.dcm"))
    assert image.std() > 0.01


# -- defect 9: CSV encoding, permission errors ------------------------------------------------------


def test_latin1_csv_is_a_data_error_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    shutil.copy(FILM, tmp_path / "film.jpeg")
    csv = tmp_path / "list.csv"
    csv.write_bytes("path,label,patient_id\nfilm.jpeg,0,Müller\n".encode("latin-1"))
    with pytest.raises(
        DataError, match=r"list\.csv: not UTF-8 text \(byte b'\\xfc' at offset \d+\); expected a UTF-8 CSV\. Re-save it as UTF-8"
    ):
        read_samples(csv)


def test_unreadable_image_is_a_data_error(open_tmp: Path) -> None:
    film = open_tmp / "locked.jpeg"
    shutil.copy(FILM, film)
    film.chmod(0)
    with unprivileged(), pytest.raises(DataError, match=r"locked\.jpeg: cannot read \(Permission denied\)"):
        read_image(film)


# -- defect 11: unreadable folders and symlink loops ------------------------------------------------


def test_unreadable_sub_folder_is_reported_not_skipped(open_tmp: Path) -> None:
    for cls in ("normal", "pneumonia"):
        (open_tmp / cls).mkdir()
        shutil.copy(FILM, open_tmp / cls / "a.jpeg")
    (open_tmp / "pneumonia").chmod(0)
    locked = open_tmp / "pneumonia"
    with unprivileged():
        entries = scan_images([open_tmp])
        with pytest.raises(
            DataError,
            match=(
                r"pneumonia: 1 path\(s\) could not be read, so the image list would be incomplete: "
                r".*pneumonia: cannot list this folder \(Permission denied\)"
            ),
        ):
            read_samples(open_tmp)
    assert entries[0] == open_tmp / "normal" / "a.jpeg"
    assert [str(e.error) for e in entries[1:] if isinstance(e, Unreadable)] == [f"{locked}: cannot list this folder (Permission denied)."]
    assert len(entries) == 2


def test_symlink_loops_are_reported(tmp_path: Path) -> None:
    root = tmp_path / "films"
    (root / "sub").mkdir(parents=True)
    shutil.copy(FILM, root / "sub" / "a.jpeg")
    (root / "sub" / "back").symlink_to(root, target_is_directory=True)  # sub/back → films: a loop
    (root / "self").symlink_to(root / "self")  # a link to itself: ELOOP
    entries = scan_images([root, tmp_path / "missing"])
    assert [e for e in entries if isinstance(e, Path)] == [root / "sub" / "a.jpeg"]
    messages = sorted(str(e.error) for e in entries if isinstance(e, Unreadable))
    assert messages == sorted([
        f"{root / 'self'}: cannot open (Too many levels of symbolic links); a broken or looping link, or no permission.",
        f"{root / 'sub' / 'back'}: symlink loop: this folder is {root} again; not searched twice.",
        f"{tmp_path / 'missing'}: no such file or folder.",
    ])


def test_empty_folder_is_an_entry_not_an_exception(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    shutil.copy(FILM, tmp_path / "a.jpeg")
    entries = scan_images([tmp_path / "empty", tmp_path / "a.jpeg"])
    assert isinstance(entries[0], Unreadable) and "folder contains no images" in str(entries[0].error)
    assert entries[1] == tmp_path / "a.jpeg"


# -- defect 13: multi-page TIFF -----------------------------------------------------------------


def test_multi_page_tiff_is_refused_naming_the_page_count(tmp_path: Path) -> None:
    pages = [grey(f) for f in sorted(SAMPLE_TRAIN.glob("*.jpeg"))[:3]]
    assert cv2.imwritemulti(str(tmp_path / "stack.tiff"), pages)
    with pytest.raises(DataError, match=r"stack\.tiff: multi-page TIFF with 3 pages; expected one radiograph per file"):
        read_image(tmp_path / "stack.tiff")
    assert cv2.imwrite(str(tmp_path / "one.tiff"), pages[0])
    np.testing.assert_array_equal(read_image(tmp_path / "one.tiff"), read_image(sorted(SAMPLE_TRAIN.glob("*.jpeg"))[0]))


# -- defect 17: decoded bytes, not pixels ----------------------------------------------------------


def write_zero_png(path: Path, side: int, depth: int) -> None:
    """A side×side grey PNG of zeros, compressed row by row so that writing it needs no side² buffer."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\0" * (1 + side * depth // 8)  # filter byte + samples
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, depth, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_sixteen_bit_png_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    write_zero_png(bomb, 11000, 16)
    assert bomb.stat().st_size < 1_000_000 and MAX_DECODED_BYTES < 11000 * 11000 * 2
    with pytest.raises(
        DataError,
        match=(
            r"bomb\.png: the PNG header says 11000×11000 pixels × 1 channel\(s\) × 16 bit = 242,000,000 bytes decoded"
            r".*Refused before decoding"
        ),
    ):
        read_image(bomb)
    # and it costs no memory: a fresh process's peak RSS stays far below the 242 MB one decode would take
    code = (
        "import resource, sys\nfrom salad.imageio import read_image\n"
        f"try:\n    read_image({str(bomb)!r})\nexcept Exception as e:\n    print(type(e).__name__)\n"
        # VmHWM is this process's own peak (ru_maxrss would carry over the forking pytest's peak across exec)
        "status = open('/proc/self/status').read() if sys.platform == 'linux' else ''\n"
        "hwm = [line.split()[1] for line in status.splitlines() if line.startswith('VmHWM:')]\n"
        "print(hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    kind, peak_kib = proc.stdout.split()
    assert kind == "DataError" and int(peak_kib) < 240_000, proc.stdout


def test_a_real_sixteen_bit_png_still_reads(tmp_path: Path) -> None:
    film = grey(FILM).astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "film16.png"), film)
    img = read_image(tmp_path / "film16.png")
    assert img.dtype == np.float32 and img.min() == 0.0 and img.max() == 1.0


# -- defect 18: Excel CSVs --------------------------------------------------------------------------


def test_csv_with_bom_and_spaced_header_reads(tmp_path: Path) -> None:
    shutil.copy(FILM, tmp_path / "film.jpeg")
    csv = tmp_path / "excel.csv"
    csv.write_bytes("path , label, patient_id\r\nfilm.jpeg,0,p1\r\n".encode("utf-8-sig"))
    [sample] = read_samples(csv)
    assert (sample.path, sample.label, sample.patient) == ((tmp_path / "film.jpeg").resolve(), 0, "p1")


# -- defect 19: what really happened to a cut DICOM -------------------------------------------------


def test_dicom_cut_inside_its_pixel_data_says_truncated(tmp_path: Path) -> None:
    data = dicom_data("RG1_UNCR.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(
        DataError, match=r"cut\.dcm: truncated pixel data: expected 7,198,310 bytes \(1955×1841 × 16 bit\), found 7,19\d,\d+"
    ) as info:
        read_dicom(cut)
    assert "pylibjpeg" not in str(info.value) and "structured report" not in str(info.value)


def test_dicom_cut_before_its_pixel_data_says_truncated(tmp_path: Path) -> None:
    data = dicom_data("RG1_UNCR.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: data.find(b"\xe0\x7f\x10\x00") + 2])  # inside the PixelData tag itself
    with pytest.raises(
        DataError, match=r"cut\.dcm: (DICOM declares a 1955×1841 image but the file .* ends before its pixel data|truncated pixel data)"
    ):
        read_dicom(cut)

