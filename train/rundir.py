"""Run directories: the patient-wise validation split, the image lists, and what --force/--resume may touch.

Moved out of train/trainer.py unchanged (trainer.py re-exports every name)."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from salad.data import Sample
from salad.errors import ConfigError, SaladError


def split_by_patient(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out about `fraction` of the images, whole patients at a time (each image its own patient if unknown)."""
    from sklearn.model_selection import GroupShuffleSplit

    if fraction <= 0 or len(samples) < 10:
        return list(samples), []
    groups = [s.patient or str(s.path) for s in samples]
    splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    train_idx, val_idx = next(splitter.split(np.zeros(len(samples)), groups=groups))
    return [samples[i] for i in sorted(train_idx)], [samples[i] for i in sorted(val_idx)]


def write_list(path: Path, samples: Sequence[Sample]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "patient_id"])
        for s in samples:
            w.writerow([str(Path(s.path).resolve()), s.label, s.patient or ""])


def claim_run_dir(out: Path, resume: bool, force: bool, dry_run: bool = False) -> bool:
    """True if `out` holds a checkpoint to resume; an existing run is deleted under `force`, refused otherwise.

    dry_run only checks (a launcher does this before starting worker processes).
    """
    if (out / "checkpoint.pt").exists() and resume:
        return True
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory; choose another --out.")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise SaladError(f"{out}: run directory already exists. Pass --resume to continue it or --force to start again.")
        if not is_run_dir(out):
            raise SaladError(
                f"{out}: --force replaces only a run directory (one with {' or '.join(RUN_MARKERS)}), and this folder "
                "holds other files. Nothing was deleted; choose another --out or empty the folder yourself."
            )
        if not dry_run:
            shutil.rmtree(out)
    return False


#: Files that mark a folder as a run directory written by `salad train` (what --force may replace).
RUN_MARKERS = ("config.json", "checkpoint.pt")
#: Every file training writes into a run directory.
RUN_FILES = frozenset({
    "config.json", "checkpoint.pt", "checkpoint.pt.tmp", "metrics.jsonl", "train.csv", "val.csv", "val_scores.npz", "validation.json",
})


def is_run_dir(path: Path) -> bool:
    """True if `path` was written by `salad train`: a checkpoint, a run config, or nothing but training's own files."""
    names = {p.name for p in path.iterdir()}
    if "checkpoint.pt" in names:
        return True
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        if isinstance(config, dict) and "train" in config and "schema_version" in config:
            return True
    except (OSError, ValueError):
        pass
    return bool(names & set(RUN_MARKERS)) and names <= RUN_FILES
