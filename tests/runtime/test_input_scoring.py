"""`salad score` and Scorer on hostile inputs: every bad path is its own error row, good films are still scored, JSON stays JSON."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from click.testing import CliRunner

from salad.imageio import MAX_FILE_BYTES
from salad.onsite.score import score_command
from salad.runtime import Scorer

from ..core.test_input_robustness import dicom_data, patched_dicom
from .test_cli import salad_score


def strict_json(text: str) -> dict[str, object]:
    """json.loads that refuses NaN/Infinity, as a strict consumer (JavaScript, jq, Go) does."""
    def refuse(name: str) -> float:
        raise ValueError(f"non-standard JSON constant {name}")

    data: dict[str, object] = json.loads(text, parse_constant=refuse)
    return data


def test_bad_inputs_are_error_rows_and_the_good_films_are_scored(tiny_bundle: Path, film_folder: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bad = {
            "nan": patched_dicom(tmp_path / "nan.dcm", "RescaleSlope", "NaN   "),
            "window": patched_dicom(tmp_path / "window.dcm", "WindowCenter", "abcde "),
            "slope": patched_dicom(tmp_path / "slope.dcm", "RescaleSlope", "xyzzy "),
        }
    huge = tmp_path / "huge.dcm"
    with open(huge, "wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)
    loop = tmp_path / "loop.dcm"
    loop.symlink_to(loop)
    empty = tmp_path / "empty"
    empty.mkdir()
    bad.update(huge=huge, loop=loop, empty=empty, missing=tmp_path / "missing.png", mr=dicom_data("MR_small.dcm"))
    out = tmp_path / "scores.json"
    # bad paths first: nothing before the good films may stop the call
    proc = salad_score(tiny_bundle, *bad.values(), film_folder, "--json", out)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    rows = strict_json(out.read_text())["results"]
    assert isinstance(rows, list) and len(rows) == len(bad) + 6
    errors = {r["path"]: r["error"] for r in rows if "error" in r}
    assert set(errors) == {str(p) for p in bad.values()}
    for key, fragment in {
        "nan": "RescaleSlope = 'NaN' is not a finite number", "window": "WindowCenter = 'abcde' is not a finite number",
        "slope": "RescaleSlope = 'xyzzy' is not a finite number", "huge": "1,073,741,825 bytes is larger than",
        "loop": "Too many levels of symbolic links", "empty": "folder contains no images",
        "missing": "no such file or folder", "mr": "DICOM modality 'MR' is not a projection radiograph",
    }.items():
        assert errors[str(bad[key])].startswith(str(bad[key])) and fragment in errors[str(bad[key])], (key, errors[str(bad[key])])
    scored = [r for r in rows if "error" not in r]
    assert [r["path"] for r in scored] == [str(p) for p in sorted(film_folder.rglob("*.jpeg"))]
    assert all(r["label"] in (0, 1) for r in scored)
    assert len([line for line in proc.stderr.splitlines() if line.startswith("error:")]) == len(bad)


def test_non_finite_runtime_output_is_an_error_row_never_a_label(
    perturbed_bundle: Callable[[Callable[[np.ndarray], np.ndarray]], Path], film_folder: Path
) -> None:
    bundle = perturbed_bundle(lambda w: np.full_like(w, np.nan))  # a broken graph: the runtime itself returns NaN
    files = sorted(film_folder.rglob("*.jpeg"))
    with Scorer.from_bundle(bundle) as scorer:
        results = scorer.score(files, on_error="record")
    assert [r.label for r in results] == [None] * len(files)
    assert all(r.error and "returned non-finite" in r.error and r.error.startswith(str(f)) for r, f in zip(results, files, strict=True))
    result = CliRunner().invoke(score_command, [str(bundle), str(film_folder), "--json", "-"])
    assert result.exit_code == 1
    rows = strict_json(result.stdout)["results"]
    assert isinstance(rows, list) and all(set(r) == {"path", "error"} for r in rows)


def test_jpeg_lossless_cr_is_scored(tiny_bundle: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(dicom_data("JPEG-LL.dcm"))
    ds.Modality = "CR"
    ds.save_as(tmp_path / "jpll.dcm", enforce_file_format=True)
    with Scorer.from_bundle(tiny_bundle) as scorer:
        [result] = scorer.score([tmp_path / "jpll.dcm"], on_error="record")
    assert result.ok and result.label in (0, 1) and np.isfinite(result.score), result.error
    assert os.path.basename(str(result.path)) == "jpll.dcm"
