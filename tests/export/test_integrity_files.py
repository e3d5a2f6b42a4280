"""Every file a reader opens is under the integrity digest, and the bank a scoring graph uses is the manifest's.

Swapping model.onnx (or the bank) and editing its checksum — by hand, or even through Manifest.write, which
records a new digest — must never score films with the wrong bank: `salad score` refuses, naming the file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from salad.errors import BundleError
from salad.manifest import read_manifest, sha256_file
from tests.conftest import SAMPLE_EVAL

SALAD = Path(sys.executable).parent / "salad"
FILMS = sorted((SAMPLE_EVAL / "normal").glob("*.jpeg"))[:3]


def _edit(root: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Edit manifest.json as a person with a text editor would (no digest recomputed)."""
    raw = json.loads((root / "manifest.json").read_text())
    change(raw)
    (root / "manifest.json").write_text(json.dumps(raw, indent=2))


def _other_bank(shape: tuple[int, ...], seed: int = 7) -> np.ndarray:
    """Unit rows of another bank, same shape: what a graph from another bundle carries."""
    rows = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def _score(bundle: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SALAD), "score", str(bundle), *map(str, FILMS)], capture_output=True, text=True, timeout=600)


def _refused(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert done.returncode == 1, f"scored with a swapped file (exit {done.returncode}):\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}"
    assert "Traceback" not in done.stderr and done.stdout.strip() == "", done.stdout + done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr
    return done.stderr


def _swap_graph_bank(root: Path) -> None:
    """model.onnx replaced by the same graph carrying another bank (as a graph from another bundle would)."""
    model = onnx.load(str(root / "model.onnx"))
    (bank_t,) = [t for t in model.graph.initializer if t.name == "bank_t"]
    other = _other_bank(tuple(numpy_helper.to_array(bank_t).T.shape)).T
    bank_t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(other), "bank_t"))
    onnx.save(model, str(root / "model.onnx"))


def test_a_swapped_graph_with_an_edited_checksum_is_refused_by_score(bundle: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(bundle, tmp_path / "b"))
    assert _score(root).returncode == 0
    _swap_graph_bank(root)
    _edit(root, lambda raw: raw["graphs"]["model"].__setitem__("sha256", sha256_file(root / "model.onnx")))
    _refused(_score(root), "manifest.json: the checksum entries graphs['model'] (model.onnx) differ", "Re-export")


def test_a_graph_whose_bank_is_not_the_manifests_is_refused_even_with_a_new_digest(bundle: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(bundle, tmp_path / "b"))
    _swap_graph_bank(root)
    manifest = read_manifest(root, verify=False)
    manifest.graphs["model"].sha256 = sha256_file(root / "model.onnx")
    manifest.write(root)  # the checksum and the digest now agree with the swapped file: only the bank check is left
    _refused(_score(root), f"{root / 'model.onnx'} (its bank initializer): holds a memory bank", "the manifest's bank is")


def test_a_swapped_bank_file_is_refused_by_hand_and_through_write(input_bundle: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(input_bundle, tmp_path / "b"))
    assert _score(root).returncode == 0
    np.save(root / "bank.npy", _other_bank(np.load(root / "bank.npy").shape))
    _edit(root, lambda raw: raw["files"].__setitem__("bank.npy", sha256_file(root / "bank.npy")))
    _refused(_score(root), "the checksum entries files['bank.npy'] differ")
    with pytest.raises(BundleError, match=r"files\['bank\.npy'\]"):
        read_manifest(root, verify=False)
    fixed = Path(shutil.copytree(input_bundle, tmp_path / "c"))
    np.save(fixed / "bank.npy", _other_bank(np.load(fixed / "bank.npy").shape))
    manifest = read_manifest(fixed, verify=False)
    manifest.files["bank.npy"] = sha256_file(fixed / "bank.npy")
    manifest.write(fixed)
    _refused(_score(fixed), f"{fixed / 'bank.npy'} (the bank model.onnx is fed): holds a memory bank")


def test_a_bank_in_external_data_is_checked_too(tiny_run: Path, tmp_path: Path) -> None:
    from salad.export import export_bundle

    root = export_bundle(tiny_run, tmp_path / "b", external_data_threshold=1000, slim=True, reference_films=8)
    manifest = read_manifest(root, verify=True)
    assert manifest.bank.external_data == "bank.data" and _score(root).returncode == 0
    _other_bank((manifest.bank.rows, manifest.embedding_dim)).T.astype("<f4").tofile(root / "bank.data")
    manifest.files["bank.data"] = sha256_file(root / "bank.data")
    manifest.write(root)
    _refused(_score(root), f"{root / 'model.onnx'} (its bank initializer, stored in bank.data): holds a memory bank")


def _exchange(graphs: dict[str, Any], a: str, b: str) -> None:
    for key in ("file", "sha256"):
        graphs[a][key], graphs[b][key] = graphs[b][key], graphs[a][key]


@pytest.mark.parametrize(
    ("entry", "change"),
    [
        ("graphs['encoder'] (encoder.onnx)", lambda raw: raw["graphs"]["encoder"].__setitem__("sha256", "0" * 64)),
        ("graphs['scorer'] (scorer.onnx)", lambda raw: raw["graphs"]["scorer"].__setitem__("sha256", "0" * 64)),
        ("files['reference.npz']", lambda raw: raw["files"].__setitem__("reference.npz", "0" * 64)),
        ("files['checkpoint.pt']", lambda raw: raw["files"].__setitem__("checkpoint.pt", "0" * 64)),
        # two graphs exchanging their files: every (file, sha256) pair still exists, the roles do not
        ("graphs['encoder'] (model.onnx), graphs['model'] (encoder.onnx)", lambda raw: _exchange(raw["graphs"], "encoder", "model")),
    ],
)
def test_every_checksum_a_reader_trusts_is_under_the_digest(
    bundle: Path, tmp_path: Path, entry: str, change: Callable[[dict[str, Any]], None],
) -> None:
    root = Path(shutil.copytree(bundle, tmp_path / "b"))
    _edit(root, change)
    with pytest.raises(BundleError, match=r"the checksum entries (.*) differ") as info:
        read_manifest(root, verify=False)
    assert f"the checksum entries {entry} differ" in str(info.value)
