"""Shared fixtures: real X-rays shipped in salad/sample and a tiny run trained on them once per session."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

import salad

SAMPLE = Path(salad.__file__).parent / "sample"
SAMPLE_TRAIN = SAMPLE / "train" / "normal"
SAMPLE_EVAL = SAMPLE / "eval"
REPO = Path(__file__).resolve().parents[1]
KERMANY = REPO.parent / "shared" / "data" / "kermany-cxr"

HAS_TORCH = importlib.util.find_spec("torch") is not None


def tiny_config(**overrides):  # type: ignore[no-untyped-def]
    """A CPU-second-sized SALAD config (64 px, width 0.125, 3 epochs) for tests."""
    from salad.train.trainer import CPU

    base = dataclasses.replace(
        CPU, size=64, width=0.125, pretrain_epochs=1, rounds=2, round_epochs=1, batch_size=16, score_k=20, threads=2
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture(scope="session")
def sample_train() -> Path:
    return SAMPLE_TRAIN


@pytest.fixture(scope="session")
def sample_eval() -> Path:
    return SAMPLE_EVAL


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) SALAD run on 200 shipped normal films, validated on the labelled sample."""
    if not HAS_TORCH:
        pytest.skip("torch is not installed (install salad-edge[train])")
    from salad.train.trainer import train_run

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train_run(SAMPLE_TRAIN, out, tiny_config(), val=SAMPLE_EVAL)
    return out


@pytest.fixture(scope="session")
def dicom_files() -> dict[str, Path]:
    """Real CR chest radiographs from the pydicom-data package (raw and lossless JPEG 2000)."""
    pytest.importorskip("data_store", reason="pydicom-data is not installed (pip install pydicom-data)")
    from pydicom.data import get_testdata_file

    return {name: Path(get_testdata_file(name)) for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm")}
