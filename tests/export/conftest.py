"""Export fixtures: the default bundle of the session's tiny run, and run directories altered on purpose."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch", reason="export needs torch (install salad-edge[train])")
pytest.importorskip("onnxruntime", reason="export validation needs onnxruntime")

from tests.export.helpers import clone_run  # noqa: E402


@pytest.fixture(scope="session")
def bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default export of the tiny run (bank as initializer, checkpoint included, 32 reference films)."""
    from salad.export import export_bundle

    return export_bundle(tiny_run, tmp_path_factory.mktemp("bundles") / "default")


@pytest.fixture(scope="session")
def input_bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """--bank-as-input --slim, threshold at sensitivity 0.9, 20 reference films."""
    from salad.export import export_bundle

    return export_bundle(
        tiny_run, tmp_path_factory.mktemp("bundles") / "input", bank_as_input=True, slim=True,
        operating_point="sensitivity:0.9", reference_films=20,
    )


@pytest.fixture
def make_run(tiny_run: Path, tmp_path: Path) -> Callable[..., Path]:
    """clone_run on the session's tiny run into this test's tmp_path."""
    counter = iter(range(1000))

    def make(**changes: Any) -> Path:
        return clone_run(tiny_run, tmp_path / f"run{next(counter)}", **changes)

    return make
