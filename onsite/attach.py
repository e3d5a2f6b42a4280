"""Attach an estimator to a bundle (points + drift calibration), and read it back for ranking and drift checks.

numpy + ONNX Runtime only. The bundle gains three files, listed with their sha256 in manifest.json and
committed through `Bundle.edit` (one journal) like every bundle change (docs/architecture.md §4):
`similarity/estimator.onnx` (a copy of the estimator graph, so a console checks drift with the bundle
alone), `similarity/points.npz` (2-D latent points of the training films: no pixels), and
`similarity/drift.json` (the estimator's sha256, its preprocessing, the drift policy and thresholds).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import salad
from salad.bundle import Bundle
from salad.data import Sample, list_hash, read_samples
from salad.drift import STYLE_CALIBRATION_FILE, Calibration, DriftPolicy
from salad.errors import BundleError, DataError
from salad.fsutil import parse_json
from salad.manifest import sha256_file, verify_files

from .distance import per_film_distance
from .estimator import Estimator, Latent, load_points, preprocessing_of, short

FOLDER = "similarity"
GRAPH_FILE = f"{FOLDER}/estimator.onnx"
POINTS_FILE = f"{FOLDER}/points.npz"
DRIFT_FILE = STYLE_CALIBRATION_FILE
FILES = (GRAPH_FILE, POINTS_FILE, DRIFT_FILE)
DRIFT_SCHEMA = "salad-similarity-drift/2"
#: The fix for a damaged attached estimator.
REATTACH = "Re-attach with `salad similarity attach ESTIMATOR BUNDLE --data TRAINING_FILMS --force`."
#: Share of the training films held out (by patient when known) to calibrate the drift threshold, without --holdout.
HOLDOUT_FRACTION = 0.2


def _split(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(reference, held out): a seeded split by patient when patients are known, by film otherwise."""
    keys = sorted({s.patient or str(s.path) for s in samples})
    rng = np.random.default_rng(seed)
    held = set(rng.choice(keys, max(1, round(fraction * len(keys))), replace=False).tolist())
    return [s for s in samples if (s.patient or str(s.path)) not in held], [s for s in samples if (s.patient or str(s.path)) in held]


def _normals(data: str | os.PathLike[str]) -> list[Sample]:
    samples = [s for s in read_samples(Path(data)) if s.label == 0]
    if len(samples) < 10:
        raise DataError(f"{data}: {len(samples)} normal film(s); attaching needs at least 10 of the bundle's training normals.")
    return samples


def attach(estimator: str | os.PathLike[str], bundle: str | os.PathLike[str], data: str | os.PathLike[str], *,
           holdout: str | os.PathLike[str] | None = None, policy: DriftPolicy | None = None, seed: int = 0,
           force: bool = False, threads: int | None = None) -> dict[str, Any]:
    """Store the bundle's training points and drift thresholds from ESTIMATOR in BUNDLE; returns drift.json's content.

    data: the bundle's training films (their normals are used). holdout: normal films of the same site the
    bundle did not train on, for the drift threshold; without it, HOLDOUT_FRACTION of `data` (by patient).
    """
    policy = policy or DriftPolicy()
    est = Estimator.load(estimator)
    root = Path(bundle)
    Bundle.open(root, verify=True)
    train = _normals(data)
    if holdout is not None:
        reference, held = train, _normals(holdout)
    else:
        reference, held = _split(train, HOLDOUT_FRACTION, seed)
    if len(held) < 10:
        raise DataError(f"{holdout or data}: {len(held)} held-out normal film(s) for the drift threshold; need at least 10.")
    latent = est.latent(threads)
    ref_pts = latent.embed_files([s.path for s in reference], desc="embedding training films")
    held_pts = latent.embed_files([s.path for s in held], desc="embedding held-out films")
    style = Calibration.fit(per_film_distance(held_pts, ref_pts), policy, seed)
    info = {
        "schema": DRIFT_SCHEMA, "toolkit_version": salad.__version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "estimator": {"sha256": est.sha256, "preprocessing": est.info["preprocessing"], "latent_dim": est.info["latent_dim"],
                      "eqc": est.info.get("eqc"), "datasets": sorted(est.info["datasets"])},
        "films": {"reference": len(reference), "held_out": len(held), "reference_list_sha256": list_hash(reference),
                  "held_out_list_sha256": list_hash(held), "held_out_source": "holdout" if holdout is not None else "split"},
        "policy": policy.to_dict(),
        "style": style.to_dict(),
    }
    buf = io.BytesIO()
    np.savez(buf, reference=ref_pts, held_out=held_pts)
    _commit(root, {GRAPH_FILE: est.graph.read_bytes(), POINTS_FILE: buf.getvalue(),
                   DRIFT_FILE: (json.dumps(info, indent=2) + "\n").encode("utf-8")}, force)
    return info


