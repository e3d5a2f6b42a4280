"""A damaged similarity estimator (its JSON, points or graph) is one typed line naming the file, never a traceback.

Each case damages a copy of the session's real tiny estimator the way a bad copy, a hand edit or another tool
would, keeping the recorded sha256 consistent where the damage would otherwise be caught by it, and runs
`salad choose-bundle --by style` on real films; the attached form is damaged inside a bundle and read back.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from salad.cli import main
from salad.errors import BundleError
from salad.onsite.attach import POINTS_FILE, Attached

from ..conftest import SAMPLE_TRAIN
from .conftest import NIH_NORMAL, films


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _edit(root: Path, change: Callable[[dict[str, Any]], None]) -> None:
    info = json.loads((root / "estimator.json").read_text())
    change(info)
    (root / "estimator.json").write_text(json.dumps(info))


def _points(root: Path, arrays: dict[str, np.ndarray]) -> None:
    """Replace points.npz and record its new sha256, as a tool that rewrote the file would."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    (root / "points.npz").write_bytes(buf.getvalue())
    _edit(root, lambda i: i["points"].__setitem__("sha256", _sha(root / "points.npz")))


def _graph(root: Path, data: bytes) -> None:
    (root / "estimator.onnx").write_bytes(data)
    _edit(root, lambda i: i["graph"].__setitem__("sha256", _sha(root / "estimator.onnx")))


def _pickled_points(root: Path) -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([{"k": 1}], dtype=object), allow_pickle=True)
    (root / "points.npz").write_bytes(buf.getvalue())
    _edit(root, lambda i: i["points"].__setitem__("sha256", _sha(root / "points.npz")))


#: name → (damage, the file the error names, what it says)
DAMAGE: dict[str, tuple[Callable[[Path], object], str, str]] = {
    "truncated json": (lambda r: (r / "estimator.json").write_bytes((r / "estimator.json").read_bytes()[:100]),
                       "estimator.json", "not valid JSON"),
    "garbled json": (lambda r: (r / "estimator.json").write_bytes(b"\x00\xff{{"), "estimator.json", "not valid JSON"),
    "graph entry is text": (lambda r: _edit(r, lambda i: i.__setitem__("graph", "estimator.onnx")),
                            "estimator.json", "graph is 'estimator.onnx'; expected {\"file\": NAME"),
    "points entry is a list": (lambda r: _edit(r, lambda i: i.__setitem__("points", [1])), "estimator.json", "points is [1]"),
    "missing key": (lambda r: _edit(r, lambda i: i.pop("latent_dim")), "estimator.json", "missing field 'latent_dim'"),
    "preprocessing size is text": (lambda r: _edit(r, lambda i: i["preprocessing"].__setitem__("size", "big")),
                                   "estimator.json", "preprocessing size 'big'; expected a whole number of pixels"),
    "preprocessing is text": (lambda r: _edit(r, lambda i: i.__setitem__("preprocessing", "x")),
                              "estimator.json", "preprocessing is 'x'; expected an object"),
    "preprocessing size not the graph's": (lambda r: _edit(r, lambda i: i["preprocessing"].__setitem__("size", 128)),
                                           "estimator.onnx", "expected input 'image' [n, 1, 128, 128]"),
    "latent_dim is text": (lambda r: _edit(r, lambda i: i.__setitem__("latent_dim", "two")), "estimator.json", "latent_dim is 'two'"),
    "graph file outside": (lambda r: _edit(r, lambda i: i["graph"].__setitem__("file", "../../etc/passwd")),
                           "estimator.json", "is not a file name inside the estimator"),
    "points of the wrong shape": (lambda r: _points(r, {"kermany": np.zeros((5, 3), np.float32), "nih": np.zeros((5, 3), np.float32)}),
                                  "points.npz", "points 'kermany' are float32 of shape (5, 3); expected real numbers of shape (n, 2)"),
    "NaN points": (lambda r: _points(r, {"kermany": np.full((5, 2), np.nan, np.float32), "nih": np.zeros((5, 2), np.float32)}),
                   "points.npz", "points 'kermany' hold 10 non-finite value(s)"),
    "points as text": (lambda r: _points(r, {"kermany": np.array([["a", "b"]]), "nih": np.zeros((5, 2), np.float32)}),
                       "points.npz", "points 'kermany' are <U1 of shape (1, 2)"),
    "points of a missing dataset": (lambda r: _points(r, {"kermany": np.zeros((5, 2), np.float32)}),
                                    "points.npz", "expected points for ['kermany', 'nih']"),
    "pickled points": (_pickled_points, "points.npz", "not a readable .npz of latent points"),
    "points file missing": (lambda r: (r / "points.npz").unlink(), "points.npz", "points is missing"),
    "graph file missing": (lambda r: (r / "estimator.onnx").unlink(), "estimator.onnx", "graph is missing"),
    "garbage graph": (lambda r: _graph(r, b"not an onnx graph"), "estimator.onnx", "ONNX Runtime cannot load the estimator graph"),
    "truncated graph": (lambda r: _graph(r, (r / "estimator.onnx").read_bytes()[:5000]),
                        "estimator.onnx", "ONNX Runtime cannot load the estimator graph"),
}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("target")
    for src in films(NIH_NORMAL, 6):
        shutil.copy(src, folder / src.name)
    return folder


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_estimator_is_one_typed_line_naming_the_file(case: str, tiny_estimator: Path, target: Path, tmp_path: Path) -> None:
    damage, name, says = DAMAGE[case]
    est = Path(shutil.copytree(tiny_estimator, tmp_path / "est"))
    damage(est)
    result = CliRunner().invoke(main, ["choose-bundle", "--by", "style", "--estimator", str(est), "--target", str(target),
                                       "--candidate", f"kermany={SAMPLE_TRAIN}", "--threads", "1"])
    assert result.exit_code == 1 and (result.exception is None or isinstance(result.exception, SystemExit)), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {est / name}: ") and says in lines[0], result.stderr


