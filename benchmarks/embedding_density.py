"""Does a Gaussian model of the normal embeddings score NIH films better than kNN angles? (issue 14, NIH dev split)

    python benchmarks/embedding_density.py [--work DIR]

Trains the CPU preset on `nih_dev_train.csv` (seeds 0–2, one thread; runs are kept in --work and reused), embeds
the training normals and `nih_dev_val.csv`, and scores the validation films by: the preset's knn_angle (K = 100),
the mean angle to the K nearest bank rows for other K, the angle to the normals' mean direction, and the
Mahalanobis distance under a Ledoit–Wolf covariance (the same for 8×8 / 16×16 thumbnails, as floors). Writes
benchmarks/results/quality/nih-dev/embedding_density.json. Post hoc on dev only: no recipe is chosen here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import cv2
import numpy as np
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]
SPLITS = REPO / "benchmarks" / "splits"
OUT = REPO / "benchmarks" / "results" / "quality" / "nih-dev" / "embedding_density.json"


@click.command()
@click.option("--work", type=click.Path(path_type=Path), default=REPO / "runs" / "embedding-density", show_default=True)
def main(work: Path) -> None:
    from salad.data import read_samples
    from salad.preprocess import load_image
    from salad.train.evaluate import load_run, score_samples

    val = read_samples(SPLITS / "nih_dev_val.csv")
    y = np.array([s.label for s in val])
    normals = [s for s in read_samples(SPLITS / "nih_dev_train.csv") if s.label == 0]
    result: dict[str, object] = {"schema": "salad-embedding-density/1", "val": str(SPLITS / "nih_dev_val.csv"),
                                 "bank_films": len(normals), "seeds": {}}
    for seed in (0, 1, 2):
        run = work / f"seed{seed}"
        if not (run / "checkpoint.pt").exists():
            subprocess.run([str(Path(sys.executable).with_name("salad")), "train", "--data", str(SPLITS / "nih_dev_train.csv"),
                            "--preset", "cpu", "--threads", "1", "--seed", str(seed), "--out", str(run), "--force"], check=True)
        loaded = load_run(run)
        z, bank = score_samples(loaded, val), score_samples(loaded, normals)["embedding"]
        angles = np.sort(np.arccos(np.clip(z["embedding"] @ bank.T, -1.0, 1.0)), axis=1)
        centre = bank.mean(0) / np.linalg.norm(bank.mean(0))
        aucs = {"knn_angle (the preset)": roc_auc_score(y, z["knn_angle"]),
                **{f"mean angle to the {k} nearest": roc_auc_score(y, angles[:, :k].mean(1)) for k in (10, 50, len(bank))},
                "angle to the normals' mean direction": roc_auc_score(y, -(z["embedding"] @ centre)),
                "Mahalanobis (Ledoit-Wolf)": roc_auc_score(y, LedoitWolf().fit(bank).mahalanobis(z["embedding"]))}
        result["seeds"][str(seed)] = {k: float(v) for k, v in aucs.items()}  # type: ignore[index]
        click.echo(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in aucs.items()))
    cfg = load_run(work / "seed0").preprocessing

    def thumbs(samples: list, n: int) -> np.ndarray:  # type: ignore[type-arg]
        return np.stack([cv2.resize(load_image(s.path, cfg)[0], (n, n), interpolation=cv2.INTER_AREA).ravel() for s in samples])

    result["thumbnail_mahalanobis"] = {
        f"{n}x{n}": float(roc_auc_score(y, LedoitWolf().fit(thumbs(normals, n)).mahalanobis(thumbs(val, n)))) for n in (8, 16)}
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    click.echo(f"→ {OUT}")


if __name__ == "__main__":
    main()
