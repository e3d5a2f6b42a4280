"""Labelled image lists from the three data inputs: a folder of normals, class sub-folders, a CSV.

Kept in the core (no torch) so training, evaluation, calibration, parity and the console CLI all
read `--data` the same way. Label 0 = normal, 1 = abnormal.
"""

from __future__ import annotations

import csv
import hashlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from salad.errors import DataError
from salad.imageio import is_image_path

T = TypeVar("T")


@dataclass(frozen=True)
class Sample:
    """One film: where it is, its label (0 normal, 1 abnormal) and its patient (None if unknown)."""

    path: Path
    label: int
    patient: str | None = None


@dataclass(frozen=True)
class Unreadable:
    """A path given or found that cannot be scored (missing, empty folder, unreadable folder, symlink loop) and why."""

    path: Path
    error: DataError


def _unreadable(path: Path, why: str) -> Unreadable:
    return Unreadable(path, DataError(f"{path}: {why}"))


def _entry(path: Path) -> Path | Unreadable | None:
    """One directory entry: an image file, an Unreadable (dangling link, symlink loop, no access), or None to ignore."""
    try:
        info = os.stat(path)  # follows links: ELOOP for a loop, ENOENT for a dangling link
    except OSError as exc:
        return _unreadable(path, f"cannot open ({exc.strerror or exc}); a broken or looping link, or no permission.")
    if not stat.S_ISREG(info.st_mode):
        return None
    return path if is_image_path(path) else None


