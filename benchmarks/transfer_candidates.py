"""Scoring rules judged by the transfer protocol, post hoc on kept training runs (no retraining per rule).

    python benchmarks/transfer_candidates.py --runs RUNS_DIR --out benchmarks/results/transfer/candidates

For every kept run NAME-SPLIT-sSEED of `quality_protocol.py --keep-runs`, every candidate rule is scored on the
split's test films and, for `dev`, under every moderate acquisition shift and every compound one (several moderate
shifts at once: salad.acquisition.COMPOUND_SHIFTS). A rule's figure is its AUC on clean dev, its mean and worst AUC
over the shifts and over the compounds, and its AUC on each held-out acquisition group (`site-*` splits), beside
centre-minus-mean computed on the same films. Every rule is also scored with the run's network at its initial
weights (same seed, same bank films): the untrained-weights floor of that rule, so a rule's credit is what the
training adds to it. Rules (docs/quality.md, "A detector that transfers"):

- `embedding`: knn_angle of the 200-d embedding (the preset's rule);
- `positional-mean` / `positional-max`: the encoder's last feature map (head × head positions), each position's
  unit vector against the bank's same position (mean of the K smallest angles / π), averaged or maxed over positions;
- `density`: the film's 8 × 8 grid of mean density minus the film's mean (global exposure removed),
  each region standardised over the bank, mean Euclidean distance to the K nearest bank grids;
- `embedding|density wW`: knn_angle of one unit vector, the embedding beside the standardised density grid
  (divided by the square root of its length, times W): the form the existing scorer graph exports unchanged;
- `embedding+centre wW`: the embedding's rule plus W × centre-minus-mean (the one-number floor, signed), each
  standardised over the bank (the embedding's rule leave-one-out); `positional+centre` likewise;
- `embedding+density`, `positional+density`: each part standardised by the bank's own leave-one-out scores
  (mean and sd over the training normals), then summed.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
K = 100
SPECIFICITY = 0.95
#: Rules whose per-shift table is written: the cpu preset's (its centre-density tilt, train/tilt.py) and the one before it.
CHOSEN = ("embedding⊥centre w2.0 o2.0", "embedding")
#: Side of the density grid (8 × 8 regions of the preprocessed film; a train-free screen on dev: 0.870 against 0.842 at 4 × 4).
DENSITY_GRID = 8
#: Weights of the density grid beside the embedding in one joined unit vector (`embedding|density wW`).
JOIN_WEIGHTS = (0.5, 1.0)
#: Weights of the standardised centre term added to the standardised embedding rule (`embedding+centre wW`).
CENTRE_WEIGHTS = (0.5, 1.0, 2.0)
#: Weights of the centre term as an angle orthogonal to the embedding (`embedding⊥centre wW`).
TILT_WEIGHTS = (2.0, 4.0, 8.0)
#: Offsets (in standard deviations) below which the centre adds no angle: φ = W · σ · max(centre_z + O, 0).
TILT_OFFSETS = (0.0, 1.0, 2.0)
#: The pixel floors of salad.train.floors scored beside centre-minus-mean on every film set.
FLOORS = ("thumbnail8-knn", "thumbnail16-knn", "raw-pixel-knn")
#: Splits whose test films are the development patients' (dev_val.csv): scored under every shift and compound.
DEV_SPLITS = ("dev", "dev-ar")
#: Every split a kept run may be named after, longest first (so `site-dark-ar` is not read as `dev-ar`'s kin).
RUN_SPLITS = ("site-contrast-ar", "site-bright-ar", "site-dark-ar", "site-contrast", "site-bright", "site-dark",
              "dev-ar", "dev", "nih")

Features = dict[str, np.ndarray]


def _features(model: Any, films: np.ndarray, head: int) -> Features:
    """Embedding, last feature map (unit vector per position) and the density grid of preprocessed films."""
    enc = model.encoder
    emb, pos = [], []
    with torch.no_grad():
        for s in range(0, len(films), 128):
            x = torch.from_numpy(films[s : s + 128])
            fmap = enc.features(x)
            emb.append(torch.nn.functional.normalize(enc.project(fmap).flatten(1), dim=1).numpy())
            pos.append(torch.nn.functional.normalize(fmap.flatten(2).transpose(1, 2), dim=2).numpy())  # [B, P, C]
    grid = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(films), DENSITY_GRID).flatten(1).numpy()
    grid = grid - films.reshape(len(films), -1).mean(axis=1, keepdims=True)
    return {"embedding": np.concatenate(emb), "positional": np.concatenate(pos), "density": grid,
            "centre": centre_minus_mean(films)}


def _knn_angle(q: np.ndarray, bank: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    """Mean of the k smallest angles / π between unit rows q [M, D] and bank [N, D]."""
    ang = np.arccos(np.clip(q @ bank.T, -1.0, 1.0))
    if exclude_self:
        np.fill_diagonal(ang, np.inf)
    k = min(k, bank.shape[0] - int(exclude_self))
    return np.partition(ang, k - 1, axis=1)[:, :k].mean(axis=1) / np.pi


def _knn_dist(q: np.ndarray, bank: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    d2 = (q**2).sum(1)[:, None] + (bank**2).sum(1)[None, :] - 2.0 * q @ bank.T
    d = np.sqrt(np.maximum(d2, 0.0))
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    k = min(k, bank.shape[0] - int(exclude_self))
    return np.partition(d, k - 1, axis=1)[:, :k].mean(axis=1)


def _positional(q: np.ndarray, bank: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    """[M, P] per-position knn angles against the bank's same position."""
    return np.stack([_knn_angle(q[:, p], bank[:, p], k, exclude_self) for p in range(q.shape[1])], axis=1)


