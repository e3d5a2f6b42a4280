"""Confirmed-normal spot checks (issue 30): does `salad score --drift --confirmed-normal` warn when a site's false-positive
rate has risen, and stay quiet when it has not?

    python benchmarks/spot_check.py bundle      # the CPU preset trained on the Kermany training-patient normals, exported
    python benchmarks/spot_check.py score       # the bundle's labels on same-site normals, NIH normals and shifted normals
    python benchmarks/spot_check.py report      # bootstrap draws of 50 confirmed normals per population → results
    python benchmarks/spot_check.py all         # every stage; resumable (finished stages are read back)

Stages write into runs/spot-check/ (run, bundle, per-film labels; not committed) and the committed results
(spot_check.json / .md) into benchmarks/results/drift/.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from site_similarity import salad_bin, site_rows, write_csv  # noqa: E402 - a sibling script's helpers

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "drift"
WORK = REPO / "runs" / "spot-check"  # ignored by git (/runs/)
BUNDLE = WORK / "bundle"
RUN = WORK / "run"


def stage_bundle(threads: int, seed: int = 0) -> dict[str, Any]:
    """Train the CPU preset on the Kermany training-patient normals (its default 10 % validation normals by patient set
    the threshold at 95 % specificity) and export it; skipped when the bundle exists."""
    record = WORK / "bundle.json"
    if (BUNDLE / "manifest.json").exists() and record.exists():
        return dict(json.loads(record.read_text()))
    rows = [r for r in site_rows("kermany")["train"] if r["label"] == "0"]
    data = write_csv(rows, WORK / "kermany-train-normals.csv")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    subprocess.run([salad_bin(), "train", "--data", str(data), "--preset", "cpu", "--threads", str(threads), "--seed", str(seed),
                    "--out", str(RUN), "--force"], check=True, env=env)
    seconds = time.perf_counter() - t0
    subprocess.run([salad_bin(), "export", str(RUN), "--out", str(BUNDLE), "--force", "--slim"], check=True, env=env)
    out = {"train_normals": len(rows), "train_seconds": seconds, "threads": threads, "seed": seed, "preset": "cpu",
           "machine": platform.processor() or platform.machine()}
    record.write_text(json.dumps(out, indent=2) + "\n")
    return out


NIH = REPO.parent / "shared" / "data" / "nih-cxr"
#: 50 confirmed normals per spot check (issue 30, acceptance 1); bootstrap draws per population.
CONFIRMED, DRAWS = 50, 10000
#: Films per population for a smoke test (--limit); None: all.
LIMIT: int | None = None


def populations() -> dict[str, list[tuple[str, int]]]:
    """(path, truth) per real population: the run's validation normals (the threshold's films), the held-out Kermany
    patients, and every NIH film by view (NIH is another hospital: the bundle never saw it)."""
    import csv

    with open(RUN / "val.csv", newline="", encoding="utf-8") as fh:
        val = [(r["path"], int(r["label"])) for r in csv.DictReader(fh)]
    with open(NIH / "manifest.csv", newline="", encoding="utf-8") as fh:
        nih = list(csv.DictReader(fh))
    return {"kermany-validation": [(p, y) for p, y in val if y == 0],
            "kermany-holdout": [(r["path"], int(r["label"])) for r in site_rows("kermany")["holdout"]],
            **{f"nih-{v.lower()}": [(str(NIH / r["path"]), int(r["label"])) for r in nih if r["view_position"] == v]
               for v in ("PA", "AP")}}


def stage_score() -> dict[str, Any]:
    """Operating score and exposure of every film of every population, and of the held-out Kermany films under each
    acquisition shift of salad/acquisition.py (all strengths); written per population to scores.npz."""
    from salad.acquisition import SHIFTS
    from salad.drift import exposure
    from salad.imageio import read_image
    from salad.preprocess import preprocess
    from salad.runtime import Scorer

    path = WORK / "scores.npz"
    if path.exists():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    out: dict[str, np.ndarray] = {}
    with Scorer.from_bundle(BUNDLE) as scorer:
        cfg = scorer.preprocess_config

        def measure(name: str, films: list[np.ndarray], truth: np.ndarray) -> None:
            results = scorer.score(films)
            out[f"{name}/score"] = np.array([r.scores[scorer.threshold_score] for r in results])
            out[f"{name}/flagged"] = np.array([r.label for r in results], dtype=np.int8)
            out[f"{name}/truth"] = truth
            out[f"{name}/exposure"] = np.array([exposure(preprocess(f, cfg)) for f in films])
            print(f"{name}: {len(films)} films, normals flagged {out[f'{name}/flagged'][truth == 0].mean():.3f}", flush=True)

        for name, rows in populations().items():
            rows = rows[:: max(1, len(rows) // LIMIT)] if LIMIT else rows
            films = [read_image(p) for p, _ in rows]
            truth = np.array([y for _, y in rows], dtype=np.int8)
            measure(name, films, truth)
            if name == "kermany-holdout":
                for spec in SHIFTS:
                    measure(f"{name}+{spec.name}-{spec.strength}", [spec.apply(f, i) for i, f in enumerate(films)], truth)
        out["threshold"] = np.array(scorer.threshold)
    np.savez(path, **out)  # type: ignore[arg-type]  # numpy's stub takes **kwds as allow_pickle
    return out


#: Abnormal shares of the label-free windows (issue 30: false alarms ≤ 1 % on same-site windows with 10–40 % abnormal).
SHARES = (0.0, 0.1, 0.2, 0.4)
WINDOW_DRAWS = 2000


def _auc(score: np.ndarray, truth: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(truth, score)) if 0 < truth.sum() < len(truth) else None


def spot_rows(data: dict[str, np.ndarray], design: float, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Per population: the normals' FPR (exact 95 % CI), AUC, and the spot check's warn rate over bootstrap draws of
    CONFIRMED normals (through salad.spotcheck.Estimate), beside the binomial power at the measured FPR."""
    from salad.spotcheck import WARN_MULTIPLE, Estimate, clopper_pearson, films_needed, warn_probability

    rows = []
    for name in sorted({k.split("/")[0] for k in data if "/" in k}):
        truth, flagged = data[f"{name}/truth"], data[f"{name}/flagged"]
        normal = flagged[truth == 0].astype(int)
        fpr = float(normal.mean())
        draws = normal[rng.integers(0, len(normal), (DRAWS, CONFIRMED))].sum(axis=1)
        warned = float(np.mean([Estimate.of(int(x), CONFIRMED, WARN_MULTIPLE * design).warn for x in draws]))
        lo, hi = clopper_pearson(int(normal.sum()), len(normal))
        rows.append({"population": name, "normals": len(normal), "abnormals": int(truth.sum()), "fpr": fpr, "fpr_ci": [lo, hi],
                     "fpr_multiple": fpr / design, "auc": _auc(data[f"{name}/score"], truth), "warn_rate": warned,
                     "warn_probability": warn_probability(CONFIRMED, fpr, design),
                     "films_needed": films_needed(design, fpr / design) if fpr > WARN_MULTIPLE * design else None})
    return rows