def _walk(folder: Path, recursive: bool) -> tuple[list[Path], list[Unreadable]]:
    """Image files under `folder` and every folder or entry that could not be read (never skipped silently).

    os.walk follows symlinked folders; a folder reached twice (a symlink loop) is reported once and
    not descended again, and os.walk's onerror reports folders whose listing fails.
    """
    files: list[Path] = []
    problems: list[Unreadable] = []

    def listing_failed(exc: OSError) -> None:
        problems.append(_unreadable(Path(exc.filename or folder), f"cannot list this folder ({exc.strerror or exc})."))

    seen: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(folder, onerror=listing_failed, followlinks=True):
        try:
            info = os.stat(dirpath)
        except OSError as exc:
            problems.append(_unreadable(Path(dirpath), f"cannot open this folder ({exc.strerror or exc})."))
            dirnames.clear()
            continue
        key = (info.st_dev, info.st_ino)
        if key in seen:
            problems.append(_unreadable(Path(dirpath), f"symlink loop: this folder is {seen[key]} again; not searched twice."))
            dirnames.clear()
            continue
        seen[key] = dirpath
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if not recursive:
            dirnames.clear()
        for name in filenames:
            if name.startswith("."):
                continue
            found = _entry(Path(dirpath) / name)
            if isinstance(found, Unreadable):
                problems.append(found)
            elif found is not None:
                files.append(found)
    return sorted(files), problems


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    """Images in a folder for training and evaluation: any unreadable folder or link is an error, not a gap."""
    files, problems = _walk(folder, recursive)
    if problems:
        shown = "; ".join(str(p.error) for p in problems[:3]) + (f" and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise DataError(f"{folder}: {len(problems)} path(s) could not be read, so the image list would be incomplete: {shown}")
    return files


def scan_images(paths: Sequence[str | Path]) -> list[Path | Unreadable]:
    """Files as given and folders searched recursively, in order; what cannot be used is an Unreadable entry.

    Nothing here raises for one bad path: a missing path, an empty or unreadable folder and a
    symlink loop each become one Unreadable, so `salad score` still scores every good file.
    """
    found: list[Path | Unreadable] = []
    for raw in paths:
        p = Path(raw)
        try:
            info = os.stat(p)
        except FileNotFoundError:
            found.append(_unreadable(p, "no such file or folder."))
            continue
        except OSError as exc:
            found.append(_unreadable(p, f"cannot open ({exc.strerror or exc}); a looping link, or no permission."))
            continue
        if not stat.S_ISDIR(info.st_mode):
            found.append(p)
            continue
        files, problems = _walk(p, recursive=True)
        found.extend(files)
        found.extend(problems)
        if not files and not problems:
            found.append(_unreadable(p, "folder contains no images (looked recursively for PNG/JPEG/TIFF/DICOM)."))
    return found


def find_images(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively; the first missing, empty or unreadable path is a DataError."""
    found = scan_images(paths)
    for item in found:
        if isinstance(item, Unreadable):
            raise item.error
    return [p for p in found if isinstance(p, Path)]


def read_samples(data: str | Path) -> list[Sample]:
    """Read `--data`: a folder of images (all normal), a folder of class folders, or a CSV manifest.

    Class folders: a folder named `normal` (any case) is label 0, every other folder label 1.
    CSV: columns `path,label[,patient_id]`, paths relative to the CSV file.
    """
    src = Path(data)
    if not src.exists():
        raise DataError(f"{src}: no such file or folder. Expected a folder of images or a CSV manifest.")
    if src.is_file():
        if src.suffix.lower() != ".csv":
            raise DataError(f"{src}: expected a folder or a .csv manifest (path,label[,patient_id]).")
        return _read_csv(src)
    direct = _images_in(src, recursive=False)
    subdirs = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if direct:
        return [Sample(p, 0) for p in direct]
    samples: list[Sample] = []
    for sub in subdirs:
        label = 0 if sub.name.lower() == "normal" else 1
        samples.extend(Sample(p, label) for p in _images_in(sub, recursive=True))
    if not samples:
        raise DataError(
            f"{src}: no images found. Expected images directly in the folder, class sub-folders "
            "(normal/, pneumonia/, …) or a CSV manifest."
        )
    return samples


def _read_csv(path: Path) -> list[Sample]:
    # utf-8-sig: Excel writes "CSV UTF-8" with a byte-order mark that would otherwise become part of "path".
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in ("path", "label") if c not in cols]
            if missing:
                raise DataError(f"{path}: CSV is missing column(s) {missing}; found {cols}. Expected path,label[,patient_id].")
            reader.fieldnames = cols  # " label" and "label" are the same column
            rows = list(reader)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r} at offset {exc.start}); "
            "expected a UTF-8 CSV. Re-save it as UTF-8 (Excel: 'CSV UTF-8'; iconv -f latin1 -t utf-8)."
        ) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the CSV ({exc.strerror or exc}).") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc}).") from None
    if not rows:
        raise DataError(f"{path}: CSV manifest has no rows.")
    samples, absent = [], []
    for n, row in enumerate(rows, start=2):
        rel = (row.get("path") or "").strip()
        try:
            label = int(str(row.get("label", "")).strip())
        except ValueError:
            raise DataError(f"{path}:{n}: label {row.get('label')!r} is not 0 or 1.") from None
        if label not in (0, 1):
            raise DataError(f"{path}:{n}: label {label} is not 0 (normal) or 1 (abnormal).")
        p = (path.parent / rel).resolve() if not Path(rel).is_absolute() else Path(rel)
        if not p.is_file():
            absent.append(rel)
        patient = (row.get("patient_id") or "").strip() or None
        samples.append(Sample(p, label, patient))
    if absent:
        shown = ", ".join(absent[:3]) + (f" and {len(absent) - 3} more" if len(absent) > 3 else "")
        raise DataError(f"{path}: {len(absent)} listed file(s) do not exist (paths are relative to the CSV): {shown}.")
    return samples


def require_normals(samples: Sequence[Sample], source: str | Path) -> list[Sample]:
    """The label-0 samples; an error naming the source if there are none."""
    normals = [s for s in samples if s.label == 0]
    if not normals:
        raise DataError(f"{source}: no normal (label 0) images; SALAD trains its memory bank on normal films.")
    return normals


def list_hash(samples: Sequence[Sample] | Sequence[Path]) -> str:
    """sha256 of the sorted file names: identifies an image list without storing absolute paths."""
    names = sorted((s.path if isinstance(s, Sample) else Path(s)).name for s in samples)
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def evenly_spaced(items: Sequence[T], n: int) -> list[T]:
    """n items evenly spaced through `items` in their order (all of them when n ≥ len): deterministic, covers the range."""
    if n >= len(items):
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]


def film_paths(data: str | Path) -> list[Path]:
    """Every film of a folder (searched recursively, any labels) or a CSV manifest; a DataError if there is none."""
    samples = read_samples(Path(data))
    if not samples:
        raise DataError(f"{data}: no films found; expected a folder of images, class folders or a CSV path,label.")
    return [s.path for s in samples]
