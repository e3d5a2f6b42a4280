"""Training-free floors: what a detector scores without learning anything, on the same films and preprocessing.

A learned figure means something only beside these (docs/quality.md): a training run must beat its own
untrained initial weights and simple pixel statistics computed with the recipe's preprocessing, or the
credit goes to the preprocessing, not to the learning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from salad.imageio import cv2
from salad.scoring import KNN_ANGLE, by_name, score_torch
from salad.train import tilt
from salad.train.models import ModelConfig, SaladAutoencoder


@dataclass(frozen=True)
class Floor:
    """A named training-free score: (train normals [N,1,S,S], films [M,1,S,S]) → anomaly score [M]."""

    name: str
    description: str
    score: Callable[[np.ndarray, np.ndarray], np.ndarray]


def _thumbnails(images: np.ndarray, side: int) -> np.ndarray:
    return np.stack([cv2.resize(img[0], (side, side), interpolation=cv2.INTER_AREA).ravel() for img in images])


def _knn_mean_distance(bank: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Mean Euclidean distance of each query to its k nearest bank rows (squared norms expanded: one GEMM)."""
    d2 = (queries**2).sum(1)[:, None] + (bank**2).sum(1)[None, :] - 2.0 * queries @ bank.T
    d = np.sqrt(np.maximum(d2, 0.0))
    k = min(k, bank.shape[0])
    return np.partition(d, k - 1, axis=1)[:, :k].mean(axis=1)


def thumbnail_knn(side: int, k: int) -> Floor:
    """kNN on side×side thumbnails (area-averaged): global shape and density, nothing learned."""
    return Floor(
        f"thumbnail{side}-knn", f"mean distance to the {k} nearest training thumbnails ({side}×{side})",
        lambda train, films: _knn_mean_distance(_thumbnails(train, side), _thumbnails(films, side), k),
    )


def raw_cosine_knn(k: int) -> Floor:
    """knn_angle on the raw preprocessed pixels as unit vectors (the score of an identity 'encoder')."""

    def score(train: np.ndarray, films: np.ndarray) -> np.ndarray:
        bank = torch.nn.functional.normalize(torch.from_numpy(train.reshape(len(train), -1)), dim=1)
        z = torch.nn.functional.normalize(torch.from_numpy(films.reshape(len(films), -1)), dim=1)
        return by_name(score_torch(z, bank, min(k, len(bank))))[KNN_ANGLE].numpy()

    return Floor("raw-pixel-knn", f"knn_angle (K = {k}) on the raw preprocessed pixels", score)


def centre_minus_mean() -> Floor:
    """Mean of the central half-side square minus the film's mean: brighter (denser) lung fields score higher."""

    def score(train: np.ndarray, films: np.ndarray) -> np.ndarray:
        return tilt.centre_minus_mean(torch.from_numpy(films)).numpy()

    return Floor("centre-minus-mean", "mean of the central half-side square minus the film mean (one number)", score)


def untrained_weights(model: ModelConfig, k: int, seed: int) -> Floor:
    """knn_angle of the recipe's own network at its initial weights (same seed as the run): what training adds."""

    @torch.no_grad()
    def score(train: np.ndarray, films: np.ndarray) -> np.ndarray:
        torch.manual_seed(seed)
        net = SaladAutoencoder(model).eval()

        def embed(x: np.ndarray) -> torch.Tensor:
            return torch.cat([net.embed(torch.from_numpy(x[s : s + 128])) for s in range(0, len(x), 128)])

        bank = embed(train)
        if net.tilt is not None:  # the recipe's whole rule at initial weights: its centre-density tilt too
            net.tilt.fit(torch.from_numpy(train), bank, min(k, len(bank)))
            bank, films_z = tilt.pad_bank(bank), embed(films)
        else:
            films_z = embed(films)
        return by_name(score_torch(films_z, bank, min(k, len(bank))))[KNN_ANGLE].numpy()

    with_tilt = " and the recipe's centre-density tilt" if model.centre_tilt > 0 else ""
    return Floor("untrained-weights", f"knn_angle (K = {k}) of the network at its initial weights (seed {seed}){with_tilt}",
                 score)


def floors(model: ModelConfig, k: int, seed: int) -> list[Floor]:
    """Every floor a quality table reports."""
    return [
        untrained_weights(model, k, seed),
        thumbnail_knn(8, k),
        thumbnail_knn(16, k),
        raw_cosine_knn(k),
        centre_minus_mean(),
    ]
