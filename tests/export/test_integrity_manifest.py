"""Manifest integrity on real bundles: field types and ranges, paths confined to the bundle, the digest of the decision-making fields."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from salad.errors import BundleError
from salad.manifest import read_manifest


def _copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


def _edit(root: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Edit manifest.json's JSON as a person with a text editor would (no digest recomputed)."""
    path = root / "manifest.json"
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw, indent=2))


def test_an_edited_threshold_is_refused_naming_the_field_and_the_fix(bundle: Path, tmp_path: Path) -> None:
    root = _copy(bundle, tmp_path)
    _edit(root, lambda raw: raw["threshold"].__setitem__("value", raw["threshold"]["value"] * 0.5))
    with pytest.raises(BundleError, match=r"decision-making field\(s\) \['threshold'\] differ .* Re-export the bundle") as info:
        read_manifest(root, verify=False)
    assert "Manifest.write" in str(info.value)
    # The deliberate tool records a new digest: the same change made through it is accepted.
    manifest = read_manifest(bundle, verify=False)
    manifest.threshold = dataclasses.replace(manifest.threshold, value=manifest.threshold.value * 0.5)
    manifest.write(root)
    assert read_manifest(root, verify=True).threshold.value == manifest.threshold.value


def test_a_manifest_without_its_digest_is_refused(bundle: Path, tmp_path: Path) -> None:
    root = _copy(bundle, tmp_path)
    _edit(root, lambda raw: raw.pop("integrity"))
    with pytest.raises(BundleError, match=r"no integrity digest of the decision-making fields"):
        read_manifest(root, verify=False)


@pytest.mark.parametrize(
    ("field", "set_value", "message"),
    [
        (
            "threshold.value",
            lambda raw: raw["threshold"].__setitem__("value", True),
            r"threshold\.value: true \(bool\); expected a finite number",
        ),
        ("k", lambda raw: raw.__setitem__("k", "abc"), r"k: \"abc\" \(str\); expected an integer ≥ 1"),
        ("k", lambda raw: raw.__setitem__("k", 10_000), r"k: 10000 \(int\); expected ≤ bank\.rows \(200\)"),
        (
            "preprocessing.size",
            lambda raw: raw["preprocessing"].__setitem__("size", "64"),
            r"preprocessing\.size: \"64\" \(str\); expected an integer ≥ 32",
        ),
        ("bank.rows", lambda raw: raw["bank"].__setitem__("rows", -1), r"bank\.rows: -1 \(int\); expected an integer ≥ 1"),
        ("embedding_dim", lambda raw: raw.__setitem__("embedding_dim", 200.0), r"embedding_dim: 200\.0 \(float\); expected an integer"),
    ],
)
def test_field_types_and_ranges_are_checked_on_read(
    bundle: Path, tmp_path: Path, field: str, set_value: Callable[..., None], message: str
) -> None:
    root = _copy(bundle, tmp_path)
    _edit(root, set_value)
    with pytest.raises(BundleError, match=message) as info:
        read_manifest(root, verify=False)
    assert "wrong type or range" in str(info.value) and "Re-export" in str(info.value)


def test_a_graph_file_outside_the_bundle_is_never_loaded(bundle: Path, tmp_path: Path) -> None:
    root = _copy(bundle, tmp_path)
    shutil.copyfile(root / "model.onnx", tmp_path / "x.onnx")  # same bytes: the sha256 alone would accept it
    _edit(root, lambda raw: raw["graphs"]["model"].__setitem__("file", "../x.onnx"))
    with pytest.raises(BundleError, match=r"graphs\['model'\]\.file: '\.\./x\.onnx' leaves or does not name a file of the bundle"):
        read_manifest(root, verify=True)
    _edit(root, lambda raw: raw["graphs"]["model"].__setitem__("file", str(tmp_path / "x.onnx")))
    with pytest.raises(BundleError, match=r"graphs\['model'\]\.file: '/.*x\.onnx' is an absolute path"):
        read_manifest(root, verify=True)


def test_a_symlink_escaping_the_bundle_fails_verification(bundle: Path, tmp_path: Path) -> None:
    root = _copy(bundle, tmp_path)
    outside = tmp_path / "elsewhere.npz"
    shutil.move(root / "reference.npz", outside)
    os.symlink(outside, root / "reference.npz")  # the right bytes, but not the bundle's file
    with pytest.raises(BundleError, match=r"reference\.npz: resolves to .*elsewhere\.npz, outside the bundle"):
        read_manifest(root, verify=True)


def test_reference_and_bank_files_must_be_listed_with_a_sha256(bundle: Path, input_bundle: Path, tmp_path: Path) -> None:
    root = _copy(bundle, tmp_path)
    shutil.copyfile(root / "reference.npz", root / "other.npz")
    _edit(root, lambda raw: raw["reference"].__setitem__("file", "other.npz"))
    with pytest.raises(BundleError, match=r"reference\.file: \"other\.npz\" \(str\); expected a file listed in files"):
        read_manifest(root, verify=True)
    root2 = Path(shutil.copytree(input_bundle, tmp_path / "input"))
    shutil.copyfile(root2 / "bank.npy", root2 / "bank2.npy")
    _edit(root2, lambda raw: raw["bank"].__setitem__("file", "bank2.npy"))
    with pytest.raises(BundleError, match=r"bank\.file: \"bank2\.npy\" \(str\); expected a file listed in files"):
        read_manifest(root2, verify=False)


def test_export_triton_never_copies_external_data_from_outside(bundle: Path, tmp_path: Path) -> None:
    from salad.export.triton import export_triton

    root = _copy(bundle, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2\n")
    _edit(root, lambda raw: raw["graphs"]["scorer"].__setitem__("external_data", ["../secret.txt"]))
    with pytest.raises(BundleError, match=r"graphs\['scorer'\]\.external_data"):
        export_triton(root, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()
    assert not [p for p in tmp_path.rglob("secret.txt") if p != secret]


def test_verifying_only_the_files_a_graph_reads(bundle: Path, tmp_path: Path) -> None:
    root = _copy(bundle, tmp_path)
    with open(root / "encoder.onnx", "ab") as fh:
        fh.write(b"\0")
    manifest = read_manifest(root, verify=True, graphs=[("model", "fp32")])  # cold start: model.onnx only
    assert manifest.graph_files("model") == ["model.onnx"]
    with pytest.raises(BundleError, match=r"encoder\.onnx: sha256 mismatch"):
        read_manifest(root, verify=True)  # the default stays every file
    with pytest.raises(BundleError, match=r"encoder\.onnx: sha256 mismatch"):
        read_manifest(root, verify=True, graphs=[("encoder", "fp32")])
