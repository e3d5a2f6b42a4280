"""Bundles exported from the session's tiny run, and helpers to copy, tamper with and scan them."""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import salad
from salad.manifest import read_manifest, sha256_file
from tests.conftest import use_fixture_tolerances

SAMPLE = Path(salad.__file__).parent / "sample"
SAMPLE_EVAL = SAMPLE / "eval"
SAMPLE_TRAIN = SAMPLE / "train" / "normal"


def _export(run: Path, out: Path, **options: object) -> Path:
    from salad.export import export_bundle

    return Path(export_bundle(run, out, **options))


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


@pytest.fixture(scope="session")
def calibrated_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """precision → a copy of the tiny bundle with that variant added by salad.calibration, on the shipped normals.

    Fails (never skips) while calibration is missing: a precision without a parity test is a gap, not a pass.
    """
    built: dict[str, Path] = {}

    def make(precision: str) -> Path:
        if precision == "fp32":
            return tiny_bundle
        if precision not in built:
            calibrate_bundle = getattr(importlib.import_module("salad.calibration"), "calibrate_bundle", None)
            if calibrate_bundle is None:
                pytest.fail(
                    f"salad.calibration.calibrate_bundle does not exist yet: the {precision} variant cannot be built, "
                    "so its parity is untested. Implement calibration (FP16 and INT8 variants).",
                    pytrace=False,
                )
            bundle = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("calibrated") / precision))
            use_fixture_tolerances(bundle, (precision,))  # a tiny model's int8 ΔAUC depends on the CPU
            calibrate_bundle(bundle, precision, data=SAMPLE_TRAIN)
            built[precision] = bundle
        return built[precision]

    return make


@pytest.fixture
def perturbed_bundle(tiny_bundle: Path, tmp_path: Path) -> Callable[[Callable[[np.ndarray], np.ndarray]], Path]:
    """edit → a copy of the tiny bundle whose first convolution weight is edit(weight), in encoder.onnx and model.onnx.

    The manifest's sha256 of both graphs is updated, so the bundle verifies and only parity can tell.
    """
    onnx = pytest.importorskip("onnx", reason="editing a graph needs onnx (salad-edge[train])")
    from onnx import numpy_helper

    def make(edit: Callable[[np.ndarray], np.ndarray]) -> Path:
        bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "perturbed"))
        manifest = read_manifest(bundle, verify=False)
        encoder = onnx.load(str(bundle / manifest.graphs["encoder"].file))
        name = next(n for n in encoder.graph.node if n.op_type == "Conv").input[1]
        original = numpy_helper.to_array(next(t for t in encoder.graph.initializer if t.name == name))
        edited = edit(original.copy())
        for key in ("encoder", "model"):  # model.onnx holds the encoder's weights under a prefixed name
            path = bundle / manifest.graphs[key].file
            proto = encoder if key == "encoder" else onnx.load(str(path))
            same = [t for t in proto.graph.initializer
                    if t.name.endswith(name) and np.array_equal(numpy_helper.to_array(t), original)]
            assert len(same) == 1, f"{path}: expected one initializer like {name!r}, found {[t.name for t in same]}"
            same[0].CopyFrom(numpy_helper.from_array(edited, same[0].name))
            onnx.save(proto, str(path))
            manifest.graphs[key].sha256 = sha256_file(path)
        manifest.write(bundle)
        return bundle

    return make