def test_an_intact_estimator_still_ranks(tiny_estimator: Path, target: Path) -> None:
    result = CliRunner().invoke(main, ["choose-bundle", "--by", "style", "--estimator", str(tiny_estimator), "--target", str(target),
                                       "--candidate", f"kermany={SAMPLE_TRAIN}", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "kermany" in result.stdout


def test_rank_refuses_a_target_dicom_whose_number_of_frames_is_text(tiny_estimator: Path, target: Path, tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    pytest.importorskip("data_store", reason="pydicom-data is not installed (pip install pydicom-data)")
    folder = Path(shutil.copytree(target, tmp_path / "target"))
    ds = pydicom.dcmread(str(get_testdata_file("RG1_UNCR.dcm")))
    ds[0x00280008] = pydicom.DataElement(0x00280008, "IS", "1")
    ds[0x00280008]._value = "x1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(folder / "frames.dcm", enforce_file_format=True)
        result = CliRunner().invoke(main, ["choose-bundle", "--by", "style", "--estimator", str(tiny_estimator), "--target", str(folder),
                                           "--candidate", f"kermany={SAMPLE_TRAIN}", "--threads", "1"])
    assert result.exit_code == 1 and (result.exception is None or isinstance(result.exception, SystemExit)), result.exception
    assert result.stderr.startswith(f"error: {folder / 'frames.dcm'}: DICOM NumberOfFrames = 'x1' is not a whole number")


def test_damaged_attached_points_are_a_bundle_error_naming_the_file(attached_bundle: Path) -> None:
    """Points rewritten with the wrong keys and the manifest's checksum updated to match (a tool that edits both)."""
    from salad.manifest import read_manifest

    buf = io.BytesIO()
    np.savez(buf, reference=np.zeros((4, 2), np.float32))
    (attached_bundle / POINTS_FILE).write_bytes(buf.getvalue())
    manifest = read_manifest(attached_bundle, verify=False)
    manifest.files[POINTS_FILE] = _sha(attached_bundle / POINTS_FILE)
    manifest.write(attached_bundle)
    with pytest.raises(BundleError, match=r"points\.npz: holds \['reference'\]; expected points for \['reference', 'held_out'\]"):
        Attached.from_bundle(attached_bundle)
