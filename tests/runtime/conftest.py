"""Bundles exported from the session's tiny run, and helpers to copy, tamper with and scan them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import salad

SAMPLE_EVAL = Path(salad.__file__).parent / "sample" / "eval"


def _export(run: Path, out: Path, **options: object) -> Path:
    export = pytest.importorskip("salad.export", reason="salad.export is not available")
    if not hasattr(export, "export_bundle"):
        pytest.skip("salad.export.export_bundle does not exist yet (issue #3)")
    return Path(export.export_bundle(run, out, **options))


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The standard bundle of the tiny run (bank as initializer, checkpoint included)."""
    return _export(tiny_run, tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture(scope="session")
def slim_bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run exported with --slim: no checkpoint.pt, so no torch reference."""
    return _export(tiny_run, tmp_path_factory.mktemp("bundles") / "slim", slim=True)


@pytest.fixture(scope="session")
def bank_input_bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bank-as-input form: graphs take "bank" [N, 200], the bank is bank.npy."""
    return _export(tiny_run, tmp_path_factory.mktemp("bundles") / "bank-input", bank_as_input=True)


@pytest.fixture(scope="session")
def reference(tiny_bundle: Path) -> dict[str, np.ndarray]:
    with np.load(tiny_bundle / "reference.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny bundle that a test may modify."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


@pytest.fixture
def film_folder(tmp_path: Path) -> Path:
    """A folder (with a sub-folder) of six real films: three normal, three pneumonia."""
    root = tmp_path / "films"
    for cls in ("normal", "pneumonia"):
        (root / cls).mkdir(parents=True)
        for src in sorted((SAMPLE_EVAL / cls).glob("*.jpeg"))[:3]:
            shutil.copy(src, root / cls / src.name)
    return root


@pytest.fixture(scope="session")
def external_bank_bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bank stored as ONNX external data (bank.data), as export does for banks near 2 GiB."""
    return _export(tiny_run, tmp_path_factory.mktemp("bundles") / "external", external_data_threshold=1)