def rules(bank: Features, k: int) -> dict[str, Callable[[Features], np.ndarray]]:
    """Every candidate rule, closed over the bank (and its leave-one-out standardisation)."""
    mu_d, sd_d = bank["density"].mean(axis=0), bank["density"].std(axis=0) + 1e-6  # each region standardised
    bank = {**bank, "density": (bank["density"] - mu_d) / sd_d}
    raw: dict[str, Callable[[Features, bool], np.ndarray]] = {
        "embedding": lambda f, ex=False: _knn_angle(f["embedding"], bank["embedding"], k, ex),
        "positional-mean": lambda f, ex=False: _positional(f["positional"], bank["positional"], k, ex).mean(axis=1),
        "positional-max": lambda f, ex=False: _positional(f["positional"], bank["positional"], k, ex).max(axis=1),
        "density": lambda f, ex=False: _knn_dist((f["density"] - mu_d) / sd_d, bank["density"], k, ex),
        "centre": lambda f, ex=False: f["centre"],
    }

    def joined(f: Features, weight: float) -> np.ndarray:
        """One unit vector: the embedding beside the standardised density grid scaled to unit-order norm."""
        d = (f["density"] - mu_d) / sd_d if f is not bank else f["density"]
        v = np.concatenate([f["embedding"], weight * d / np.sqrt(d.shape[1])], axis=1)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    for w in JOIN_WEIGHTS:
        raw[f"embedding|density w{w}"] = lambda f, ex=False, w=w: _knn_angle(joined(f, w), joined(bank, w), k, ex)
    # The centre term as an angle orthogonal to the embedding: the query is [cos φ · e, sin φ] against bank rows
    # [m, 0], so each neighbour's angle is arccos(cos φ · cos θ_j) (a right spherical triangle: θ and φ add in
    # quadrature) and the existing knn_angle scorer computes the rule unchanged; φ = W · σ · max(centre_z, 0) with
    # σ the sd of the bank's leave-one-out knn angles (radians): only a denser-than-normal centre adds an angle.
    sigma = float(np.pi * _knn_angle(bank["embedding"], bank["embedding"], k, True).std())
    mu_c, sd_c = float(bank["centre"].mean()), float(bank["centre"].std() + 1e-12)

    def tilted(f: Features, weight: float, offset: float, ex: bool) -> np.ndarray:
        phi = np.clip(weight * sigma * np.maximum((f["centre"] - mu_c) / sd_c + offset, 0.0), 0.0, np.pi / 2)
        q = np.concatenate([np.cos(phi)[:, None] * f["embedding"], np.sin(phi)[:, None]], axis=1)
        b = np.concatenate([bank["embedding"], np.zeros((len(bank["embedding"]), 1))], axis=1)
        return _knn_angle(q, b, k, ex)

    for w in TILT_WEIGHTS:
        for o in TILT_OFFSETS:
            raw[f"embedding⊥centre w{w} o{o}"] = lambda f, ex=False, w=w, o=o: tilted(f, w, o, ex)
    loo = {name: fn(bank, True) for name, fn in raw.items()}
    stats = {name: (float(v.mean()), float(v.std() + 1e-12)) for name, v in loo.items()}

    def z(name: str) -> Callable[[Features], np.ndarray]:
        mu, sd = stats[name]
        return lambda f: (raw[name](f, False) - mu) / sd

    out: dict[str, Callable[[Features], np.ndarray]] = {
        name: (lambda f, fn=fn: fn(f, False)) for name, fn in raw.items() if name != "centre"}
    out["embedding+density"] = lambda f: z("embedding")(f) + z("density")(f)
    out["positional+density"] = lambda f: z("positional-mean")(f) + z("density")(f)
    for w in CENTRE_WEIGHTS:
        out[f"embedding+centre w{w}"] = lambda f, w=w: z("embedding")(f) + w * z("centre")(f)
    out["positional+centre"] = lambda f: z("positional-mean")(f) + z("centre")(f)
    out["embedding+positional+density"] = lambda f: z("embedding")(f) + z("positional-mean")(f) + z("density")(f)
    return out


