"""A trained run's encoder with another site's bank: AUC on that site's labelled films beside the floors.

Measures whether features learnt on one site's normals transfer to a second site when only the bank
(the site's own normal films) changes. Recipe choices use the development splits only (docs/quality.md).
Usage: python benchmarks/cross_site_bank.py RUN [--bank benchmarks/splits/nih_dev_train.csv]
       [--test benchmarks/splits/nih_dev_val.csv]
"""

from __future__ import annotations

import json

import click
import numpy as np
import torch

from salad.data import read_samples
from salad.metrics import auc
from salad.scoring import by_name, score_torch
from salad.train.datasets import preload
from salad.train.evaluate import load_run
from salad.train.floors import floors
from salad.train.trainer import embed_all


@click.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--bank", "bank_csv", default="benchmarks/splits/nih_dev_train.csv", show_default=True,
              help="The second site's training films; its normals become the bank.")
@click.option("--test", "test_csv", default="benchmarks/splits/nih_dev_val.csv", show_default=True,
              help="The second site's labelled films to score.")
@click.option("--k", "ks", type=int, multiple=True, default=(10, 20, 50, 100), show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
def main(run: str, bank_csv: str, test_csv: str, ks: tuple[int, ...], threads: int) -> None:
    torch.set_num_threads(threads)
    loaded = load_run(run)
    normals = [s for s in read_samples(bank_csv) if s.label == 0]
    test = read_samples(test_csv)
    labels = np.array([s.label for s in test])
    bank_images = preload(normals, loaded.preprocessing, "bank films")
    test_images = preload(test, loaded.preprocessing, "test films")
    bank, z = embed_all(loaded.model, bank_images), embed_all(loaded.model, test_images)
    out = {"run": run, "bank": bank_csv, "test": test_csv, "bank_films": len(normals), "test_films": len(test),
           "auc_by_k": {k: auc(labels, by_name(score_torch(z, bank, min(k, len(bank))))["knn_angle"].numpy()) for k in ks},
           "floors": {f.name: auc(labels, f.score(bank_images.numpy(), test_images.numpy()))
                      for f in floors(loaded.model.config, max(ks), int(loaded.config["train"]["seed"]))}}
    click.echo(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
