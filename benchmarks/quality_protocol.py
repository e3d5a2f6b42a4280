"""Detector quality protocol: a recipe × seeds on one split, beside its training-free floors and under shifts.

    python benchmarks/quality_protocol.py --recipe cpu --split dev --seeds 0,1,2 --out benchmarks/results/quality/protocol
    python benchmarks/quality_protocol.py --recipe cpu --set crop=0.8 --set intensity_mode=zscore --name cpu-crop-z ...
    python benchmarks/quality_protocol.py --summary benchmarks/results/quality/protocol   # tables of every JSON there

Splits (benchmarks/splits/, patient-disjoint): `dev` trains on dev_train's normals and tests on dev_val (the only
split recipes are chosen on); `holdout` trains on kermany_train's normals and tests on kermany_holdout; `nih`
trains on the NIH training patients' normals and tests on the NIH held-out patients, reported per view (view and
class are confounded there). Each run writes NAME-SPLIT-sSEED.json: AUC of both outputs, every floor computed
with the recipe's own preprocessing and bank, and with --robustness the AUC under each acquisition shift and the
false-positive rate of shifted normals at the run's threshold (95 % specificity on its validation normals).
Resumable: a run whose JSON exists is not trained again.
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
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
SPLITS = REPO / "benchmarks" / "splits"
SPLIT_FILES = {
    "dev": ("dev_train.csv", "dev_val.csv"),
    "holdout": ("kermany_train.csv", "kermany_holdout.csv"),
    "nih": ("nih_train.csv", "nih_holdout.csv"),
    # The NIH development split (the NIH training patients split 70/30): where NIH-specific choices are made.
    "nih-dev": ("nih_dev_train.csv", "nih_dev_val.csv"),
    # The same, with a bank of PA normals only (PA films are the standard view; portable AP normals are not).
    "nih-dev-pa": ("nih_dev_train_pa.csv", "nih_dev_val.csv"),
    # The paper's known-anomaly setting on dev: dev_train's normals + pneumonia films of other patients to draw from.
    "dev-ar": ("dev_train_ar.csv", "dev_val.csv"),
    # Pseudo-sites (benchmarks/pseudo_sites.py): one acquisition group of the development patients held out whole.
    "site-dark": ("site_dark_train.csv", "site_dark_test.csv"),
    "site-bright": ("site_bright_train.csv", "site_bright_test.csv"),
    "site-contrast": ("site_contrast_train.csv", "site_contrast_test.csv"),
    # The same groups with pneumonia films of the other groups' patients to draw known anomalies from (cpu-ar).
    "site-dark-ar": ("site_dark_train_ar.csv", "site_dark_test.csv"),
    "site-bright-ar": ("site_bright_train_ar.csv", "site_bright_test.csv"),
    "site-contrast-ar": ("site_contrast_train_ar.csv", "site_contrast_test.csv"),
}
SPECIFICITY = 0.95
#: Neighbour counts whose operating AUC is recorded beside the recipe's own K (choosing K on dev needs no retraining).
K_SWEEP = (1, 3, 5, 10, 20, 50, 100)


def recipe_config(recipe: str, overrides: list[str], seed: int, threads: int) -> Any:
    """The TrainConfig of a preset with KEY=VALUE overrides (augment.FIELD for augmentation)."""
    from salad.train.datasets import AugmentConfig
    from salad.train.trainer import PRESETS

    cfg = PRESETS[recipe]
    augment = dataclasses.asdict(cfg.augment)
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    changes: dict[str, Any] = {}
    for item in overrides:
        key, _, text = item.partition("=")
        try:
            value: Any = json.loads(text)  # numbers, true/false, lists
        except json.JSONDecodeError:
            value = text  # a plain word: a mode name
        if key.startswith("augment."):
            augment[key.split(".", 1)[1]] = value
        elif key in fields:
            changes[key] = value
        else:
            raise click.BadParameter(f"--set {item}: no field {key!r}; fields: {sorted(fields)} or augment.*")
    return dataclasses.replace(cfg, **changes, augment=AugmentConfig(**augment), seed=seed, threads=threads)


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(labels, scores))


def _preprocessed(raw: list[np.ndarray], pcfg: Any) -> np.ndarray:
    from salad.preprocess import preprocess

    return np.stack([preprocess(img, pcfg) for img in raw])


def evaluate_set(run_dir: Path, loaded: Any, train_raw: list[np.ndarray], films: np.ndarray, labels: np.ndarray,
                 threshold: float, seed: int, k: int) -> dict[str, Any]:
    """AUC of both outputs and of every floor on preprocessed films; FPR of the normals at the run's threshold."""
    import torch

    from salad.scoring import by_name, score_torch
    from salad.train.floors import floors
    from salad.train.trainer import embed_all

    z = embed_all(loaded.model, torch.from_numpy(films))
    outputs = {n: v.numpy() for n, v in by_name(score_torch(z, loaded.bank, loaded.score_k)).items()}
    row: dict[str, Any] = {"auc": {n: _auc(labels, v) for n, v in outputs.items()}}
    operating = outputs[loaded.score_name]
    row["fpr_normals"] = float((operating[labels == 0] >= threshold).mean())
    train = _preprocessed(train_raw, loaded.preprocessing)
    row["floors"] = {f.name: _auc(labels, f.score(train, films)) for f in floors(loaded.model.config, k, seed)}
    ks = [n for n in K_SWEEP if n <= len(loaded.bank)]
    row["k_sweep"] = {str(n): _auc(labels, by_name(score_torch(z, loaded.bank, n))[loaded.score_name].numpy()) for n in ks}
    return row


