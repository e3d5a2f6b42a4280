"""Calibration fixtures: a bundle of the session's tiny run, and one copy of it with both variants added."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="calibration measures against the PyTorch reference (install salad-edge[train])")
pytest.importorskip("onnxruntime", reason="calibration needs onnxruntime")
pytest.importorskip("onnxconverter_common", reason="fp16 needs onnxconverter-common (install salad-edge[train])")

import salad  # noqa: E402
from tests.conftest import use_fixture_tolerances  # noqa: E402

SAMPLE = Path(salad.__file__).parent / "sample"
SAMPLE_TRAIN = SAMPLE / "train" / "normal"
SAMPLE_EVAL = SAMPLE / "eval"

#: Timed runs per latency figure in tests (the library default is 50): the numbers are not asserted on.
LATENCY_RUNS = 3


@dataclass
class Calibrated:
    """A bundle with the fp16 and int8 variants, and the reports calibration returned for them."""

    path: Path
    reports: dict  # precision → CalibrationReport


@pytest.fixture(scope="session")
def base_bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run exported as a standard bundle (64 px, bank as initializer, checkpoint included)."""
    from salad.export import export_bundle

    return Path(export_bundle(tiny_run, tmp_path_factory.mktemp("cal-bundles") / "tiny"))


@pytest.fixture
def bundle_copy(base_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny bundle that a test may calibrate or break."""
    return Path(shutil.copytree(base_bundle, tmp_path / "bundle"))


@pytest.fixture(scope="session")
def calibrated(base_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Calibrated:
    """fp16, then int8 (on the 200 shipped normals), added to one copy, both measured on the labelled sample.

    The copy carries the fixtures' tolerances (tests/conftest.py): a tiny model's int8 ΔAUC depends on the CPU.
    """
    from salad.calibration import calibrate_bundle

    path = use_fixture_tolerances(Path(shutil.copytree(base_bundle, tmp_path_factory.mktemp("calibrated") / "both")))
    reports = {
        "fp16": calibrate_bundle(path, "fp16", labelled=SAMPLE_EVAL, latency_runs=LATENCY_RUNS),
        "int8": calibrate_bundle(path, "int8", SAMPLE_TRAIN, labelled=SAMPLE_EVAL, latency_runs=LATENCY_RUNS),
    }
    return Calibrated(path, reports)