def _commit(root: Path, contents: dict[str, bytes], force: bool) -> None:
    """Stage the files and list them with their sha256 in one `Bundle.edit`, which commits them with the new manifest."""
    with Bundle.edit(root) as edit:
        present = [f for f in contents if f in edit.manifest.files]
        if present and not force:
            raise BundleError(f"{root}: already has an attached estimator ({', '.join(present)}); pass --force to replace it.")
        for final, data in contents.items():
            edit.manifest.files[final] = sha256_file(edit.stage(final, data))


@dataclass
class Attached:
    """What a bundle's attached estimator holds: its graph, points, policy and thresholds."""

    root: Path
    info: dict[str, Any]
    reference: np.ndarray
    held_out: np.ndarray
    graph: Path

    @classmethod
    def from_bundle(cls, bundle: Bundle | str | os.PathLike[str]) -> Attached:
        """Read the bundle's attached estimator, verifying the sha256 of the files it reads (and only those)."""
        opened = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle, verify=False)
        root, manifest = opened.root, opened.manifest
        missing = [f for f in FILES if f not in manifest.files]
        if missing:
            raise BundleError(
                f"{root}: no similarity estimator attached ({', '.join(missing)} not in the manifest). Attach one with "
                f"`salad similarity attach ESTIMATOR {root} --data TRAINING_FILMS`."
            )
        verify_files(root, manifest, only=FILES)
        path = manifest.path_of(root, DRIFT_FILE)
        info = parse_json(path.read_bytes(), path, BundleError, REATTACH)
        if not isinstance(info, dict) or info.get("schema") != DRIFT_SCHEMA:
            raise BundleError(f"{root / DRIFT_FILE}: schema {info.get('schema') if isinstance(info, dict) else None!r}; "
                              f"expected {DRIFT_SCHEMA!r}. {REATTACH}")
        est = info.get("estimator")
        if not isinstance(est, dict) or not isinstance(est.get("sha256"), str):
            raise BundleError(f"{path}: estimator is {short(est)}; expected {{sha256, preprocessing, latent_dim, …}}. {REATTACH}")
        preprocessing_of(est.get("preprocessing"), path)
        try:
            DriftPolicy.from_dict(info["policy"])
            Calibration.from_dict(info["style"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"{path}: the drift policy or style thresholds are damaged ({type(exc).__name__}: {exc}). "
                              f"{REATTACH}") from None
        graph = manifest.path_of(root, GRAPH_FILE)
        if manifest.files[GRAPH_FILE] != est["sha256"]:
            raise BundleError(f"{root / GRAPH_FILE}: not the estimator drift.json names (sha256 "
                              f"{manifest.files[GRAPH_FILE][:12]}… vs {est['sha256'][:12]}…). Re-attach with --force.")
        dim = est.get("latent_dim")
        pts = load_points(manifest.path_of(root, POINTS_FILE), dim if isinstance(dim, int) else None, ("reference", "held_out"))
        return cls(root, info, pts["reference"], pts["held_out"], graph)

    @property
    def estimator_sha256(self) -> str:
        return str(self.info["estimator"]["sha256"])

    @property
    def points(self) -> np.ndarray:
        """Every training film's point (reference and held out): the bundle as a candidate collection."""
        return np.concatenate([self.reference, self.held_out])

    @property
    def policy(self) -> DriftPolicy:
        return DriftPolicy.from_dict(self.info["policy"])

    def latent(self, threads: int | None = None) -> Latent:
        return Latent(self.graph, preprocessing_of(self.info["estimator"]["preprocessing"], self.root / DRIFT_FILE), threads=threads)


class StyleCheck:
    """The style drift check of a bundle's attached estimator: films → latent points → mean distance to the training points."""

    name = "style"

    def __init__(self, attached: Attached, threads: int | None = None) -> None:
        self.attached = attached
        self.latent = attached.latent(threads)
        self.calibration = Calibration.from_dict(attached.info["style"])

    @classmethod
    def from_bundle(cls, bundle: Bundle | str | os.PathLike[str], threads: int | None = None) -> StyleCheck:
        return cls(Attached.from_bundle(bundle), threads)

    @property
    def policy(self) -> DriftPolicy:
        return self.attached.policy

    def values_of_points(self, points: np.ndarray) -> np.ndarray:
        """Each film's value: its mean latent distance to the bundle's training points."""
        return per_film_distance(points, self.attached.reference)

    def values_of_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Display-ready films (H×W in [0, 1]) → per-film values."""
        return self.values_of_points(self.latent.embed_images(list(images)))


def collection(spec: str, latent: Latent, estimator_sha256: str) -> np.ndarray:
    """A candidate's points: a bundle's attached points (same estimator required) or a folder/CSV of films embedded now."""
    path = Path(spec)
    if (path / "manifest.json").is_file():
        att = Attached.from_bundle(path)
        if att.estimator_sha256 != estimator_sha256:
            raise BundleError(
                f"{path}: its points come from estimator {att.estimator_sha256[:12]}…, but --estimator is {estimator_sha256[:12]}…; "
                f"distances from different estimators are not comparable. Re-attach: `salad similarity attach EST {path} --data … --force`."
            )
        return att.points
    return latent.embed_files([s.path for s in read_samples(path)], desc=f"embedding {path.name}")

