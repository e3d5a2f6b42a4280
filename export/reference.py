"""reference.npz: real preprocessed validation films with their PyTorch outputs, the bundle's parity oracle.

The choice is deterministic (same run → same files): up to half normal and half abnormal when the
validation list has both, evenly spaced through each label's name-sorted list. Paths are stored as
file names only. Reading it back needs numpy only (a console validates without torch).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from salad.bundle import REFERENCE_KEYS
from salad.data import Sample, evenly_spaced, read_samples
from salad.errors import ConfigError
from salad.preprocess import load_batch

if TYPE_CHECKING:
    from salad.train.evaluate import LoadedRun


def _read_list(path: Path) -> list[Sample]:
    """A run's train.csv / val.csv; an absent or header-only list is empty."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        if sum(1 for _ in csv.reader(fh)) <= 1:
            return []
    return read_samples(path)


def _spread(samples: list[Sample], n: int) -> list[Sample]:
    """n samples evenly spaced through the name-sorted list (deterministic, covers the whole range)."""
    return evenly_spaced(sorted(samples, key=lambda s: (s.path.name, str(s.path))), n)


def _balanced(samples: list[Sample], n: int) -> list[Sample]:
    normal = [s for s in samples if s.label == 0]
    abnormal = [s for s in samples if s.label != 0]
    n_abn = min(len(abnormal), n // 2)
    n_norm = min(len(normal), n - n_abn)
    n_abn = min(len(abnormal), n - n_norm)  # give abnormals the slots normals could not fill
    return _spread(normal, n_norm) + _spread(abnormal, n_abn)


def select_reference(run: Path, n: int) -> list[Sample]:
    """The n reference films of a run, all from its val.csv.

    Never training films: with a refreshed bank each one is its own bank row at cos = 1, where float32
    arccos cannot resolve angles (~4e-4 rad), so its score would differ between runtimes by noise alone.
    """
    if n < 1:
        raise ConfigError(f"--reference-films {n}: expected at least 1 (32 by default).")
    val = _read_list(run / "val.csv")
    if len(val) < n:
        fix = f"Pass --reference-films {len(val)}" if val else "Retrain with validation images (--val)"
        raise ConfigError(
            f"{run / 'val.csv'}: --reference-films {n} asks for more validation films than the run has ({len(val)}). "
            f"{fix}; training films cannot serve, they sit at cos = 1 to their own bank rows."
        )
    return _balanced(val, n)


def reference_outputs(loaded: LoadedRun, samples: list[Sample], batch: int = 64) -> dict[str, np.ndarray]:
    """Preprocessed images and the PyTorch embedding, score and knn_angle of each (the oracle's arrays)."""
    import torch

    from salad.scoring import KNN_ANGLE, SCORE, score_torch
    from salad.train.models import EmbeddingNet

    images = load_batch([s.path for s in samples], loaded.preprocessing)
    net = EmbeddingNet(loaded.model).eval()
    with torch.no_grad():
        z = torch.cat([net(torch.from_numpy(images[i : i + batch])) for i in range(0, len(images), batch)])
        score, knn_angle = score_torch(z, loaded.bank, loaded.score_k)
    return {
        "image": images.astype(np.float32, copy=False),
        "embedding": z.numpy().astype(np.float32, copy=False),
        SCORE: score.numpy().astype(np.float32, copy=False),
        KNN_ANGLE: knn_angle.numpy().astype(np.float32, copy=False),
        "label": np.array([s.label for s in samples], dtype=np.int64),
        "path": np.array([s.path.name for s in samples]),
    }


def write_reference(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Uncompressed .npz (loads with allow_pickle=False on any console)."""
    kept: dict[str, Any] = {k: arrays[k] for k in REFERENCE_KEYS}
    np.savez(path, **kept)
