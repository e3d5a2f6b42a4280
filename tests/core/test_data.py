"""The three `--data` inputs and their refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from salad.data import find_images, read_samples, require_normals
from salad.errors import DataError

from ..conftest import SAMPLE_EVAL, SAMPLE_TRAIN


def test_flat_folder_is_all_normal() -> None:
    samples = read_samples(SAMPLE_TRAIN)
    assert len(samples) == 200 and {s.label for s in samples} == {0}


def test_class_folders_normal_any_case_is_zero_others_one(tmp_path: Path) -> None:
    for name, src in (("NORMAL", SAMPLE_EVAL / "normal"), ("Pneumonia", SAMPLE_EVAL / "pneumonia")):
        shutil.copytree(src, tmp_path / name)
    samples = read_samples(tmp_path)
    by_label = {lab: sum(1 for s in samples if s.label == lab) for lab in (0, 1)}
    assert by_label == {0: 40, 1: 40}
    assert all((s.label == 0) == (s.path.parent.name == "NORMAL") for s in samples)


def test_csv_manifest_paths_are_relative_to_the_csv(tmp_path: Path) -> None:
    files = sorted((SAMPLE_EVAL / "normal").iterdir())[:2] + sorted((SAMPLE_EVAL / "pneumonia").iterdir())[:1]
    (tmp_path / "imgs").mkdir()
    for f in files:
        shutil.copy(f, tmp_path / "imgs")
    csv = tmp_path / "list.csv"
    csv.write_text(
        "path,label,patient_id\n"
        f"imgs/{files[0].name},0,p1\nimgs/{files[1].name},0,p1\nimgs/{files[2].name},1,p2\n"
    )
    samples = read_samples(csv)
    assert [s.label for s in samples] == [0, 0, 1]
    assert [s.patient for s in samples] == ["p1", "p1", "p2"]
    assert all(s.path.is_file() for s in samples)


def test_csv_missing_column_names_what_was_found(tmp_path: Path) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("file,label\na.png,0\n")
    with pytest.raises(DataError, match=r"bad\.csv: CSV is missing column\(s\) \['path'\]; found \['file', 'label'\]"):
        read_samples(csv)


def test_csv_missing_files_are_listed(tmp_path: Path) -> None:
    csv = tmp_path / "gone.csv"
    csv.write_text("path,label\nnowhere/a.png,0\nnowhere/b.png,1\n")
    with pytest.raises(DataError, match=r"2 listed file\(s\) do not exist .*nowhere/a\.png"):
        read_samples(csv)


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        read_samples(tmp_path / "empty")
    with pytest.raises(DataError, match="folder contains no images"):
        find_images([tmp_path / "empty"])


def test_manifest_without_normals_is_refused(tmp_path: Path) -> None:
    shutil.copytree(SAMPLE_EVAL / "pneumonia", tmp_path / "pneumonia")
    with pytest.raises(DataError, match=r"no normal \(label 0\) images"):
        require_normals(read_samples(tmp_path), tmp_path)
