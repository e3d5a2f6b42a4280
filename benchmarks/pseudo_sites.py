"""Pseudo-sites from the Kermany development patients: films grouped by how they were acquired, held out whole.

    python benchmarks/pseudo_sites.py      # writes benchmarks/splits/site_*.csv and results/transfer/pseudo_sites.md

A split drawn at random from one collection over-predicted independent performance twice (docs/quality.md): the
bank and the test films shared their acquisition. Here the development patients' films (kermany_train.csv; the
held-out patients are never read) are grouped by acquisition features — exposure quantiles, edge brightness,
sharpness, contrast — and each group in turn is held out whole: the bank is built from the other groups' normals,
the test set is every film of the held-out group's patients (normal and pneumonia).

The features are standardised *within each class* before clustering. Pneumonia films in this collection differ
from normals in exactly these statistics (no black pixels, a lower 99th percentile, softer edges: see the table
written beside the splits), so clustering the raw features would split by class, not by acquisition; removing each
class's median leaves the variation of acquisition that both classes share. A patient goes to the group most of
their films fall in, so the splits are patient-disjoint.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans

from salad.imageio import cv2

REPO = Path(__file__).resolve().parents[1]
SPLITS = REPO / "benchmarks" / "splits"
OUT = REPO / "benchmarks" / "results" / "transfer"
SOURCE = SPLITS / "kermany_train.csv"
GROUPS = 3
SEED = 0
FEATURES = ("p25", "p50", "p75", "p95", "edge mean", "log sharpness", "contrast (sd)", "mean")


def acquisition_features(path: Path) -> list[float]:
    """Exposure, framing and sharpness statistics of one film (grey, [0, 1])."""
    grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        raise OSError(f"{path}: not a readable image")
    g = grey.astype(np.float32) / 255.0
    q = np.percentile(g, [25, 50, 75, 95])
    edge = np.concatenate([g[:8].ravel(), g[-8:].ravel(), g[:, :8].ravel(), g[:, -8:].ravel()]).mean()
    sharp = float(np.log(cv2.Laplacian(g, cv2.CV_32F).var() + 1e-9))
    return [*map(float, q), float(edge), sharp, float(g.std()), float(g.mean())]


def name_groups(centres: np.ndarray) -> list[str]:
    """Names that say what each group is: the darkest, the brightest, the rest by contrast."""
    mean = centres[:, FEATURES.index("mean")]
    names = ["mid"] * len(centres)
    names[int(np.argmin(mean))] = "dark"
    names[int(np.argmax(mean))] = "bright"
    for i in range(len(centres)):
        if names[i] == "mid":
            names[i] = "contrast" if centres[i, FEATURES.index("contrast (sd)")] > 0 else "flat"
    return names


def main() -> None:
    with open(SOURCE, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    feats = np.array([acquisition_features((SPLITS / r["path"]).resolve()) for r in rows])
    labels = np.array([int(r["label"]) for r in rows])
    z = np.zeros_like(feats)
    for c in (0, 1):
        m = labels == c
        z[m] = (feats[m] - np.median(feats[m], axis=0)) / feats[m].std(axis=0)
    km = KMeans(GROUPS, n_init=10, random_state=SEED).fit(z)
    names = name_groups(km.cluster_centers_)
    by_patient: dict[str, Counter[int]] = {}
    for r, g in zip(rows, km.labels_, strict=True):
        by_patient.setdefault(r["patient_id"], Counter())[int(g)] += 1
    group_of = {p: c.most_common(1)[0][0] for p, c in by_patient.items()}
    film_group = np.array([group_of[r["patient_id"]] for r in rows])
    fields = ["path", "label", "patient_id"]
    lines = ["# Pseudo-sites: the development patients' films grouped by acquisition", "",
             f"Written by `python benchmarks/pseudo_sites.py` from `{SOURCE.relative_to(REPO)}` ({len(rows)} films, "
             f"{len(by_patient)} patients; the held-out patients are not read). KMeans (k = {GROUPS}, seed {SEED}) on "
             "acquisition features standardised within each class; a patient goes to the group of most of their films. "
             "Held out in turn: the bank is the other groups' normals, the test set every film of the group.", "",
             "Median of each feature, in within-class standard deviations from the class median:", "",
             "| group | films | normal | pneumonia | " + " | ".join(FEATURES) + " |",
             "|---|---|---|---|" + "---|" * len(FEATURES)]
    for g, name in enumerate(names):
        m = film_group == g
        med = np.median(z[m], axis=0)
        lines.append(f"| {name} | {int(m.sum())} | {int((m & (labels == 0)).sum())} | {int((m & (labels == 1)).sum())} | "
                     + " | ".join(f"{v:+.2f}" for v in med) + " |")
        with open(SPLITS / f"site_{name}_train.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(r for r, gg in zip(rows, film_group, strict=True) if gg != g and r["label"] == "0")
        with open(SPLITS / f"site_{name}_test.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(r for r, gg in zip(rows, film_group, strict=True) if gg == g)
    lines += ["", "Raw medians by class (why the features are standardised within each class):", "",
              "| class | " + " | ".join(FEATURES) + " |", "|---|" + "---|" * len(FEATURES)]
    for c, cname in ((0, "normal"), (1, "pneumonia")):
        lines.append(f"| {cname} | " + " | ".join(f"{v:.3f}" for v in np.median(feats[labels == c], axis=0)) + " |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pseudo_sites.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