def nih_views(samples: list[Any]) -> dict[str, list[int]]:
    """Indices of the NIH held-out films per view position (from the shared manifest)."""
    import csv

    manifest = REPO.parent / "shared" / "data" / "nih-cxr" / "manifest.csv"
    view = {}
    with open(manifest, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            view[Path(r["path"]).name] = r["view_position"]
    out: dict[str, list[int]] = {"PA": [], "AP": []}
    for i, s in enumerate(samples):
        out.setdefault(view.get(Path(s.path).name, "?"), []).append(i)
    return out


def run_one(name: str, recipe: str, overrides: list[str], split: str, seed: int, out: Path, threads: int,
            robustness: bool, keep_runs: Path | None) -> dict[str, Any]:
    """Train one seed of a recipe on a split and measure it; returns (and writes) its JSON record."""
    import torch

    from salad.acquisition import COMPOUND_SHIFTS, shifts
    from salad.data import read_samples
    from salad.imageio import read_image
    from salad.preprocess import preprocess
    from salad.runtime.bench import machine_info
    from salad.train.evaluate import load_run
    from salad.train.trainer import train_run

    target = out / f"{name}-{split}-s{seed}.json"
    if target.exists():
        return dict(json.loads(target.read_text()))
    train_csv, test_csv = (SPLITS / f for f in SPLIT_FILES[split])
    cfg = recipe_config(recipe, overrides, seed, threads)
    torch.set_num_threads(threads)
    run_dir = (keep_runs or out / ".runs") / f"{name}-{split}-s{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    summary = train_run(train_csv, run_dir, cfg, force=True)
    train_seconds = time.perf_counter() - t0
    loaded = load_run(run_dir)
    with np.load(run_dir / "val_scores.npz", allow_pickle=False) as v:
        val_normal = v[loaded.score_name][v["label"] == 0]
    threshold = float(np.quantile(val_normal, SPECIFICITY))
    bank_samples = read_samples(run_dir / "train.csv")
    train_raw = [read_image(s.path) for s in bank_samples if s.label == 0]
    test = read_samples(test_csv)
    labels = np.array([s.label for s in test])
    raw = [read_image(s.path) for s in test]
    films = np.stack([preprocess(img, loaded.preprocessing) for img in raw])
    record: dict[str, Any] = {
        "schema": "salad-quality-run/1", "name": name, "recipe": recipe, "overrides": overrides, "split": split,
        "seed": seed, "threads": threads, "train": str(train_csv.relative_to(REPO)), "test": str(test_csv.relative_to(REPO)),
        "n_train": len(bank_samples), "n_normal": int((labels == 0).sum()), "n_abnormal": int((labels == 1).sum()),
        "config": cfg.to_dict(), "operating_score": loaded.score_name, "train_seconds": train_seconds,
        "val_auc": summary.get("val_auc"), "threshold": threshold,
        "machine": {"cpu": machine_info()["cpu"], "python": platform.python_version(), "torch": torch.__version__},
    }
    record["clean"] = evaluate_set(run_dir, loaded, train_raw, films, labels, threshold, seed, cfg.score_k)
    if split.startswith("nih"):
        record["by_view"] = {}
        for view, idx in nih_views(test).items():
            if len(set(labels[idx].tolist())) == 2:
                record["by_view"][view] = evaluate_set(run_dir, loaded, train_raw, films[idx], labels[idx], threshold, seed, cfg.score_k)
    if robustness:  # every moderate shift, then every compound (several at once: another acquisition)
        for key, specs in (("shifts", shifts("moderate")), ("compounds", list(COMPOUND_SHIFTS))):
            record[key] = {}
            for spec in tqdm(specs, desc=key, leave=False):
                shifted = np.stack([preprocess(spec.apply(img, i), loaded.preprocessing) for i, img in enumerate(raw)])
                record[key][spec.name] = {"description": spec.description, **evaluate_set(
                    run_dir, loaded, train_raw, shifted, labels, threshold, seed, cfg.score_k)}
    out.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, target)
    if keep_runs is None:
        shutil.rmtree(run_dir, ignore_errors=True)
    return record


