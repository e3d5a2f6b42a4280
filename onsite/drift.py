"""The drift guard of `salad score --drift`: do these films look like the bundle's site? Never changes a score or a label.

Checks under one batch-level test (salad/drift.py), each calibrated on held-out normals of the bundle's site:
from the manifest, which export fills from the run's validation normals — the detector's own operating score
(a rise), and the films' exposure as the detector sees them (salad.drift.exposure after the bundle's preprocessing; a rise
or a fall); and, when an estimator is attached (`salad similarity attach`), the films' style distance from the bundle's
training films (onsite/attach.py). The report warns when any does. The guard reads no film itself:
`DriftGuard.watching(scorer)` listens to the Scorer's `prepared` and `scored` events (runtime/events.py), so each film is
decoded once, by the Scorer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

from salad.bundle import Bundle
from salad.drift import MIN_CALIBRATION_FILMS, Calibration, DriftPolicy, DriftReport, judge, judge_windows
from salad.drift import exposure as film_exposure
from salad.errors import BundleError, DataError
from salad.preprocess import PreprocessConfig, preprocess
from salad.runtime.events import PREPARED, SCORED, Prepared, Scored
from salad.runtime.scorer import Scorer

from .attach import FILES, StyleCheck


class DriftGuard:
    """The bundle's drift checks: the score check (from the manifest) and the style check (if an estimator is attached)."""

    def __init__(self, root: Path, policy: DriftPolicy, calibrations: dict[str, Calibration], score_name: str,
                 preprocessing: PreprocessConfig, style: StyleCheck | None, checks_off: dict[str, str]) -> None:
        if not calibrations and style is None:
            raise BundleError(f"{root}: no drift check can run here: " + "; ".join(f"{k}: {v}" for k, v in checks_off.items()))
        self.root, self.policy, self.calibrations, self.score_name, self.preprocessing, self.style, self.checks_off = (
            root, policy, calibrations, score_name, preprocessing, style, checks_off)

    @classmethod
    def from_bundle(cls, bundle: Bundle | str | os.PathLike[str], threads: int | None = None) -> DriftGuard:
        """Read the checks a bundle supports; a BundleError if neither can run (or if an attached estimator is damaged)."""
        # Unverified: the fields used are under the integrity digest; the style check verifies the files it reads
        # (similarity.attach.Attached).
        b = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle, verify=False)
        root, manifest = b.root, b.manifest
        off: dict[str, str] = {}
        style = None
        if all(f in manifest.files for f in FILES):
            style = StyleCheck.from_bundle(b, threads)
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

    def check(self, scores: np.ndarray, images: Sequence[np.ndarray] | None = None, window: int | None = None, *,
              exposures: np.ndarray | None = None) -> DriftReport:
        """Verdicts for films in arrival order: their operating scores and the display-ready films themselves.

        `exposures`: the films' exposure values when the caller has them already (a DriftWatch); else from `images`.
        """
        values: dict[str, np.ndarray] = {}
        if self.score is not None:
            values["score"] = np.asarray(scores, dtype=np.float64)
        need = ("brighter" in self.calibrations and exposures is None) or self.style is not None
        if need and images is None:
            raise DataError("the exposure and style drift checks need the films themselves (images), not only their scores.")
        if "brighter" in self.calibrations:
            if exposures is None:
                exposures = np.array([film_exposure(preprocess(img, self.preprocessing)) for img in images or ()])
            values["brighter"] = values["darker"] = np.asarray(exposures, dtype=np.float64)
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

    @contextmanager
    def watching(self, scorer: Scorer) -> Iterator[DriftWatch]:
        """Listen to `scorer` for a with-block: every film it scores there is one the report judges, decoded once."""
        watch = DriftWatch(self, same_preprocessing=scorer.preprocess_config == self.preprocessing)
        with ExitStack() as stack:
            stack.enter_context(scorer.bound(PREPARED, watch.on_prepared))
            stack.enter_context(scorer.bound(SCORED, watch.on_scored))
            yield watch


class DriftWatch:
    """What the guard keeps of the films a Scorer scores: per film its score, exposure and (for the style check) the film.

    `prepared` holds a film's values until its `scored` event: a film scored (not refused) joins the report, in order.
    """

    def __init__(self, guard: DriftGuard, same_preprocessing: bool = True) -> None:
        self.guard, self.same_preprocessing = guard, same_preprocessing
        self.scores: list[float] = []
        self.exposures: list[float] = []
        self.images: list[np.ndarray] = []
        #: Films scored whose drift values are missing (a `prepared` handler that failed, logged by the Scorer).
        self.skipped: list[str] = []
        self._pending: dict[int, tuple[float | None, np.ndarray | None]] = {}

    def on_prepared(self, event: Prepared) -> None:
        guard = self.guard
        value = None
        if "brighter" in guard.calibrations:  # the film as the detector sees it: the scorer's own tensor when it can be
            value = film_exposure(event.tensor if self.same_preprocessing else preprocess(event.image, guard.preprocessing))
        self._pending[event.index] = (value, event.image if guard.style is not None else None)

    def on_scored(self, event: Scored) -> None:
        pending, result = self._pending.pop(event.index, None), event.result
        if not result.ok:
            return
        if pending is None and self.guard.needs_images:
            self.skipped.append(str(result.path))
            return
        exposure, image = pending or (None, None)
        self.scores.append(result.scores[self.guard.score_name])
        if exposure is not None:
            self.exposures.append(exposure)
        if image is not None:
            self.images.append(image)

    def report(self, window: int | None = None) -> DriftReport | None:
        """The verdicts on the films scored so far (None when none was)."""
        if not self.scores:
            return None
        return self.guard.check(np.array(self.scores), self.images if self.guard.style is not None else None, window,
                                exposures=np.array(self.exposures) if "brighter" in self.guard.calibrations else None)