def centre_minus_mean(films: np.ndarray) -> np.ndarray:
    """The one centre statistic (salad.train.tilt), on numpy films."""
    from salad.train.tilt import centre_minus_mean as centre

    return centre(torch.from_numpy(films)).numpy()


def evaluate_run(run_dir: Path, split: str) -> dict[str, Any]:
    """AUC of every rule (and centre-minus-mean) on the split's test films, and under each shift for dev."""
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    from quality_protocol import SPLIT_FILES, SPLITS

    from salad.acquisition import COMPOUND_SHIFTS, shifts
    from salad.data import read_samples
    from salad.imageio import read_image
    from salad.preprocess import preprocess
    from salad.train.evaluate import load_run
    from salad.train.floors import floors
    from salad.train.models import SaladAutoencoder

    loaded = load_run(run_dir)
    head = loaded.model.config.head
    pixel_floors = [f for f in floors(loaded.model.config, K, 0) if f.name in FLOORS]
    torch.manual_seed(int(run_dir.name.rpartition("-s")[2]))  # the initial weights, as salad.train.floors builds them
    nets = {"trained": loaded.model.eval(), "untrained": SaladAutoencoder(loaded.model.config).eval()}
    bank_samples = [s for s in read_samples(run_dir / "train.csv") if s.label == 0]
    train = np.stack([preprocess(read_image(s.path), loaded.preprocessing) for s in bank_samples])
    scorers = {net: rules(_features(model, train, head), K) for net, model in nets.items()}
    test = read_samples(SPLITS / SPLIT_FILES[split][1])
    labels = np.array([s.label for s in test])
    raw = [read_image(s.path) for s in test]

    # Each rule's operating threshold: 95 % specificity on the run's own validation normals (as export chooses it).
    val = [s for s in read_samples(run_dir / "val.csv") if s.label == 0]
    val_f = _features(loaded.model, np.stack([preprocess(read_image(s.path), loaded.preprocessing) for s in val]), head)
    thresholds = {name: float(np.quantile(fn(val_f), SPECIFICITY)) for name, fn in scorers["trained"].items()}

    def judge(films: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
        f = _features(loaded.model, films, head)
        scores = {name: fn(f) for name, fn in scorers["trained"].items()}
        auc = {name: float(roc_auc_score(labels, v)) for name, v in scores.items()}
        auc["centre-minus-mean"] = float(roc_auc_score(labels, centre_minus_mean(films)))
        for floor in pixel_floors:  # training-free floors on the same films and bank (salad.train.floors)
            auc[floor.name] = float(roc_auc_score(labels, floor.score(train, films)))
        f0 = _features(nets["untrained"], films, head)
        auc.update({f"untrained:{name}": float(roc_auc_score(labels, fn(f0))) for name, fn in scorers["untrained"].items()})
        fpr = {name: float((v[labels == 0] > thresholds[name]).mean()) for name, v in scores.items()}
        return auc, fpr

    record: dict[str, Any] = {"split": split, "n_bank": len(bank_samples), "n_normal": int((labels == 0).sum()),
                              "n_abnormal": int((labels == 1).sum()), "k": K, "n_val_normal": len(val)}
    record["clean"], record["clean_fpr"] = judge(np.stack([preprocess(img, loaded.preprocessing) for img in raw]))
    if split in DEV_SPLITS:
        for key, specs in (("shifts", shifts("moderate")), ("compounds", list(COMPOUND_SHIFTS))):
            record[key], record[f"{key}_fpr"] = {}, {}
            for spec in tqdm(specs, desc=f"{run_dir.name} {key}", leave=False):
                shifted = np.stack([preprocess(spec.apply(img, i), loaded.preprocessing) for i, img in enumerate(raw)])
                record[key][spec.name], record[f"{key}_fpr"][spec.name] = judge(shifted)
    return record


def finished(run_dir: Path) -> bool:
    """Whether the run's checkpoint is its last (training writes one every epoch; `finished` marks the end)."""
    from salad.train.trainer import load_checkpoint

    return bool(load_checkpoint(run_dir / "checkpoint.pt").get("finished"))


def _ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _margin(floor: float) -> float:
    """The protocol's margin over a floor: min(0.05, half its distance to 1) (docs/quality.md)."""
    return min(0.05, (1.0 - floor) / 2.0)


def _columns(rs: list[dict[str, Any]], sites: list[str], name: str) -> list[list[float]]:
    """Per column (dev clean, shifts mean/worst, compounds mean/worst, each site): one value per seed ([] if none)."""
    dev = [r for r in rs if r["split"] in DEV_SPLITS]
    cols = [[r["clean"][name] for r in dev]]
    for key in ("shifts", "compounds"):
        runs = [r for r in dev if key in r]
        cols += [[statistics.mean(v[name] for v in r[key].values()) for r in runs],
                 [min(v[name] for v in r[key].values()) for r in runs]]
    return cols + [[r["clean"][name] for r in rs if r["split"] in (site, site + "-ar")] for site in sites]


def _rule_table(rs: list[dict[str, Any]], sites: list[str]) -> list[str]:
    """Rows: every rule trained, then at its initial weights, then the floors; *credit* checks the margin."""
    floor_names = [n for n in ("centre-minus-mean", *FLOORS) if n in rs[0]["clean"]]
    names = [n for n in rs[0]["clean"] if not n.startswith("untrained:") and n not in floor_names]
    lines = ["| rule | dev clean | dev shifts mean | dev shifts worst | dev compounds mean | dev compounds worst | "
             + "".join(f"{site} | " for site in sites) + "worst of all | beats own untrained & floors |",
             "|---|---|---|---|---|---|" + "---|" * len(sites) + "---|---|"]
    best = [max(statistics.mean(c) for c in col) if all(col) else None  # the best training-free floor per column
            for col in zip(*(_columns(rs, sites, f) for f in floor_names), strict=True)]
    for name in [*names, *(f"untrained:{n}" for n in names), *floor_names]:
        cols = _columns(rs, sites, name)
        means = [statistics.mean(c) if c else None for c in cols]
        credit = "–"
        if not name.startswith("untrained:") and name not in floor_names:
            floor = [statistics.mean(c) if c else None for c in _columns(rs, sites, f"untrained:{name}")]
            beats = [m >= max(f, c) + _margin(max(f, c)) for m, f, c in zip(means, floor, best, strict=True)
                     if m is not None and f is not None and c is not None]
            credit = "yes" if all(beats) else "no"
        worst = min(m for m in means if m is not None)
        lines.append(f"| {name} | " + " | ".join(_ms(c) if c else "–" for c in cols) + f" | {worst:.3f} | {credit} |")
    return lines


def summarise(records: list[dict[str, Any]]) -> str:
    """One table per recipe: rows are rules (trained, untrained), columns clean, shifts, compounds, held-out groups."""
    sites = sorted({r["split"].removesuffix("-ar") for r in records if r["split"].startswith("site-")})
    lines = ["# Scoring rules under the transfer protocol", "",
             "Written by `python benchmarks/transfer_candidates.py`. AUC, mean ± sd over seeds. *shifts mean / worst*: "
             "over the 13 moderate acquisition shifts of the dev test films (the worst shift per seed, then averaged); "
             "*compounds*: the same over the 4 compound shifts (several moderate shifts at once, "
             "salad.acquisition.COMPOUND_SHIFTS). `site-*`: one acquisition group of the development patients held out "
             "whole (benchmarks/pseudo_sites.py); the bank is the other groups' normals. `untrained:` rows score the "
             "same rule with the run's network at its initial weights (same seed); centre-minus-mean is the one-number "
             "floor and thumbnail / raw-pixel kNN the pixel floors (salad.train.floors), on the same films and bank. "
             "*beats own untrained & floors*: the rule's mean exceeds its own untrained mean and every floor's mean by "
             "min(0.05, half the floor's distance to 1) in every column.", ""]
    for recipe in dict.fromkeys(r["recipe"] for r in records):
        rs = [r for r in records if r["recipe"] == recipe]
        lines += [f"## {recipe}", "", *_rule_table(rs, sites)]
        lines += ["", f"Seeds: {sorted({r['seed'] for r in rs})}; runs: {len(rs)}.", ""]
        dev = [r for r in rs if r["split"] in DEV_SPLITS and "shifts_fpr" in r]
        for name in (n for n in CHOSEN if dev and n in dev[0]["clean"]):
            lines += _fpr_table(dev, name)
    return "\n".join(lines) + "\n"


def _fpr_table(dev: list[dict[str, Any]], name: str) -> list[str]:
    """AUC and false-positive rate of shifted normals under each shift and compound, against twice the clean rate."""
    clean_fpr = statistics.mean(r["clean_fpr"][name] for r in dev)
    lines = [f"### `{name}` on dev under each moderate shift and compound", "",
             f"False-positive rate of the normals at the rule's threshold (95 % specificity on each run's validation "
             f"normals): clean {clean_fpr:.3f}; *≤ 2×* compares each shift with twice that.", "",
             "| shift | AUC | same rule, untrained | centre-minus-mean | FPR of shifted normals | ≤ 2× clean |",
             "|---|---|---|---|---|---|"]
    for key in ("shifts", "compounds"):
        runs = [r for r in dev if key in r]
        for shift in (runs[0][key] if runs else {}):
            fpr = statistics.mean(r[f"{key}_fpr"][shift][name] for r in runs)
            untrained = [r[key][shift].get(f"untrained:{name}") for r in runs]
            lines.append(f"| {shift} | {_ms([r[key][shift][name] for r in runs])} | "
                         f"{_ms([u for u in untrained if u is not None]) if all(u is not None for u in untrained) else '–'} | "
                         f"{_ms([r[key][shift]['centre-minus-mean'] for r in runs])} | "
                         f"{_ms([r[f'{key}_fpr'][shift][name] for r in runs])} | {'yes' if fpr <= 2 * clean_fpr else '**no**'} |")
    return [*lines, ""]


@click.command()
@click.option("--runs", type=click.Path(path_type=Path, exists=True), required=True, help="Kept run directories.")
@click.option("--out", type=click.Path(path_type=Path), default=REPO / "benchmarks/results/transfer/candidates")
@click.option("--match", default="", help="Only run directories whose name contains this.")
def main(runs: Path, out: Path, match: str) -> None:
    """Score every kept run with every candidate rule; write one JSON per run and OUT/summary.md."""
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    for run_dir in sorted(p for p in runs.iterdir() if p.is_dir() and match in p.name and (p / "checkpoint.pt").exists()):
        target = out / f"{run_dir.name}.json"
        if target.exists() or not finished(run_dir):
            continue  # scored already, or still training (its checkpoint is an epoch's, not the run's)
        stem, _, seed = run_dir.name.rpartition("-s")
        split = next(s for s in RUN_SPLITS if stem.endswith("-" + s))
        record = {"run": run_dir.name, "recipe": stem[: -len(split) - 1], "seed": int(seed), **evaluate_run(run_dir, split)}
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, target)
        click.echo(f"{run_dir.name}: " + ", ".join(f"{k} {v:.3f}" for k, v in record["clean"].items()), err=True)
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    if records:
        (out / "summary.md").write_text(summarise(records))
        click.echo((out / "summary.md").read_text())


if __name__ == "__main__":
    main()
