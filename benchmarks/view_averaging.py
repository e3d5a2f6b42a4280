"""Does averaging the score over test-time views make the CPU preset robust to positioning and exposure? (issue 14)

    python benchmarks/view_averaging.py [--seeds 0 --seeds 1 --seeds 2] [--work DIR]

Kermany development split only. Trains the CPU preset on `dev_train.csv` (one thread; runs kept in --work and
reused), then scores `dev_val.csv` plain and under the moderate rotate, zoom-in, collimation and gamma-dark
shifts, with the knn_angle of: the film alone; the mean over the film and its horizontal flip; the mean over
five geometric views (the film, rotated ±4°, scaled 0.95 and 1.05). The bank stays the run's (plain training
normals). Writes benchmarks/results/quality/dev/view_averaging.json. Post hoc: no recipe is chosen here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import torch
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]
SPLITS = REPO / "benchmarks" / "splits"
OUT = REPO / "benchmarks" / "results" / "quality" / "dev" / "view_averaging.json"
SHIFTS = ("none", "rotate", "zoom-in", "collimation", "gamma-dark")


def views() -> dict[str, list[Callable[[np.ndarray], np.ndarray]]]:
    from salad.acquisition import affine

    def geo(shift: Callable[[np.ndarray, int], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        return lambda f: shift(f, 0)

    same: Callable[[np.ndarray], np.ndarray] = lambda f: f  # noqa: E731
    return {"film": [same], "film + flip": [same, lambda f: np.ascontiguousarray(f[:, ::-1])],
            "five geometric views": [same, geo(affine(rotate_deg=4.0)), geo(affine(rotate_deg=-4.0)), geo(affine(scale=0.95)),
                                     geo(affine(scale=1.05))]}


@click.command()
@click.option("--seeds", type=int, multiple=True, default=(0, 1, 2), show_default=True)
@click.option("--work", type=click.Path(path_type=Path), default=REPO / "runs" / "view-averaging", show_default=True)
def main(seeds: tuple[int, ...], work: Path) -> None:
    from salad.acquisition import shift_by_name
    from salad.data import read_samples
    from salad.imageio import read_image
    from salad.preprocess import preprocess
    from salad.scoring import by_name, score_torch
    from salad.train.evaluate import load_run
    from salad.train.trainer import embed_all

    val = read_samples(SPLITS / "dev_val.csv")
    y = np.array([s.label for s in val])
    films = [read_image(s.path) for s in val]
    result: dict[str, object] = {"schema": "salad-view-averaging/1", "val": str(SPLITS / "dev_val.csv"), "seeds": {}}
    for seed in seeds:
        run = work / f"seed{seed}"
        if not (run / "checkpoint.pt").exists():
            subprocess.run([str(Path(sys.executable).with_name("salad")), "train", "--data", str(SPLITS / "dev_train.csv"),
                            "--preset", "cpu", "--threads", "1", "--seed", str(seed), "--out", str(run), "--force"], check=True)
        r = load_run(run)
        rows: dict[str, dict[str, float]] = {}
        for shift in SHIFTS:
            shifted = films if shift == "none" else [shift_by_name(shift).apply(f, i) for i, f in enumerate(films)]
            rows[shift] = {}
            for name, vs in views().items():
                scores = []
                for view in vs:
                    x = torch.from_numpy(np.stack([preprocess(view(f), r.preprocessing) for f in shifted]))
                    scores.append(by_name(score_torch(embed_all(r.model, x), r.bank, r.score_k))["knn_angle"].numpy())
                rows[shift][name] = float(roc_auc_score(y, np.mean(scores, axis=0)))
            click.echo(f"seed {seed} {shift}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[shift].items()))
        result["seeds"][str(seed)] = rows  # type: ignore[index]
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    click.echo(f"→ {OUT}")


if __name__ == "__main__":
    main()
