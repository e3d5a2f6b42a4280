"""Which bundle fits these films? Rank candidate bundles by how far the films lie from each one's memory bank.

Each candidate scores the same films; a bundle whose normals look like the site's films gives them low scores,
so candidates are ranked by the mean operating score, lowest first. On the site-similarity benchmark this
picked the bundle with the best AUC on every real site and on 77 % of all targets, against 53–60 % for ASAP
(docs/similarity.md §5). Scores are comparable across bundles only when they are the same score, so every
candidate must threshold the same one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from salad.bundle import Bundle
from salad.errors import ConfigError, DataError
from salad.imageio import read_images
from salad.runtime.scorer import Scorer

CHOICE_SCHEMA = "salad-bundle-choice/1"


@dataclass(frozen=True)
class BundleFit:
    """One candidate: its mean score on the films, the share it would flag, and its validation normals' median."""

    candidate: str
    bundle: str
    mean_score: float
    flagged: float
    validation_normal_median: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_films(paths: Sequence[Path]) -> tuple[list[np.ndarray], list[str]]:
    """Display-ready films, read once for every candidate, and the files that could not be read (with why)."""
    films, _, skipped = read_images(paths, desc="reading films")
    if not films:
        raise DataError(f"none of the {len(paths)} target film(s) could be read; first: {skipped[0] if skipped else '–'}")
    return films, skipped


def rank_bundles(films: Sequence[np.ndarray], candidates: Mapping[str, str | Path], *, runtime: str = "onnxruntime",
                 batch: int = 32, **runner_options: Any) -> list[BundleFit]:
    """Candidates by ascending mean operating score on `films`; a ConfigError if they do not share that score."""
    if not candidates:
        raise ConfigError("no candidates to rank; pass at least one --candidate NAME=BUNDLE.")
    bundles = {name: Bundle.open(path, verify=False) for name, path in candidates.items()}  # each Scorer verifies what it reads
    score_names = {name: b.threshold.score for name, b in bundles.items()}
    if len(set(score_names.values())) > 1:
        raise ConfigError(f"the candidates threshold different scores ({score_names}); their values are not comparable. "
                          "Compare bundles exported with the same --score.")
    fits = []
    for name, b in bundles.items():
        with Scorer.from_bundle(b.root, runtime=runtime, max_batch=batch, **runner_options) as scorer:
            results = scorer.score(list(films))
        scores = np.array([r.scores[scorer.threshold_score] for r in results])
        normals = b.drift_calibration("normal_scores")
        fits.append(BundleFit(name, str(b.root), float(scores.mean()), float(np.mean([r.label == 1 for r in results])),
                              None if normals is None else float(np.median(normals))))
    return sorted(fits, key=lambda f: f.mean_score)
