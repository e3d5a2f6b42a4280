"""Labelled image lists from the three data inputs: a folder of normals, class sub-folders, a CSV.

Kept in the core (no torch) so training, evaluation, calibration, parity and the console CLI all
read `--data` the same way. Label 0 = normal, 1 = abnormal.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from salad.errors import DataError
from salad.imageio import is_image_path


@dataclass(frozen=True)
class Sample:
    """One film: where it is, its label (0 normal, 1 abnormal) and its patient (None if unknown)."""

    path: Path
    label: int
    patient: str | None = None


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and not p.name.startswith(".") and is_image_path(p))


def find_images(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively; an empty folder is an error naming it."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            imgs = _images_in(p, recursive=True)
            if not imgs:
                raise DataError(f"{p}: folder contains no images (looked recursively for PNG/JPEG/TIFF/DICOM).")
            found.extend(imgs)
        elif p.exists():
            found.append(p)
        else:
            raise DataError(f"{p}: no such file or folder.")
    return found


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
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ("path", "label") if c not in cols]
        if missing:
            raise DataError(f"{path}: CSV is missing column(s) {missing}; found {cols}. Expected path,label[,patient_id].")
        rows = list(reader)
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
