"""Bad inputs on the command line: each gets its own error row or one line, the other films are still scored.

Real files only: degenerate films written with OpenCV and pydicom (from a real pydicom-data CR), files made
unreadable with chmod, a DICOM whose NumberOfFrames is text, scored by the session's tiny bundle.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import stat
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from salad.cli import main

from ..core.test_degenerate_images import dicom_with_pixels, film_pixels, png, pydicom_data
from .conftest import SAMPLE_EVAL

#: The unprivileged account a root test drops to (root reads a chmod-000 file, so it would prove nothing).
NOBODY = 65534


def invoke(args: list[str]) -> tuple[int, str, str, BaseException | None]:
    """`salad ARGS` in this process: exit code, stdout, stderr, and an exception that escaped (a traceback)."""
    result = CliRunner().invoke(main, args)
    escaped = result.exception if result.exception is not None and not isinstance(result.exception, SystemExit) else None
    return result.exit_code, result.stdout, result.stderr, escaped


def invoke_unprivileged(args: list[str]) -> tuple[int, str, str, BaseException | None]:
    """`salad ARGS` as a user for whom chmod 000 means unreadable: this one, or (as root) a forked child run as nobody.

    The child cannot exec the interpreter (it may live in root's home), so it runs the command in-process after the
    parent imported everything the command needs (a first run as root) and returns what happened through a pipe.
    """
    if os.geteuid() != 0:
        return invoke(args)
    invoke(args)  # as root: imports every module the command uses, so the child needs no file it cannot read
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop every privilege, run, report, and leave without running the parent's cleanup
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            exit_code, out, err, escaped = invoke(args)
            payload = (exit_code, out, err, None if escaped is None else f"{type(escaped).__name__}: {escaped}")
            with os.fdopen(write_end, "wb") as fh:
                fh.write(pickle.dumps(payload))
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        data = fh.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and data, "the unprivileged child failed before reporting"
    exit_code, out, err, escaped = pickle.loads(data)
    return exit_code, out, err, None if escaped is None else RuntimeError(escaped)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder every account can enter (pytest's tmp_path is private to root when tests run as root)."""
    root = Path(tempfile.mkdtemp(prefix="salad-refusals-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        for path in [root, *root.rglob("*")]:
            if not path.is_symlink():
                path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(root)


def rows(out: str) -> dict[str, dict[str, Any]]:
    return {Path(r["path"]).name: r for r in json.loads(out)["results"]}


def good_films(folder: Path, n: int = 2) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(src, folder / src.name)) for src in sorted((SAMPLE_EVAL / "normal").glob("*.jpeg"))[:n]]


def test_degenerate_films_get_error_rows_and_the_others_labels(tiny_bundle: Path, tmp_path: Path) -> None:
    """1×1, 1×5000, a thumbnail, a strip, constant and nearly constant films (PNG and DICOM): a reason each, never a label."""
    good = good_films(tmp_path / "films")
    strip = cv2.resize(film_pixels(), (300, 64), interpolation=cv2.INTER_AREA)
    specks = np.full((512, 512), 128, np.uint8)
    specks[3, 3] = 255
    bad = {
        "dot.png": png(tmp_path / "dot.png", np.full((1, 1), 100, np.uint8)),
        "line.png": png(tmp_path / "line.png", (np.arange(5000) % 256).astype(np.uint8).reshape(1, 5000)),
        "thumb.png": png(tmp_path / "thumb.png", cv2.resize(film_pixels(), (48, 48), interpolation=cv2.INTER_AREA)),
        "strip.png": png(tmp_path / "strip.png", strip),
        "blank.png": png(tmp_path / "blank.png", np.full((512, 512), 128, np.uint8)),
        "specks.png": png(tmp_path / "specks.png", specks),
        "flat.dcm": dicom_with_pixels(tmp_path / "flat.dcm", np.full((600, 500), 812, np.uint16)),
    }
    why = {
        "dot.png": "1×1 pixels; a radiograph has at least 64 pixels", "line.png": "5000×1 pixels; a radiograph has at least 64",
        "thumb.png": "48×48 pixels; a radiograph has at least 64", "strip.png": "300×64 pixels, 4.7:1; a radiograph is at most 4:1",
        "blank.png": "every pixel has the value 0.501961 (a constant image", "specks.png": "nearly constant",
        "flat.dcm": "every pixel has the value 1 (a constant image",  # MONOCHROME1: the stretched 0 is inverted
    }
    code, out, err, escaped = invoke(["score", str(tiny_bundle), *map(str, bad.values()), *map(str, good), "--json", "-"])
    assert escaped is None and code == 1, err
    found = rows(out)
    for name, reason in why.items():
        assert "label" not in found[name] and reason in found[name]["error"], found[name]
        assert f"error: {bad[name]}: " in err
    assert all(found[p.name]["label"] in (0, 1) for p in good)


def test_an_unreadable_file_or_folder_is_its_own_row_and_the_others_are_scored(tiny_bundle: Path, open_dir: Path) -> None:
    bundle = Path(shutil.copytree(tiny_bundle, open_dir / "bundle"))
    good = good_films(open_dir / "films")
    locked_file = Path(shutil.copy(good[0], open_dir / "films" / "locked.jpeg"))
    locked_file.chmod(0)
    locked_dir = open_dir / "locked-folder"
    good_films(locked_dir, 1)
    locked_dir.chmod(0)
    code, out, err, escaped = invoke_unprivileged(["score", str(bundle), str(locked_file), *map(str, good), str(locked_dir), "--json", "-"])
    assert escaped is None and code == 1, err
    found = rows(out)
    assert "Permission denied" in found["locked.jpeg"]["error"] and "label" not in found["locked.jpeg"]
    assert "Permission denied" in found["locked-folder"]["error"] and "label" not in found["locked-folder"]
    assert all(found[p.name]["label"] in (0, 1) for p in good), found
    assert "Usage:" not in err and "Traceback" not in err


def test_an_unreadable_bundle_is_one_line_and_exit_1(tiny_bundle: Path, open_dir: Path) -> None:
    bundle = Path(shutil.copytree(tiny_bundle, open_dir / "bundle"))
    film = good_films(open_dir / "films", 1)[0]
    bundle.chmod(stat.S_IWUSR)
    code, _, err, escaped = invoke_unprivileged(["score", str(bundle), str(film)])
    assert escaped is None and code == 1, err
    assert err.startswith("error: ") and "Permission denied" in err and "Usage:" not in err


def test_choose_bundle_skips_a_dicom_whose_number_of_frames_is_text(tiny_bundle: Path, tmp_path: Path) -> None:
    target = tmp_path / "target"
    good_films(target, 3)
    ds = pydicom.dcmread(pydicom_data("RG1_UNCR.dcm"))
    ds[0x00280008] = pydicom.DataElement(0x00280008, "IS", "1")
    ds[0x00280008]._value = "x1"  # as a faulty modality writes it; pydicom keeps the text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(target / "frames.dcm", enforce_file_format=True)
        code, out, err, escaped = invoke(["choose-bundle", "--target", str(target), "--candidate", f"tiny={tiny_bundle}"])
    assert escaped is None and code == 0, err
    assert "tiny" in out
    assert f"{target / 'frames.dcm'}: DICOM NumberOfFrames = 'x1' is not a whole number" in out + err


def test_the_python_api_refuses_degenerate_arrays_by_the_same_rule(tiny_bundle: Path) -> None:
    """Scorer.score on arrays: a constant or 1-pixel-high array is an error result, a real film's array is labelled."""
    from salad.imageio import read_image
    from salad.runtime import Scorer

    film = read_image(sorted((SAMPLE_EVAL / "normal").glob("*.jpeg"))[0])
    with Scorer.from_bundle(tiny_bundle) as scorer:
        blank, line, real = scorer.score([np.full((100, 100), 0.5, np.float32), film[:1], film], on_error="record")
    assert blank.label is None and "array input: every pixel has the value 0.5 (a constant image" in str(blank.error)
    assert line.label is None and "array input: 224×1 pixels; a radiograph has at least 64" in str(line.error)
    assert real.ok and real.label in (0, 1)


def test_parity_and_evaluate_refuse_a_labelled_set_with_a_degenerate_film(tiny_bundle: Path, tiny_run: Path, tmp_path: Path) -> None:
    """Checks on labelled films stop with one line naming the film and why (a verdict on a set with a blank in it would mislead)."""
    labelled = tmp_path / "labelled"
    good_films(labelled / "normal", 2)
    (labelled / "pneumonia").mkdir()
    for src in sorted((SAMPLE_EVAL / "pneumonia").glob("*.jpeg"))[:2]:
        shutil.copy(src, labelled / "pneumonia" / src.name)
    dot = png(labelled / "normal" / "dot.png", np.full((1, 1), 100, np.uint8))
    for args in (["parity", str(tiny_bundle), "--runtime", "onnxruntime", "--labelled", str(labelled)],
                 ["evaluate", str(tiny_run), "--labelled", str(labelled)]):
        code, _, err, escaped = invoke(args)
        assert escaped is None and code == 1, (args, err)
        assert f"error: {dot}: 1×1 pixels; a radiograph has at least 64 pixels" in err, err
