"""The drift guard of `salad score --drift`: do these films look like the bundle's site? Never changes a score or a label.

Checks under one batch-level test (salad/drift.py), each calibrated on held-out normals of the bundle's site:
from the manifest, which export fills from the run's validation normals — the detector's own operating score
(a rise), and the films' exposure as the detector sees them (salad.drift.exposure after the bundle's preprocessing; a rise
or a fall); and, when an estimator is attached (`salad similarity attach`), the style distance of similarity/.
The report warns when any does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from salad.bundle import Bundle
from salad.drift import Calibration, DriftPolicy, DriftReport, judge, judge_windows
from salad.drift import exposure as film_exposure
from salad.errors import BundleError, DataError
from salad.imageio import read_images
from salad.manifest import Manifest, read_manifest
from salad.preprocess import PreprocessConfig, preprocess

from .scorer import Result

if TYPE_CHECKING:
    from salad.similarity.attach import StyleCheck

#: Fewer validation normals than this give no score check: a bootstrap threshold from a handful of films is noise.
MIN_CALIBRATION_FILMS = 20


class DriftGuard:
    """The bundle's drift checks: the score check (from the manifest) and the style check (if an estimator is attached)."""

    def __init__(self, root: Path, policy: DriftPolicy, calibrations: dict[str, Calibration], score_name: str,
                 preprocessing: PreprocessConfig, style: StyleCheck | None, checks_off: dict[str, str]) -> None:
        if not calibrations and style is None:
            raise BundleError(f"{root}: no drift check can run here: " + "; ".join(f"{k}: {v}" for k, v in checks_off.items()))
        self.root, self.policy, self.calibrations, self.score_name, self.preprocessing, self.style, self.checks_off = (
            root, policy, calibrations, score_name, preprocessing, style, checks_off)

    @classmethod
    def from_bundle(cls, bundle: str | os.PathLike[str], manifest: Manifest | None = None, threads: int | None = None) -> DriftGuard:
        """Read the checks a bundle supports; a BundleError if neither can run (or if an attached estimator is damaged)."""
        root = Path(bundle)
        manifest = manifest or read_manifest(root, verify=False)  # the fields used are under the integrity digest;
        b = Bundle(root, manifest)  # the style check verifies the files it reads (similarity.attach.Attached)
        off: dict[str, str] = {}
        style = None
        from salad.similarity.attach import FILES, StyleCheck  # lazily: the similarity stage is optional here

        if all(f in manifest.files for f in FILES):
            style = StyleCheck.from_bundle(root, manifest, threads)
        else:
            off["style"] = f"no similarity estimator attached (`salad similarity attach ESTIMATOR {root} --data TRAINING_FILMS`)"
        policy = style.policy if style is not None else DriftPolicy()
        calibrations: dict[str, Calibration] = {}
        for key, checks in (("normal_scores", ("score",)), ("normal_exposure", ("brighter", "darker"))):
            values = b.drift_calibration(key)
            what = " and ".join(checks)
            if values is None:
                off[what] = ("the manifest stores no validation normals for it (exported before these checks existed); "
                             "re-export the bundle")
            elif len(values) < MIN_CALIBRATION_FILMS:
                off[what] = (f"the run had {len(values)} validation normal film(s), fewer than {MIN_CALIBRATION_FILMS}; "
                             "retrain with --val NORMALS_OF_OTHER_PATIENTS to calibrate it")
            else:
                for name in checks:
                    calibrations[name] = Calibration.fit(values, policy, lower=name == "darker")
        return cls(root, policy, calibrations, b.threshold.score, manifest.preprocess_config, style, off)

    @property
    def needs_images(self) -> bool:
        """Whether a check reads the films themselves (exposure, style), not only their scores."""
        return self.style is not None or "brighter" in self.calibrations

    @property
    def score(self) -> Calibration | None:
        """The score check's calibration (None: off)."""
        return self.calibrations.get("score")

    def check(self, scores: np.ndarray, images: Sequence[np.ndarray] | None = None, window: int | None = None) -> DriftReport:
        """Verdicts for films in arrival order: their operating scores and the display-ready films themselves."""
        values: dict[str, np.ndarray] = {}
        if self.score is not None:
            values["score"] = np.asarray(scores, dtype=np.float64)
        if self.needs_images and images is None:
            raise DataError("the exposure and style drift checks need the films themselves (images), not only their scores.")
        if "brighter" in self.calibrations and images is not None:
            exposure = np.array([film_exposure(preprocess(img, self.preprocessing)) for img in images])
            values["brighter"] = values["darker"] = exposure
        if self.style is not None and images is not None:
            values["style"] = self.style.values_of_images(images)
        n = len(next(iter(values.values())))
        if n == 0:
            raise DataError("no films to check for drift.")
        cals = dict(self.calibrations)
        if self.style is not None:
            cals["style"] = self.style.calibration
        call = judge(values, cals, self.policy)
        wins = judge_windows(values, cals, self.policy, window) if window and window < n else []
        return DriftReport(call, wins, self.policy.to_dict(), dict(self.checks_off),
                           self.style.attached.estimator_sha256 if self.style else None)

    def check_results(self, results: Sequence[Result], window: int | None = None) -> tuple[DriftReport | None, list[str]]:
        """Scored films (read again when the exposure or style check needs them) → (report or None, files skipped)."""
        ok = [r for r in results if r.ok]
        if not self.needs_images:
            return (self.check(np.array([r.scores[self.score_name] for r in ok]), None, window) if ok else None), []
        images, kept, skipped = read_images([Path(str(r.path)) for r in ok])
        if not images:
            return None, skipped
        return self.check(np.array([ok[i].scores[self.score_name] for i in kept]), images, window), skipped
