"""`salad score`: files, folders and DICOM; per-file errors; a console without torch or onnx."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from salad.manifest import read_manifest
from salad.onsite.score import score_command
from salad.runtime import Scorer

#: Run `salad score` in a fresh interpreter, optionally with some top-level packages made unimportable.
_SCRIPT = """
import importlib.abc, sys
BLOCKED = {blocked!r}

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{{name}} is blocked: a console has no {{name}}", name=name)
        return None

sys.meta_path.insert(0, Blocker())
for name in list(sys.modules):
    if name.split(".")[0] in BLOCKED:
        del sys.modules[name]
{body}
"""


def run_python(body: str, blocked: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    code = _SCRIPT.format(blocked=set(blocked), body=body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def salad_score(*args: str | Path, blocked: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """`salad score ARGS` as a console would run it, in a subprocess."""
    body = (
        "from salad.onsite.score import score_command\n"
        f"score_command(args={[str(a) for a in args]!r}, prog_name='salad score')\n"
    )
    return run_python(body, blocked)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


# -- in process -----------------------------------------------------------------------------------


def test_score_a_folder_prints_a_table(tiny_bundle: Path, film_folder: Path) -> None:
    result = CliRunner().invoke(score_command, [str(tiny_bundle), str(film_folder)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    operating = read_manifest(tiny_bundle).threshold.score  # the label column says which output decides
    assert lines[0].split()[:5] == ["path", "score", "knn_angle", "label", f"({operating})"]
    files = sorted(film_folder.rglob("*.jpeg"))
    assert len(lines) == 1 + len(files)  # recursive: both class sub-folders
    with Scorer.from_bundle(tiny_bundle) as scorer:
        expected = scorer.score(files)
    for line, r in zip(lines[1:], expected, strict=True):
        path, score, knn, label, _ms = line.split()
        assert path == r.path and float(score) == pytest.approx(r.score, abs=1e-6)
        assert float(knn) == pytest.approx(r.knn_angle, abs=1e-6)
        assert label == ("abnormal" if r.label else "normal")


def test_json_output(tiny_bundle: Path, film_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "scores.json"
    result = CliRunner().invoke(score_command, [str(tiny_bundle), str(film_folder), "--batch", "4", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert f"→ {out}" in result.output
    data = json.loads(out.read_text())
    assert data["runtime"] == "onnxruntime" and data["precision"] == "fp32"
    assert len(data["results"]) == 6
    row = data["results"][0]
    assert set(row) == {"path", "score", "knn_angle", "label", "ms"}
    assert row["label"] in (0, 1) and 0.0 <= row["score"] <= 1.0 and row["ms"] > 0
    operating = data["threshold"]["score"]
    assert all((r["label"] == 1) == (r[operating] > data["threshold"]["value"]) for r in data["results"])


def test_json_to_stdout(tiny_bundle: Path, film_folder: Path) -> None:
    result = CliRunner().invoke(score_command, [str(tiny_bundle), str(film_folder), "--json", "-"])
    assert result.exit_code == 0
    assert len(json.loads(result.stdout)["results"]) == 6


def test_runtime_choices_come_from_the_registry(tiny_bundle: Path, film_folder: Path) -> None:
    result = CliRunner().invoke(score_command, [str(tiny_bundle), str(film_folder), "--runtime", "tflite"])
    assert result.exit_code == 2
    assert "'tflite' is not one of 'onnxruntime', 'openvino', 'tensorrt', 'torch'" in result.output


def test_score_is_registered_in_the_salad_group() -> None:
    import click

    from salad.cli import main

    # The group loads stage commands lazily; resolving the name must give the runtime's own command.
    assert main.get_command(click.Context(main), "score") is score_command


# -- DICOM (acceptance 2) -------------------------------------------------------------------------


def test_raw_and_jpeg2000_dicom_score_the_same(tiny_bundle: Path, dicom_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "dicom.json"
    result = CliRunner().invoke(score_command, [str(tiny_bundle), *map(str, dicom_files.values()), "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = {Path(r["path"]).name: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"RG1_UNCR.dcm", "RG1_J2KR.dcm"}
    assert abs(rows["RG1_UNCR.dcm"]["score"] - rows["RG1_J2KR.dcm"]["score"]) <= 1e-4
    assert abs(rows["RG1_UNCR.dcm"]["knn_angle"] - rows["RG1_J2KR.dcm"]["knn_angle"]) <= 1e-4
    assert rows["RG1_UNCR.dcm"]["label"] == rows["RG1_J2KR.dcm"]["label"]


def test_dicom_folder_without_suffixes(tiny_bundle: Path, dicom_files: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "study"
    folder.mkdir()
    shutil.copy(dicom_files["RG1_UNCR.dcm"], folder / "IMG0001")  # PACS exports often have no suffix
    result = CliRunner().invoke(score_command, [str(tiny_bundle), str(folder), "--json", "-"])
    assert result.exit_code == 0, result.output
    assert [Path(r["path"]).name for r in json.loads(result.stdout)["results"]] == ["IMG0001"]


# -- errors as a console sees them (acceptance 3), in a subprocess --------------------------------


def test_truncated_dicom_is_one_line_naming_the_file(tiny_bundle: Path, dicom_files: dict[str, Path], tmp_path: Path) -> None:
    data = dicom_files["RG1_UNCR.dcm"].read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) // 2])
    proc = salad_score(tiny_bundle, truncated)
    assert_one_line_error(proc, str(truncated), "truncated pixel data: expected 7,198,310 bytes")
    assert proc.returncode == 1


def test_non_image_file_is_one_line_naming_the_file(tiny_bundle: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not an x-ray\n")
    proc = salad_score(tiny_bundle, notes)
    assert_one_line_error(proc, str(notes), "not an image this toolkit reads")


def test_empty_folder_is_one_line_naming_it(tiny_bundle: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no films here")
    proc = salad_score(tiny_bundle, empty)
    assert_one_line_error(proc, str(empty), "folder contains no images")
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[1].split() == [str(empty), "-", "-", "FAILED", "-"]  # its own row in the table


def test_a_bad_file_does_not_stop_the_others(tiny_bundle: Path, film_folder: Path, tmp_path: Path) -> None:
    broken = film_folder / "normal" / "zz-truncated.jpeg"
    good = sorted((film_folder / "normal").glob("*.jpeg"))[0]
    broken.write_bytes(good.read_bytes()[:2000])
    out = tmp_path / "scores.json"
    proc = salad_score(tiny_bundle, film_folder, "--json", out)
    assert_one_line_error(proc, str(broken), "truncated JPEG")
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 7
    failed = [r for r in rows if "error" in r]
    assert len(failed) == 1 and failed[0]["path"] == str(broken) and "truncated JPEG" in failed[0]["error"]
    assert sum("score" in r for r in rows) == 6


def test_modified_bundle_is_refused_naming_the_file(bundle_copy: Path, film_folder: Path) -> None:
    """`salad score` verifies what it loads (the merged graph) every time; a modified one is refused, named."""
    with open(bundle_copy / "model.onnx", "ab") as fh:
        fh.write(b"\x00")
    proc = salad_score(bundle_copy, film_folder)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{bundle_copy / 'model.onnx'}: sha256 mismatch" in proc.stderr
    assert proc.stdout == ""


def test_not_a_bundle(tmp_path: Path, film_folder: Path) -> None:
    proc = salad_score(tmp_path, film_folder)
    assert_one_line_error(proc, f"{tmp_path}: not a bundle (no manifest.json)")


# -- a console without torch or onnx (acceptance 1) -----------------------------------------------


def test_the_blocker_really_blocks() -> None:
    proc = run_python("import torch", blocked=("torch", "onnx"))
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr
    proc = run_python("import onnx.checker", blocked=("torch", "onnx"))
    assert proc.returncode != 0 and "is blocked: a console has no onnx" in proc.stderr
    assert run_python("import onnxruntime", blocked=("torch", "onnx")).returncode == 0


def test_score_a_folder_without_torch_or_onnx(tiny_bundle: Path, film_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "console.json"
    body = (
        "from salad.onsite.score import score_command\n"
        f"try:\n    score_command(args=[{str(tiny_bundle)!r}, {str(film_folder)!r}, '--json', {str(out)!r}], prog_name='salad score')\n"
        "finally:\n"
        "    print('loaded:', sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'onnx', 'onnxruntime'}))\n"
    )
    proc = run_python(body, blocked=("torch", "onnx"))
    assert proc.returncode == 0, proc.stderr
    assert "loaded: ['onnxruntime']" in proc.stdout
    rows = json.loads(out.read_text())["results"]
    with Scorer.from_bundle(tiny_bundle) as scorer:  # same numbers as in this (torch-capable) process
        expected = scorer.score(sorted(film_folder.rglob("*.jpeg")))
    np.testing.assert_allclose([r["score"] for r in rows], [r.score for r in expected], atol=1e-6)


def test_torch_runtime_on_a_console_names_the_extra(tiny_bundle: Path, film_folder: Path) -> None:
    proc = salad_score(tiny_bundle, film_folder, "--runtime", "torch", blocked=("torch", "onnx"))
    assert_one_line_error(proc, "the torch runtime is unavailable", "pip install 'salad-edge[train]'")


def test_console_without_onnxruntime_names_the_extra(tiny_bundle: Path, film_folder: Path) -> None:
    proc = salad_score(tiny_bundle, film_folder, blocked=("torch", "onnx", "onnxruntime"))
    assert_one_line_error(proc, "onnxruntime is not installed", "pip install 'salad-edge[runtime]'")


# -- salad inspect / salad validate ---------------------------------------------------------------------


def test_inspect_shows_graphs_threshold_bank_and_tolerances(tiny_bundle: Path) -> None:
    from salad.cli import main

    m = read_manifest(tiny_bundle)
    text = CliRunner().invoke(main, ["inspect", str(tiny_bundle)])
    assert text.exit_code == 0, text.output
    assert "every file matches its sha256" in text.output and f"{m.threshold.score} > " in text.output
    assert f"bank: {m.bank.rows} rows" in text.output and "model.onnx" in text.output and "max_abs_score_diff=1e-05" in text.output
    raw = CliRunner().invoke(main, ["inspect", str(tiny_bundle), "--json"])
    info = json.loads(raw.output)
    assert info["schema"] == "salad-inspect/1" and info["precisions"] == m.precisions()
    assert info["threshold"]["value"] == m.threshold.value and set(info["graphs"]) == set(m.graphs)
    assert info["graphs"]["model"]["outputs"][1:] == [{"name": n, "dtype": "float32", "shape": ["batch"]} for n in ("score", "knn_angle")]
    n_val = m.threshold.validation.n_normal  # every validation normal calibrates the drift checks
    assert info["drift"] == {"score_films": n_val, "exposure_films": n_val, "style_attached": False}
    assert f"score ({n_val} validation normals), exposure ({n_val} validation normals), style off" in text.output


def test_inspect_and_validate_refuse_a_modified_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    from salad.cli import main

    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "b"))
    ok = CliRunner().invoke(main, ["validate", str(copy)])
    assert ok.exit_code == 0 and ok.output.strip().endswith(f"{copy}: valid"), ok.output
    with open(copy / "scorer.onnx", "ab") as fh:
        fh.write(b"\0")
    for command in (["inspect", str(copy)], ["validate", str(copy)]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1 and "scorer.onnx: sha256 mismatch" in result.output, result.output
    assert CliRunner().invoke(main, ["inspect", str(copy), "--no-verify"]).exit_code == 0
