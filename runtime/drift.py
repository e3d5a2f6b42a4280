"""The drift guard of `salad score --drift`: do these films look like the bundle's site? Never changes a score or a label.

Two checks under one batch-level test (salad/drift.py): the detector's own operating score, calibrated on the
run's validation normals that export stores in the manifest (every bundle has it); and, when an estimator is
attached (`salad similarity attach`), the style distance of similarity/. The report warns when either does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from salad.bundle import Bundle
from salad.drift import Calibration, DriftPolicy, DriftReport, judge, judge_windows
from salad.errors import BundleError, DataError
from salad.imageio import read_image
from salad.manifest import Manifest, read_manifest

from .scorer import Result

if TYPE_CHECKING:
    from salad.similarity.attach import StyleCheck

#: Fewer validation normals than this give no score check: a bootstrap threshold from a handful of films is noise.
MIN_CALIBRATION_FILMS = 20


class DriftGuard:
    """The bundle's drift checks: the score check (from the manifest) and the style check (if an estimator is attached)."""

    def __init__(self, root: Path, policy: DriftPolicy, score: Calibration | None, score_name: str,
                 style: StyleCheck | None, checks_off: dict[str, str]) -> None:
        if score is None and style is None:
            raise BundleError(f"{root}: no drift check can run here: " + "; ".join(f"{k}: {v}" for k, v in checks_off.items()))
        self.root, self.policy, self.score, self.score_name, self.style, self.checks_off = (
            root, policy, score, score_name, style, checks_off)

    @classmethod
    def from_bundle(cls, bundle: str | os.PathLike[str], manifest: Manifest | None = None, threads: int | None = None) -> DriftGuard:
        """Read the checks a bundle supports; a BundleError if neither can run (or if an attached estimator is damaged)."""
        root = Path(bundle)
        manifest = manifest or read_manifest(root, verify=True)
        b = Bundle(root, manifest)
        off: dict[str, str] = {}
        style = None
        from salad.similarity.attach import FILES, StyleCheck  # lazily: the similarity stage is optional here

        if all(f in manifest.files for f in FILES):
            style = StyleCheck.from_bundle(root, manifest, threads)
        else:
            off["style"] = f"no similarity estimator attached (`salad similarity attach ESTIMATOR {root} --data TRAINING_FILMS`)"
        policy = style.policy if style is not None else DriftPolicy()
        values = b.validation_normal_scores()
        score = None
        if values is None:
            off["score"] = ("the manifest stores no validation normal scores (exported before the score drift check existed); "
                            "re-export the bundle")
        elif len(values) < MIN_CALIBRATION_FILMS:
            off["score"] = (f"the run had {len(values)} validation normal film(s), fewer than {MIN_CALIBRATION_FILMS}; retrain with "
                            "--val NORMALS_OF_OTHER_PATIENTS to calibrate it")
        else:
            score = Calibration.fit(values, policy)
        return cls(root, policy, score, b.threshold.score, style, off)

    def check(self, scores: np.ndarray, images: Sequence[np.ndarray] | None = None, window: int | None = None) -> DriftReport:
        """Verdicts for films in arrival order: their operating scores and (for the style check) display-ready images."""
        values: dict[str, np.ndarray] = {}
        if self.score is not None:
            values["score"] = np.asarray(scores, dtype=np.float64)
        if self.style is not None:
            if images is None:
                raise DataError("the style drift check needs the films themselves (images), not only their scores.")
            values["style"] = self.style.values_of_images(images)
        n = len(next(iter(values.values())))
        if n == 0:
            raise DataError("no films to check for drift.")
        calibrations = {"score": self.score, "style": self.style.calibration if self.style else None}
        cals = {k: c for k, c in calibrations.items() if k in values and c is not None}
        call = judge(values, cals, self.policy)
        wins = judge_windows(values, cals, self.policy, window) if window and window < n else []
        return DriftReport(call, wins, self.policy.to_dict(), dict(self.checks_off),
                           self.style.attached.estimator_sha256 if self.style else None)

    def check_results(self, results: Sequence[Result], window: int | None = None) -> tuple[DriftReport | None, list[str]]:
        """Scored films (their files are read again for the style check) → (report or None, the files skipped)."""
        ok = [r for r in results if r.ok]
        images: list[np.ndarray] = []
        kept: list[Result] = []
        skipped: list[str] = []
        for r in ok:
            if self.style is None:
                kept.append(r)
                continue
            try:
                images.append(read_image(Path(str(r.path))))
                kept.append(r)
            except (DataError, OSError) as exc:
                skipped.append(f"{r.path}: {exc}")
        if not kept:
            return None, skipped
        scores = np.array([r.scores[self.score_name] for r in kept])
        return self.check(scores, images if self.style is not None else None, window), skipped
