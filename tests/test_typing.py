"""The TensorRT / CUDA code paths cannot run without a GPU here, so they are type-checked instead."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_runtime_type_checks_against_tensorrt_and_cuda_stubs() -> None:
    mypy_api = pytest.importorskip("mypy.api", reason="mypy is not installed (pip install salad-edge[dev])")
    for dist in ("tensorrt-stubs", "cuda-bindings"):
        try:
            metadata.distribution(dist)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{dist} is missing, so mypy would skip the TensorRT/CUDA calls: run scripts/setup.sh")
    # The whole package, so a stage's change that breaks a type another stage relies on fails here too.
    packages = [str(REPO / p) for p in ("salad", "train", "export", "calibration", "runtime", "serve", "similarity", "onsite", "cli")]
    stdout, stderr, status = mypy_api.run(["--config-file", str(REPO / "pyproject.toml"), *packages])
    assert status == 0, stdout + stderr