def _ms(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def margin(floor: float) -> float:
    """The acceptance margin over a floor (the one export applies: salad.train.trainer.floor_margin)."""
    from salad.train.trainer import floor_margin

    return floor_margin(floor)


def _shift_table(rows: list[dict[str, Any]], split: str, key: str, what: str) -> list[str]:
    """Per recipe: the operating AUC under each shift of `key` beside the best floor under the same shift."""
    lines: list[str] = []
    with_key = [r for r in rows if key in r]
    for name in dict.fromkeys(r["name"] for r in with_key):
        rs = [r for r in with_key if r["name"] == name]
        op = rs[0]["operating_score"]
        lines += [f"### {name} on {split} under {what}", "",
                  "| shift | operating AUC | best floor (name) | margin met | FPR of shifted normals |", "|---|---|---|---|---|"]
        for shift in rs[0][key]:
            learned = [r[key][shift]["auc"][op] for r in rs]
            floors = {f: statistics.mean(r[key][shift]["floors"][f] for r in rs) for f in rs[0][key][shift]["floors"]}
            best = max(floors, key=lambda f: floors[f])
            met = statistics.mean(learned) >= floors[best] + margin(floors[best])
            lines.append(f"| {shift} ({rs[0][key][shift]['description']}) | {_ms(learned)} | {floors[best]:.3f} ({best}) | "
                         f"{'yes' if met else 'no'} | {_ms([r[key][shift]['fpr_normals'] for r in rs])} |")
        lines.append("")
    return lines


def summarise(folder: Path) -> str:
    """One markdown table per split: each recipe's mean ± sd over seeds beside each floor and the verdict."""
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    lines = ["# Detector quality protocol", "",
             "Written by `python benchmarks/quality_protocol.py --summary`. Mean ± sd over seeds; every floor is computed "
             "with the recipe's own preprocessing and bank. *beats floors* = the operating score's mean AUC exceeds every "
             "floor's mean by min(0.05, half the floor's distance to 1), which is the acceptance margin.", ""]
    for split in SPLIT_FILES:
        rows = [r for r in runs if r.get("split") == split]
        if not rows:
            continue
        lines += [f"## {split}: train `{rows[0]['train']}` normals → test `{rows[0]['test']}` "
                  f"({rows[0]['n_normal']} normal / {rows[0]['n_abnormal']} abnormal)", ""]
        floor_names = list(rows[0]["clean"]["floors"])
        lines.append(
            "| recipe | seeds | operating AUC | other output | " + " | ".join(floor_names) + " | beats floors | FPR normals | train min |"
        )
        lines.append("|---|---|---|---|" + "---|" * len(floor_names) + "---|---|---|")
        for name in dict.fromkeys(r["name"] for r in rows):
            rs = [r for r in rows if r["name"] == name]
            op = rs[0]["operating_score"]
            other = next(n for n in rs[0]["clean"]["auc"] if n != op)
            learned = [r["clean"]["auc"][op] for r in rs]
            floors = {f: [r["clean"]["floors"][f] for r in rs] for f in floor_names}
            ok = all(statistics.mean(learned) >= statistics.mean(v) + margin(statistics.mean(v)) for v in floors.values())
            lines.append(
                f"| {name} | {len(rs)} | {_ms(learned)} (`{op}`) | {_ms([r['clean']['auc'][other] for r in rs])} | "
                + " | ".join(_ms(v) for v in floors.values())
                + f" | {'yes' if ok else 'no'} | {_ms([r['clean']['fpr_normals'] for r in rs])} | "
                f"{statistics.mean(r['train_seconds'] for r in rs) / 60:.1f} |"
            )
        lines.append("")
        for key, what in (("shifts", "moderate acquisition shifts"), ("compounds", "compound shifts (several at once)")):
            lines += _shift_table(rows, split, key, what)
        by_view = [r for r in rows if "by_view" in r]
        for name in dict.fromkeys(r["name"] for r in by_view):
            rs = [r for r in by_view if r["name"] == name]
            op = rs[0]["operating_score"]
            lines += [f"### {name} on {split}, per view", "", "| view | operating AUC | " + " | ".join(floor_names) + " |",
                      "|---|---|" + "---|" * len(floor_names)]
            for view in rs[0]["by_view"]:
                lines.append(f"| {view} | {_ms([r['by_view'][view]['auc'][op] for r in rs])} | "
                             + " | ".join(_ms([r["by_view"][view]["floors"][f] for r in rs]) for f in floor_names) + " |")
            lines.append("")
    machines = sorted({r["machine"]["cpu"] for r in runs})
    lines.append(f"Machines: {', '.join(machines)}; threads per run: {sorted({r['threads'] for r in runs})}.")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--recipe", default="cpu", show_default=True, help="Preset the recipe starts from.")
@click.option("--set", "overrides", multiple=True, help="KEY=VALUE override of a TrainConfig field (augment.FIELD too).")
@click.option("--name", default=None, help="Name of the recipe in the tables (default: the preset's).")
@click.option("--split", type=click.Choice(list(SPLIT_FILES)), default="dev", show_default=True)
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--robustness", is_flag=True, help="Also measure every moderate acquisition shift.")
@click.option("--out", type=click.Path(path_type=Path), default=REPO / "benchmarks/results/quality/protocol", show_default=True)
@click.option("--keep-runs", type=click.Path(path_type=Path), default=None, help="Keep the run directories here.")
@click.option("--summary", "summary_only", is_flag=True, help="Only rewrite OUT/summary.md from the JSON files in OUT.")
def main(recipe: str, overrides: tuple[str, ...], name: str | None, split: str, seeds: str, threads: int,
         robustness: bool, out: Path, keep_runs: Path | None, summary_only: bool) -> None:
    """Train and measure a recipe over seeds on one split; write per-run JSON and OUT/summary.md."""
    if not summary_only:
        for seed in [int(s) for s in seeds.split(",")]:
            rec = run_one(name or recipe, recipe, list(overrides), split, seed, out, threads, robustness, keep_runs)
            op = rec["operating_score"]
            floors = ", ".join(f"{k} {v:.3f}" for k, v in rec["clean"]["floors"].items())
            click.echo(f"{rec['name']} {split} seed {seed}: AUC {rec['clean']['auc'][op]:.3f} ({op}); floors: {floors}; "
                       f"{rec['train_seconds'] / 60:.1f} min", err=True)
    (out / "summary.md").write_text(summarise(out))
    click.echo((out / "summary.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