def window_rows(data: dict[str, np.ndarray], rng: np.random.Generator) -> list[dict[str, Any]]:
    """The label-free guard (score and exposure checks, the bundle's own calibration) on windows of each population:
    detection rate (any check warns) per window size and abnormal share; on the held-out Kermany films, false alarms."""
    from salad.onsite.drift import DriftGuard

    guard = DriftGuard.from_bundle(BUNDLE)
    values = {"score": "score", "brighter": "exposure", "darker": "exposure"}
    rows = []
    for name in sorted({k.split("/")[0] for k in data if "/" in k}):
        truth = data[f"{name}/truth"]
        normal, abnormal = np.flatnonzero(truth == 0), np.flatnonzero(truth == 1)
        for size in guard.policy.sizes:
            for share in SHARES:
                a = round(share * size)
                if a and not len(abnormal):
                    continue
                idx = np.concatenate([normal[rng.integers(0, len(normal), (WINDOW_DRAWS, size - a))],
                                      abnormal[rng.integers(0, max(len(abnormal), 1), (WINDOW_DRAWS, a))]], axis=1)
                warn = np.zeros(WINDOW_DRAWS, dtype=bool)
                per_check = {}
                for check, cal in guard.calibrations.items():
                    w = cal.warn_windows(data[f"{name}/{values[check]}"][idx], guard.policy, size)
                    per_check[check] = float(w.mean())
                    warn |= w
                rows.append({"population": name, "size": size, "abnormal_share": share, "warn_rate": float(warn.mean()),
                             "per_check": per_check})
    return rows


