"""Helpers for the export tests: synthetic unit banks and run directories altered on purpose."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

RUN_FILES = ("config.json", "checkpoint.pt", "train.csv", "val.csv", "val_scores.npz")


def unit_rows(n: int, dim: int = 200, seed: int = 0) -> np.ndarray:
    """n random unit vectors (float32), standing in for a large trained memory bank."""
    rows = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def clone_run(
    src: Path, dst: Path, *, bank: np.ndarray | None = None, bank_labels: np.ndarray | None = None,
    score_k: int | None = None, schema_version: int | None = None, rescore: bool = True, score: str | None = None,
) -> Path:
    """Copy run `src` to `dst` with a replaced bank / K / operating score / config schema, as a run with those values would be.

    rescore: rewrite val_scores.npz for the new bank with salad.train.evaluate (the run's own code), as
    training would have; False leaves the old file (a stale run).
    """
    import torch

    from salad.data import read_samples
    from salad.train.evaluate import load_run, score_samples

    dst.mkdir(parents=True)
    for name in RUN_FILES:
        shutil.copyfile(src / name, dst / name)
    state = torch.load(dst / "checkpoint.pt", map_location="cpu", weights_only=True)
    config = json.loads((dst / "config.json").read_text())
    if bank is not None:
        state["bank"] = torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32))
        labels = np.zeros(len(bank), dtype=np.int64) if bank_labels is None else bank_labels
        state["bank_labels"] = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    if score_k is not None:
        state["config"]["train"]["score_k"] = config["train"]["score_k"] = score_k
    if score is not None:
        state["config"]["train"]["score"] = config["train"]["score"] = score
    if schema_version is not None:
        config["schema_version"] = schema_version
    torch.save(state, dst / "checkpoint.pt")
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    if rescore:
        samples = read_samples(dst / "val.csv")
        out = score_samples(load_run(dst), samples)
        np.savez(
            dst / "val_scores.npz", score=out["score"], knn_angle=out["knn_angle"],
            label=np.array([s.label for s in samples]), path=np.array([str(s.path.resolve()) for s in samples]),
        )
    return dst
