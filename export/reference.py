"""reference.npz: real preprocessed validation films with their PyTorch outputs, the bundle's parity oracle.

The choice is deterministic (same run → same files): up to half normal and half abnormal when the
validation list has both, evenly spaced through each label's name-sorted list, topped up from the
training list only when validation is too small. Paths are stored as file names only.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from salad.data import Sample, read_samples
from salad.errors import SaladError
from salad.preprocess import load_batch

if TYPE_CHECKING:
    from salad.train.evaluate import LoadedRun

REFERENCE_KEYS = ("image", "embedding", "score", "knn_angle", "label", "path")


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
    ordered = sorted(samples, key=lambda s: (s.path.name, str(s.path)))
    if n >= len(ordered):
        return ordered
    idx = np.unique(np.linspace(0, len(ordered) - 1, n).round().astype(int))
    return [ordered[i] for i in idx]


def _balanced(samples: list[Sample], n: int) -> list[Sample]:
    normal = [s for s in samples if s.label == 0]
    abnormal = [s for s in samples if s.label != 0]
    n_abn = min(len(abnormal), n // 2)
    n_norm = min(len(normal), n - n_abn)
    n_abn = min(len(abnormal), n - n_norm)  # give abnormals the slots normals could not fill
    return _spread(normal, n_norm) + _spread(abnormal, n_abn)


def select_reference(run: Path, n: int) -> tuple[list[Sample], dict[str, int]]:
    """The n reference films of a run and how many came from val.csv / train.csv."""
    if n < 1:
        raise SaladError(f"--reference-images {n}: expected at least 1 (32 by default).")
    val = _read_list(run / "val.csv")
    chosen = _balanced(val, n)
    from_val = len(chosen)
    if from_val < n:
        seen = {s.path for s in chosen}
        train = [s for s in _read_list(run / "train.csv") if s.path not in seen]
        chosen += _balanced(train, n - from_val)
    if len(chosen) < n:
        raise SaladError(
            f"{run}: --reference-images {n} asks for more films than the run lists ({from_val} in val.csv, "
            f"{len(chosen) - from_val} more in train.csv). Pass --reference-images {max(1, len(chosen))} or fewer."
        )
    return chosen, {"from_val": from_val, "from_train": len(chosen) - from_val}


def reference_outputs(loaded: LoadedRun, samples: list[Sample], batch: int = 64) -> dict[str, np.ndarray]:
    """Preprocessed images and the PyTorch embedding, score and knn_angle of each (the oracle's arrays)."""
    import torch
    from salad.train.models import EmbeddingNet

    from salad.scoring import score_torch

    images = load_batch([s.path for s in samples], loaded.preprocessing)
    net = EmbeddingNet(loaded.model).eval()
    with torch.no_grad():
        z = torch.cat([net(torch.from_numpy(images[i : i + batch])) for i in range(0, len(images), batch)])
        score, knn_angle = score_torch(z, loaded.bank, loaded.score_k)
    return {
        "image": images.astype(np.float32, copy=False),
        "embedding": z.numpy().astype(np.float32, copy=False),
        "score": score.numpy().astype(np.float32, copy=False),
        "knn_angle": knn_angle.numpy().astype(np.float32, copy=False),
        "label": np.array([s.label for s in samples], dtype=np.int64),
        "path": np.array([s.path.name for s in samples]),
    }


def write_reference(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Uncompressed .npz (loads with allow_pickle=False on any console)."""
    np.savez(path, **{k: arrays[k] for k in REFERENCE_KEYS})


def read_reference(path: Path) -> dict[str, np.ndarray]:
    """reference.npz as arrays, never unpickling; an error naming missing keys."""
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in REFERENCE_KEYS if k not in data.files]
        if missing:
            raise SaladError(f"{path}: missing arrays {missing}; expected {list(REFERENCE_KEYS)}. Re-export the bundle.")
        return {k: data[k] for k in REFERENCE_KEYS}