def best_possible(design: float, n: int, false_alarm: float = 0.01, multiple: float = 2.0) -> dict[str, Any]:
    """The limit of any count rule at n confirmed normals (Neyman–Pearson: "warn at ≥ c flagged" is the most powerful
    test of design against multiple × design): its power at multiple × design when its false alarms at the design rate are
    ≤ false_alarm, and the fewest films at which that power reaches 95 %."""
    from salad.spotcheck import sf

    def power(m: int) -> float:
        c = next(c for c in range(m + 2) if sf(c, m, design) <= false_alarm)
        return sf(c, m, multiple * design)

    needed = next((m for m in range(n, 5000) if power(m) >= 0.95), None)
    return {"films": n, "false_alarm_at_design": false_alarm, "fpr_multiple": multiple, "power": power(n),
            "films_for_95_percent": needed}


def stage_report() -> dict[str, Any]:
    """The committed results: spot_check.json and spot_check.md."""
    from salad.manifest import read_manifest
    from salad.spotcheck import POWER_TARGET, WARN_MULTIPLE, false_alarm_curve, films_needed, warn_count

    data = stage_score()
    manifest = read_manifest(BUNDLE, verify=False)
    from salad.spotcheck import design_rate

    design, source = design_rate(manifest.threshold.to_json())
    rng = np.random.default_rng(30)
    spots = spot_rows(data, design, rng)
    same = [r for r in spots if r["population"] in ("kermany-holdout", "kermany-validation")]
    shifted = [r for r in spots if r["fpr"] >= WARN_MULTIPLE * design and r not in same]
    result = {
        "bundle": {**json.loads((WORK / "bundle.json").read_text()), "threshold": manifest.threshold.to_json(),
                   "design_fpr": design, "design_source": source},
        "confirmed_per_check": CONFIRMED, "draws": DRAWS, "warn_above": WARN_MULTIPLE * design,
        "warn_count": warn_count(CONFIRMED, WARN_MULTIPLE * design),
        "false_alarm_at_design": {str(k): v for k, v in false_alarm_curve(design, (10, 20, 50, 100, 200, 500)).items()},
        "films_needed": {str(k): films_needed(design, k) for k in (2.5, 3.0, 4.0, 5.0, 6.0)},
        "best_possible_at_2x": best_possible(design, CONFIRMED),
        "detection_target": POWER_TARGET,
        "populations": spots,
        "acceptance_1": {
            "same_site_max_warn_rate": max(r["warn_rate"] for r in same),
            "shifted_at_2x": [{"population": r["population"], "fpr": r["fpr"], "warn_rate": r["warn_rate"]} for r in shifted],
        },
        "windows": window_rows(data, rng),
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "load": os.getloadavg()[0]},
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "spot_check.json").write_text(json.dumps(result, indent=1) + "\n")
    (OUT / "spot_check.md").write_text(markdown(result))
    return result


