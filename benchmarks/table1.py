"""SALAD's Table 1 at CPU scale: MemDAE at AR 0 and SALAD with its two ablations at AR 5 / 10 / 15 %, three seeds.

    python benchmarks/table1.py run --out benchmarks/results/table1            # every cell, most decisive first
    python benchmarks/table1.py run --only kermany/memdae-ar0/0 --only kermany/salad-ar10/0
    python benchmarks/table1.py table --out benchmarks/results/table1          # writes table1.md beside the JSONs

Datasets (development splits only, benchmarks/splits/): `kermany` trains on dev_train_ar.csv (dev_train's normals,
plus pneumonia films of patients outside dev_val that supply the known anomalies) and tests on dev_val.csv; `nih`
trains on nih_dev_train.csv (the NIH development patients' normals and abnormal films) and tests on nih_dev_val.csv.
AR is the share of known abnormal films in the training set (salad.train --known-anomaly-ratio): they train without
a label and their bank rows are dropped before scoring. Every row is the `cpu-ar` preset (train/config.py) with its
method and AR changed, so all rows share one schedule: pre-training + 10 rounds, scaled to 2 CPU cores.
One JSON per (dataset, row, seed): resumable, a cell whose JSON exists is not trained again; written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
SPLITS = REPO / "benchmarks" / "splits"
#: dataset → (training CSV, test CSV); both development splits (nothing here touches a held-out split).
DATASETS = {"kermany": ("dev_train_ar.csv", "dev_val.csv"), "nih": ("nih_dev_train.csv", "nih_dev_val.csv")}
#: row name → (method, AR, extra TrainConfig fields). The last three are the screening variants (one seed, AR 10).
ROWS: dict[str, tuple[str, float, dict[str, Any]]] = {
    "memdae-ar0": ("memdae", 0.0, {}),
    **{f"{m}-ar{ar}": (m, ar / 100, {}) for m in ("salad", "salad-no-mse", "salad-no-agg") for ar in (5, 10, 15)},
    "salad-sum-ar10": ("salad", 0.10, {"latent_loss": "sum"}),
    "salad-growk-ar10": ("salad", 0.10, {"neighbours_growth": 10}),
}
SEEDS = (0, 1, 2)
#: The paper's Table 1 (NIH, mean of 4 runs) by row: AUC and AUPRC.
PAPER = {
    "memdae-ar0": (0.8778, 0.9198),
    "salad-no-mse-ar5": (0.8693, 0.9121), "salad-no-mse-ar10": (0.8739, 0.9287), "salad-no-mse-ar15": (0.8774, 0.9290),
    "salad-no-agg-ar5": (0.8824, 0.9332), "salad-no-agg-ar10": (0.8913, 0.9426), "salad-no-agg-ar15": (0.8975, 0.9494),
    "salad-ar5": (0.9091, 0.9552), "salad-ar10": (0.9167, 0.9674), "salad-ar15": (0.9189, 0.9705),
}


def plan() -> list[tuple[str, str, int]]:
    """Every cell, the most decision-relevant first: MemDAE AR 0 vs SALAD AR 10 on Kermany over three seeds."""
    first = [("kermany", row, s) for s in SEEDS for row in ("memdae-ar0", "salad-ar10")]
    screen = [("kermany", row, 0) for row in ("salad-sum-ar10", "salad-growk-ar10")]
    rest = [(d, row, s) for d in DATASETS for s in SEEDS for row in ROWS if not row.startswith(("salad-sum", "salad-growk"))]
    return list(dict.fromkeys(first + screen + rest))


def cell_config(row: str, seed: int, threads: int, overrides: dict[str, Any] | None = None) -> Any:
    """The cpu-ar preset with this row's method, AR and extras, the cell's seed, and `overrides` (tests, schedules)."""
    from salad.train.config import PRESETS

    method, ar, extra = ROWS[row]
    # centre_tilt 0: the cells measure the paper's method, as every committed cell ran (the preset's tilt is the
    # product's addition, chosen later with the transfer protocol)
    return dataclasses.replace(PRESETS["cpu-ar"], method=method, known_anomaly_ratio=ar, seed=seed, threads=threads,
                               centre_tilt=0.0, **{**extra, **(overrides or {})})


def _shown(path: Path) -> str:
    """A split's path relative to the repository when it lies inside it."""
    return str(path.resolve().relative_to(REPO)) if path.resolve().is_relative_to(REPO) else str(path)


def _metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    return {"auc": float(roc_auc_score(labels, scores)), "auprc": float(average_precision_score(labels, scores))}


