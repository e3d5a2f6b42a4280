"""A tiny similarity estimator fitted on real films (shipped Kermany normals vs NIH normals), and a bundle to attach to."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import HAS_TORCH, REPO, SAMPLE_TRAIN

NIH_NORMAL = REPO.parent / "shared" / "data" / "nih-cxr" / "images" / "normal"


def films(folder: Path, n: int) -> list[Path]:
    """The first n films of a folder (sorted, so every run uses the same ones)."""
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))[:n]
    assert len(found) == n, f"{folder}: expected at least {n} films"
    return found


@pytest.fixture(scope="session")
def known_films() -> dict[str, np.ndarray]:
    """Two real sites at the estimator's input: 40 pediatric Kermany normals and 40 adult NIH normals."""
    from salad.similarity.fit import load_films

    return {"kermany": load_films(films(SAMPLE_TRAIN, 40)), "nih": load_films(films(NIH_NORMAL, 40))}


@pytest.fixture(scope="session")
def tiny_estimator(known_films: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An estimator fitted for a few steps (seconds) on the two real sites."""
    if not HAS_TORCH:
        pytest.skip("torch is not installed (install salad-edge[train])")
    from salad.similarity.fit import FitConfig, fit_estimator

    out = tmp_path_factory.mktemp("estimators") / "tiny"
    fit_estimator(known_films, out, FitConfig(steps=6, batch=4, max_films=40), threads=1, progress=False)
    return out


@pytest.fixture(scope="session")
def similarity_bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run exported as a bundle (never modified: tests attach to copies)."""
    from salad.export import export_bundle

    return Path(export_bundle(tiny_run, tmp_path_factory.mktemp("bundles") / "similarity"))


@pytest.fixture
def bundle_copy(similarity_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(similarity_bundle, tmp_path / "bundle"))


@pytest.fixture
def attached_bundle(tiny_estimator: Path, bundle_copy: Path) -> Path:
    """A copy of the bundle with the tiny estimator attached, from the 200 shipped training normals."""
    from salad.onsite.attach import attach

    attach(tiny_estimator, bundle_copy, SAMPLE_TRAIN, threads=1)
    return bundle_copy