def markdown(r: dict[str, Any]) -> str:
    """The results as a readable page."""
    pct = lambda v: f"{100 * v:.1f} %"  # noqa: E731 - local formatter
    d = r["bundle"]["design_fpr"]
    out = [
        "# Confirmed-normal spot checks (issue 30)",
        "",
        f"Bundle: CPU preset trained on the {r['bundle']['train_normals']} Kermany training-patient normals (seed "
        f"{r['bundle']['seed']}), threshold {r['bundle']['threshold']['value']:.4f} at {r['bundle']['design_source']}: "
        f"design false-positive rate **{pct(d)}**. Produced by `python benchmarks/spot_check.py all`.",
        "",
        f"Rule: warn when the exact (Clopper–Pearson) 95 % lower bound of the FPR of the confirmed normals is above "
        f"{pct(r['warn_above'])} (twice the design rate); with {r['confirmed_per_check']} films that is "
        f"**{r['warn_count']} or more flagged**.",
        "",
        "False-alarm rate of the rule when the site's FPR is exactly the design rate (binomial, exact):",
        "",
        "| confirmed normals | " + " | ".join(r["false_alarm_at_design"]) + " |",
        "|---|" + "---:|" * len(r["false_alarm_at_design"]),
        "| P(warn) | " + " | ".join(f"{v:.2g}" for v in r["false_alarm_at_design"].values()) + " |",
        "",
        f"Confirmed normals needed to warn in ≥ {pct(r['detection_target'])} of checks at a true FPR of k × design:",
        "",
        "| k | " + " | ".join(r["films_needed"]) + " |",
        "|---|" + "---:|" * len(r["films_needed"]),
        "| films | " + " | ".join(str(v) for v in r["films_needed"].values()) + " |",
        "",
        f"No count rule can do much better at exactly twice the design rate: the most powerful one (Neyman–Pearson) that "
        f"keeps false alarms at the design rate ≤ 1 % warns at 2× design with probability "
        f"{pct(r['best_possible_at_2x']['power'])} on {r['confirmed_per_check']} films and needs "
        f"{r['best_possible_at_2x']['films_for_95_percent']} films for 95 %.",
        "",
        f"## Populations: measured FPR and the spot check on {r['confirmed_per_check']} confirmed normals "
        f"({r['draws']} bootstrap draws)",
        "",
        "| population | normals | FPR (95 % CI) | × design | AUC | warns (bootstrap) | warns (binomial) | films for 95 % |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for p in sorted(r["populations"], key=lambda p: p["fpr"]):
        auc = "–" if p["auc"] is None else f"{p['auc']:.3f}"
        need = "–" if p["films_needed"] is None else str(p["films_needed"])
        out.append(f"| {p['population']} | {p['normals']} | {pct(p['fpr'])} ({pct(p['fpr_ci'][0])}–{pct(p['fpr_ci'][1])}) | "
                   f"{p['fpr_multiple']:.1f} | {auc} | {pct(p['warn_rate'])} | {pct(p['warn_probability'])} | {need} |")
    out += ["", "## The label-free guard on the same populations (score, brighter, darker checks; any warns)", "",
            "| population | abnormal share | " + " | ".join(f"n = {n}" for n in sorted({w['size'] for w in r['windows']})) + " |",
            "|---|---:|" + "---:|" * len({w["size"] for w in r["windows"]})]
    by: dict[tuple[str, float], dict[int, float]] = {}
    for w in r["windows"]:
        by.setdefault((w["population"], w["abnormal_share"]), {})[w["size"]] = w["warn_rate"]
    for (pop, share), rates in sorted(by.items()):
        out.append(f"| {pop} | {pct(share)} | " + " | ".join(pct(v) for _, v in sorted(rates.items())) + " |")
    m = r["machine"]
    out += ["", f"Machine: {m['processor']}, {m['cpus']} CPUs, load {m['load']:.1f}.", ""]
    return "\n".join(out)


@click.command()
@click.argument("stage", type=click.Choice(["bundle", "score", "report", "all"]))
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--work", type=click.Path(path_type=Path), default=None, help="Work folder (run/, bundle/).  [default: runs/spot-check]")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Results folder.  [default: benchmarks/results/drift]")
@click.option("--limit", type=int, default=None, help="Films per population (a smoke test; the results use all).")
def main(stage: str, threads: int, work: Path | None, out: Path | None, limit: int | None) -> None:
    global WORK, BUNDLE, RUN, OUT, LIMIT
    LIMIT = limit
    if work is not None:
        WORK, BUNDLE, RUN = work, work / "bundle", work / "run"
    OUT = out or OUT
    WORK.mkdir(parents=True, exist_ok=True)
    if stage in ("bundle", "all"):
        print(json.dumps(stage_bundle(threads), indent=2))
    if stage in ("score", "all"):
        stage_score()
    if stage in ("report", "all"):
        stage_report()


if __name__ == "__main__":
    main()
