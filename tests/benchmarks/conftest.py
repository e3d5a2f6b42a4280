"""A bundle of the session's tiny run, exported once for the benchmark smoke tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def bench_bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The standard bundle of the tiny run (bank as initializer, checkpoint included: torch is the baseline)."""
    export = pytest.importorskip("salad.export", reason="salad.export needs the train extra")
    return Path(export.export_bundle(tiny_run, tmp_path_factory.mktemp("bench") / "tiny"))