def run_cell(dataset: str, row: str, seed: int, out: Path, work: Path, threads: int, splits: tuple[Path, Path] | None = None,
             overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one cell, score the test split with both outputs and every floor; write and return its JSON.

    `splits` (training CSV, test CSV) defaults to the dataset's development split; `overrides` change TrainConfig fields.
    """
    import torch

    from salad.data import read_samples
    from salad.runtime.bench import machine_info
    from salad.scoring import by_name, score_torch
    from salad.train.datasets import preload
    from salad.train.evaluate import load_run
    from salad.train.floors import floors
    from salad.train.trainer import embed_all, train_run

    target = out / f"{dataset}-{row}-s{seed}.json"
    if target.exists():
        return dict(json.loads(target.read_text()))
    train_csv, test_csv = splits or tuple(SPLITS / f for f in DATASETS[dataset])
    cfg = cell_config(row, seed, threads, overrides)
    torch.set_num_threads(threads)
    run_dir = work / f"{dataset}-{row}-s{seed}"
    load0 = list(os.getloadavg())
    t0 = time.perf_counter()
    summary = train_run(train_csv, run_dir, cfg, force=True)
    train_seconds = time.perf_counter() - t0
    loaded = load_run(run_dir)
    bank = read_samples(run_dir / "train.csv")
    test = read_samples(test_csv)
    labels = np.array([s.label for s in test])
    films = preload(test, loaded.preprocessing, "reading test films")
    z = embed_all(loaded.model, films)
    outputs = {n: v.numpy() for n, v in by_name(score_torch(z, loaded.bank, loaded.score_k)).items()}
    normals = preload([s for s in bank if s.label == 0], loaded.preprocessing, "reading bank normals").numpy()
    floor_rows = {f.name: _metrics(labels, f.score(normals, films.numpy())) for f in floors(loaded.model.config, cfg.score_k, seed)}
    epoch_seconds = [json.loads(line)["seconds"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    record: dict[str, Any] = {
        "schema": "salad-table1-cell/1", "dataset": dataset, "row": row, "seed": seed, "method": cfg.method,
        "known_anomaly_ratio": cfg.known_anomaly_ratio, "train_split": _shown(train_csv),
        "test_split": _shown(test_csv), "n_train": len(bank), "n_train_anomalous": int(sum(s.label for s in bank)),
        "n_normal": int((labels == 0).sum()), "n_abnormal": int((labels == 1).sum()),
        "schedule": {"pretrain_epochs": cfg.pretrain_epochs, "rounds": cfg.rounds, "round_epochs": cfg.round_epochs,
                     "epochs": cfg.epochs, "batch_size": cfg.batch_size, "size": cfg.size, "width": cfg.width},
        "config": cfg.to_dict(), "operating_score": loaded.score_name, "val_auc": summary.get("val_auc"),
        "test": {name: _metrics(labels, v) for name, v in outputs.items()}, "floors": floor_rows,
        "train_seconds": train_seconds, "mean_epoch_seconds": float(np.mean(epoch_seconds)) if epoch_seconds else None,
        "machine": {"cpu": machine_info()["cpu"], "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
                    "torch": torch.__version__, "load_average_start": load0, "load_average_end": list(os.getloadavg()),
                    "niceness": os.nice(0)},
    }
    out.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, target)
    shutil.rmtree(run_dir, ignore_errors=True)
    return record


def _ms(values: list[float]) -> str:
    if not values:
        return "not run"
    if len(values) == 1:
        return f"{values[0]:.3f} (1 seed)"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} ({len(values)} seeds)"


def decision(cells: list[dict[str, Any]], dataset: str) -> str:
    """The margin rule: SALAD at some AR must beat MemDAE AR 0 by min(0.05, half its distance to 1), three seeds each."""
    from salad.train.trainer import floor_margin

    def aucs(row: str) -> list[float]:
        return [c["test"][c["operating_score"]]["auc"] for c in cells if c["dataset"] == dataset and c["row"] == row]

    base = aucs("memdae-ar0")
    if len(base) < 3:
        return f"undecided: MemDAE AR 0 has {len(base)} of 3 seeds."
    need = statistics.mean(base) + floor_margin(statistics.mean(base))
    lines = []
    for row in ("salad-ar5", "salad-ar10", "salad-ar15"):
        got = aucs(row)
        if len(got) < 3:
            lines.append(f"{row}: {len(got)} of 3 seeds, undecided")
        else:
            verdict = "beats" if statistics.mean(got) >= need else "does not beat"
            lines.append(f"{row}: {statistics.mean(got):.3f} {verdict} MemDAE AR 0 + margin ({need:.3f})")
    return "; ".join(lines) + "."


def write_table(out: Path) -> str:
    """table1.md: per dataset, each row × AR beside the paper's NIH figures and the floors; missing cells say "not run"."""
    cells = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    lines = ["# SALAD Table 1 at CPU scale (development splits)", "",
             "Written by `python benchmarks/table1.py table`. Operating score `knn_angle` unless a cell says otherwise; "
             "mean ± sd over the seeds that ran. The paper's figures are its NIH Table 1 (256², 50 + 10 × 50 epochs, "
             "mean of 4 runs), set beside ours for orientation only: ours are 64² on 2 CPU cores, on other splits.", ""]
    for dataset in DATASETS:
        mine = [c for c in cells if c["dataset"] == dataset]
        train_csv, test_csv = DATASETS[dataset]
        lines += [f"## {dataset}: train `{train_csv}` → test `{test_csv}`", ""]
        if mine:
            c = mine[0]
            s = c["schedule"]
            lines += [f"{c['n_normal']} normal / {c['n_abnormal']} abnormal test films. Schedule: {s['pretrain_epochs']} "
                      f"pre-training + {s['rounds']} × {s['round_epochs']} epochs = {s['epochs']}, batch {s['batch_size']}, "
                      f"{s['size']}², width {s['width']}. Machine: {c['machine']['cpu']}, {c['machine']['cores']} cores, "
                      f"{c['machine']['threads']} torch thread(s) a cell at niceness {c['machine']['niceness']}; 1-min load "
                      f"average {min(m['machine']['load_average_end'][0] for m in mine):.0f}–"
                      f"{max(m['machine']['load_average_end'][0] for m in mine):.0f} at the cells' ends.", ""]
        lines += ["| row | AR % | AUC | AUPRC | other output AUC | paper NIH AUC / AUPRC | train min |", "|---|---|---|---|---|---|---|"]
        for row, (_, ar, _) in ROWS.items():
            rs = [c for c in mine if c["row"] == row]
            op = rs[0]["operating_score"] if rs else "knn_angle"
            other = "score" if op == "knn_angle" else "knn_angle"
            paper = PAPER.get(row)
            minutes = f"{statistics.mean(c['train_seconds'] for c in rs) / 60:.1f}" if rs else "–"
            lines.append(f"| {row} | {ar * 100:.0f} | {_ms([c['test'][op]['auc'] for c in rs])} | "
                         f"{_ms([c['test'][op]['auprc'] for c in rs])} | {_ms([c['test'][other]['auc'] for c in rs])} | "
                         f"{f'{paper[0]:.3f} / {paper[1]:.3f}' if paper else '–'} | {minutes} |")
        if mine:
            names = list(mine[0]["floors"])
            lines += ["", "Floors (training-free, same films, preprocessing and bank normals; mean over the cells that ran):", "",
                      "| floor | AUC | AUPRC |", "|---|---|---|"]
            lines += [f"| {n} | {statistics.mean(c['floors'][n]['auc'] for c in mine):.3f} | "
                      f"{statistics.mean(c['floors'][n]['auprc'] for c in mine):.3f} |" for n in names]
        lines += ["", f"Decision rule on {dataset}: {decision(cells, dataset)}", ""]
    text = "\n".join(lines)
    (out / "table1.md").write_text(text, encoding="utf-8")
    return text


@click.group()
def main() -> None:
    """SALAD's Table 1 at CPU scale (resumable)."""


@main.command("run")
@click.option("--out", type=click.Path(path_type=Path), default=REPO / "benchmarks" / "results" / "table1", show_default=True)
@click.option("--work", type=click.Path(path_type=Path), default=Path("/tmp/salad-table1-runs"), show_default=True,
              help="Where run directories live while a cell trains (deleted after).")
@click.option("--only", multiple=True, help="DATASET/ROW/SEED cells to run (default: every cell, in plan order).")
@click.option("--limit", type=int, default=0, help="Stop after this many cells (0: all).")
@click.option("--shard", default="0/1", show_default=True,
              help="I/N: this worker takes every N-th cell of the plan from the I-th (two workers: 0/2 and 1/2).")
@click.option("--threads", type=int, default=1, show_default=True,
              help="torch threads per cell (1: two workers share the 2 cores, as the quality protocol runs).")
def run_command(out: Path, work: Path, only: tuple[str, ...], limit: int, shard: str, threads: int) -> None:
    """Train and measure cells not yet in --out, writing table1.md after each."""
    first, _, step = shard.partition("/")
    cells = [(d, r, int(s)) for d, r, s in (c.split("/") for c in only)] if only else plan()
    cells = cells[int(first) :: int(step)]
    for dataset, row, _ in cells:
        if dataset not in DATASETS or row not in ROWS:
            raise click.BadParameter(f"cell {dataset}/{row}: expected a dataset of {list(DATASETS)} and a row of {list(ROWS)}.")
    todo = [c for c in cells if not (out / f"{c[0]}-{c[1]}-s{c[2]}.json").exists()]
    if limit:
        todo = todo[:limit]
    for dataset, row, seed in tqdm(todo, desc="table 1 cells", unit="cell", file=sys.stderr):
        record = run_cell(dataset, row, seed, out, work, threads)
        tqdm.write(f"{dataset}/{row}/s{seed}: AUC {record['test'][record['operating_score']]['auc']:.3f} "
                   f"({record['train_seconds'] / 60:.1f} min)", file=sys.stderr)
        write_table(out)


@main.command("table")
@click.option("--out", type=click.Path(exists=True, path_type=Path), default=REPO / "benchmarks" / "results" / "table1")
def table_command(out: Path) -> None:
    """Write table1.md from the JSONs in --out and print it."""
    click.echo(write_table(out))


if __name__ == "__main__":
    main()
