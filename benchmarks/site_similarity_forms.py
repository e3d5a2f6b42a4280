"""ASAP's two forms on the site-similarity benchmark's data (issue 25): the paper's equations against salad-edge-v1.

    python benchmarks/site_similarity_forms.py run                          # every pool, β 0.3 / 0.6 / 1.0, both forms
    python benchmarks/site_similarity_forms.py run --pools full --betas 0.6  # a reduced configuration
    python benchmarks/site_similarity_forms.py report                       # the JSON and markdown from what is fitted

Refits benchmarks/site_similarity.py's estimators (same pools of training films, seed, steps) in both forms
(onsite/forms.py), embeds the same 30 targets and the bundles' training normals, and ranks the three bundles by
ASAP distance against the oracle: the bundles' AUCs per target recorded by the committed site-similarity run
(benchmarks/results/similarity/site_similarity.json; the bundles are not retrained here). Resumable: fits and points
are kept under benchmarks/results/similarity/.work/forms/. Writes site_similarity_forms.json and .md.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from site_similarity import (  # noqa: E402 - a sibling script's helpers
    OUT,
    POOL_FILMS,
    REAL_SITES,
    WORK,
    _spearman,
    machine,
    pool,
    raw_films,
    target_films,
    target_names,
)

FORMS_WORK = WORK / "forms"
POINTS = FORMS_WORK / "points.npz"
POOLS = ("full", *(f"loso-{s}" for s in REAL_SITES))
BETAS = (0.6, 0.3, 1.0)
PAPER_BETA = 0.6


def estimator_name(form: str, pool_name: str, beta: float) -> str:
    return f"{form}/{pool_name}-beta{beta:g}"


def fit(form: str, pool_name: str, beta: float, threads: int, steps: int) -> dict[str, Any]:
    """Fit one estimator (resumable) and return its record: EQC in both forms, losses, time."""
    from salad.onsite.distance import eqc
    from salad.onsite.estimator import Estimator
    from salad.onsite.forms import FORMS
    from salad.preprocess import preprocess
    from salad.similarity.fit import PREPROCESSING, FitConfig, fit_estimator
    from salad.similarity.model import LossConfig

    out = FORMS_WORK / estimator_name(form, pool_name, beta)
    if not (out / "estimator.json").exists():
        films = {k: np.stack([preprocess(f, PREPROCESSING) for f in v]) for k, v in pool(pool_name).items()}
        cfg = FitConfig(steps=steps, max_films=POOL_FILMS, loss=LossConfig(beta=beta, form=form))
        fit_estimator(films, out, cfg, resume=True, threads=threads, progress=False,
                      sources={k: "benchmarks/splits (training films)" for k in films})
    est = Estimator.load(out)
    info = est.info
    return {"form": form, "pool": pool_name, "beta": beta, "eqc": info["eqc"],
            "eqc_by_form": {f: eqc(est.points, f) for f in FORMS}, "seconds": info["training"]["seconds"],
            "cpu_seconds": info["training"]["cpu_seconds"], "threads": info["training"]["threads"],
            "steps": info["training"]["steps"], "final_losses": info["training"]["final_losses"]}


def inputs(key: str) -> np.ndarray:
    """The estimator input (n, 1, 64, 64) of a target or a bundle's training normals ("cand~SITE"), cached on disk."""
    from salad.preprocess import preprocess
    from salad.similarity.fit import PREPROCESSING

    path = FORMS_WORK / "inputs" / f"{key}.npy"
    if path.exists():
        return np.load(path, allow_pickle=False)
    if key.startswith("cand~"):
        films, _ = raw_films(key.partition("~")[2], "train", normals_only=True)
    else:
        films, _ = target_films(key)
    x = np.stack([preprocess(f, PREPROCESSING) for f in films])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{key}.tmp.npy")
    np.save(tmp, x)
    os.replace(tmp, path)
    return x


def embed(names: list[str]) -> dict[str, np.ndarray]:
    """Every target's and every bundle's training normals' points through each named estimator (cached)."""
    from salad.onsite.estimator import Estimator

    cache: dict[str, np.ndarray] = {}
    if POINTS.exists():
        with np.load(POINTS, allow_pickle=False) as d:
            cache = {k: d[k] for k in d.files}
    todo = [n for n in names if f"{n}|cand|{REAL_SITES[0]}" not in cache]
    if not todo:
        return cache
    latents = {n: Estimator.load(FORMS_WORK / n).latent(1) for n in todo}
    for site in REAL_SITES:
        x = inputs(f"cand~{site}")
        for n in todo:
            cache[f"{n}|cand|{site}"] = latents[n].embed(x)
    for target in tqdm(target_names(), desc="embedding targets", leave=False):
        x = inputs(target)
        for n in todo:
            cache[f"{n}|target|{target}"] = latents[n].embed(x)
    tmp = POINTS.with_name("points.tmp.npz")
    np.savez(tmp, **cache)  # type: ignore[arg-type]
    os.replace(tmp, POINTS)
    return cache


def rank_summary(auc: dict[str, dict[str, float]], dist: dict[str, dict[str, float]], variant: str) -> dict[str, Any]:
    """Top-1, AUC lost, Spearman per target and pooled Pearson of one method's distances (as site_similarity.analyse)."""
    per: list[dict[str, Any]] = []
    pairs: list[tuple[float, float]] = []
    for target, d_all in dist.items():
        source = target.partition("~")[0]
        cands = [c for c in REAL_SITES if variant == "all" or c != source]
        d, a = {c: d_all[c] for c in cands}, {c: auc[target][c] for c in cands}
        chosen, best = min(d, key=lambda c: d[c]), max(a, key=lambda c: a[c])
        per.append({"target": target, "chosen": chosen, "oracle": best, "top1": chosen == best, "auc_lost": a[best] - a[chosen],
                    "spearman": _spearman([-d[c] for c in cands], [a[c] for c in cands])})
        pairs += [(d[c], a[c]) for c in cands]
    sp = [p["spearman"] for p in per if p["spearman"] is not None]
    return {"targets": len(per), "top1": float(np.mean([p["top1"] for p in per])),
            "real_targets_top1": float(np.mean([p["top1"] for p in per if "~" not in p["target"]])),
            "auc_lost_mean": float(np.mean([p["auc_lost"] for p in per])), "spearman_mean": float(np.mean(sp)) if sp else None,
            "pooled_pearson_distance_vs_auc": float(np.corrcoef([p[0] for p in pairs], [p[1] for p in pairs])[0, 1]),
            "per_target": per}


def analyse(fits: dict[str, dict[str, Any]], points: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per form: ASAP at the paper's β, at the EQC-chosen β, and their leave-one-site-out versions, where fitted."""
    from salad.onsite.distance import collection_distance
    from salad.onsite.forms import FORMS

    committed = json.loads((OUT / "site_similarity.json").read_text())["analysis"]["targets"]
    auc = {r["target"]: r["auc"] for r in committed}

    def distances(name: str, targets: list[str]) -> dict[str, dict[str, float]]:
        return {t: {c: collection_distance(points[f"{name}|target|{t}"], points[f"{name}|cand|{c}"]) for c in REAL_SITES}
                for t in targets}

    def eqc_choice(form: str, pool_name: str) -> str | None:
        mine = {n: f["eqc"] for n, f in fits.items() if f["form"] == form and f["pool"] == pool_name}
        return min(mine, key=lambda n: mine[n]) if mine else None

    out: dict[str, Any] = {"eqc_choice": {}, "methods": {}}
    for form in FORMS:
        out["eqc_choice"][form] = {p: eqc_choice(form, p) for p in POOLS if eqc_choice(form, p)}
        methods: dict[str, dict[str, dict[str, float]]] = {}
        paper_beta = estimator_name(form, "full", PAPER_BETA)
        if paper_beta in fits:
            methods["asap"] = distances(paper_beta, target_names())
        chosen = out["eqc_choice"][form].get("full")
        if chosen is not None and len([f for f in fits.values() if f["form"] == form and f["pool"] == "full"]) > 1:
            methods["asap-eqc"] = distances(chosen, target_names())
        for method in ("asap-loso", "asap-eqc-loso"):
            d: dict[str, dict[str, float]] = {}
            for site in REAL_SITES:
                name = (estimator_name(form, f"loso-{site}", PAPER_BETA) if method == "asap-loso"
                        else out["eqc_choice"][form].get(f"loso-{site}"))
                if name in fits:
                    d.update(distances(name, [t for t in target_names() if t.partition("~")[0] == site]))
            if len(d) == len(target_names()):
                methods[method] = d
        out["methods"][form] = {m: {"distance": d, **{v: rank_summary(auc, d, v) for v in ("all", "others")}}
                                for m, d in methods.items()}
    return out


def _f(x: float | None, nd: int = 3) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def markdown(result: dict[str, Any]) -> str:
    """The committed comparison table."""
    a = result["analysis"]
    lines = ["# ASAP: the paper's equations against salad-edge-v1 on the site-similarity data", "",
             "Written by `python benchmarks/site_similarity_forms.py` (docs/similarity.md §1 and §5). "
             f"Machine: {result['machine']}, shared with other jobs (nice 19). Configuration: {result['configuration']}", "",
             "**paper** = ASAP's equations as written (plain-sum Gram matrices, squared distances in both triplets, EQC "
             "= 2/(I² − I) Σ (ξ_i + ξ_k)/ψ_ik with ψ the mean pairwise distance); **salad-edge-v1** = Grams divided by "
             "H·W, plain distances, EQC from centroids with a factor 2. Oracle AUCs: the committed site-similarity run's "
             "bundles (site_similarity.json); the estimators are refitted here in both forms on the same pools, seed and "
             "steps, and embed the same targets.", "",
             "## Fits", "", "| estimator | EQC, own form | EQC (paper's formula) | EQC (v1 formula) | final loss | L_mse | "
             "L_style-rec | L_triplet | L_style-triplet | fit min (wall) | CPU min |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, f in result["fits"].items():
        fl = f["final_losses"]
        lines.append(f"| {n} | {f['eqc']:.3f} | {f['eqc_by_form']['paper']:.3f} | {f['eqc_by_form']['salad-edge-v1']:.3f} | "
                     f"{fl['loss']:.4g} | {fl['mse']:.4g} | {fl['style_rec']:.4g} | {fl['triplet']:.4g} | {fl['style_triplet']:.4g} | "
                     f"{f['seconds'] / 60:.1f} | {f['cpu_seconds'] / 60:.1f} |")
    lines += ["", "EQC is lower-is-better; the two formulas differ in scale (the paper's ψ contains both spreads, "
              "v1's centroid gap does not), so compare estimators under one formula (the two middle columns).", ""]
    for variant, title in (("all", "every bundle a candidate"), ("others", "the target's own-site bundle excluded")):
        lines += [f"## Bundle choice ({title}; {len(result['targets'])} targets)", "",
                  "| method | form | top-1 | top-1 on real sites | mean AUC lost vs oracle | mean Spearman per target | "
                  "pooled Pearson(distance, AUC) |", "|---|---|---|---|---|---|---|"]
        for method in ("asap", "asap-eqc", "asap-loso", "asap-eqc-loso"):
            for form, methods in a["methods"].items():
                if method in methods:
                    s = methods[method][variant]
                    lines.append(f"| {method} | {form} | {100 * s['top1']:.0f} % | {100 * s['real_targets_top1']:.0f} % | "
                                 f"{_f(s['auc_lost_mean'])} | {_f(s['spearman_mean'], 2)} | {_f(s['pooled_pearson_distance_vs_auc'], 2)} |")
            s = result["committed"][variant].get(method)
            if s is not None:
                lines.append(f"| {method} | salad-edge-v1, committed | {100 * s['top1']:.0f} % | {100 * s['real_targets_top1']:.0f} % | "
                             f"{_f(s['auc_lost_mean'])} | {_f(s['spearman_mean'], 2)} | {_f(s['pooled_pearson_distance_vs_auc'], 2)} |")
        lines.append("")
    lines += ["`asap` = full pool at the paper's β = 0.6; `asap-eqc` = the full pool's fit with the lowest EQC (own form's "
              "formula) among the β fitted: " + "; ".join(f"{form} → {c.get('full', '–')}" for form, c in a["eqc_choice"].items())
              + "; committed = the committed site-similarity run's salad-edge-v1 estimators (another machine); "
              "`-loso` = the target's source site and its variants left out of the pool.", "",
              "## Choices per target (every bundle a candidate)", "", "| target | oracle | " + " | ".join(
                  f"{m} {form}" for form, ms in a["methods"].items() for m in ms) + " |",
              "|---|---|" + "---|" * sum(len(ms) for ms in a["methods"].values())]
    cols = [(form, m) for form, ms in a["methods"].items() for m in ms]
    for i, t in enumerate(result["targets"]):
        cells = []
        for form, m in cols:
            p = a["methods"][form][m]["all"]["per_target"][i]
            cells.append(p["chosen"] + ("" if p["top1"] else f" (−{p['auc_lost']:.3f})"))
        oracle = a["methods"][cols[0][0]][cols[0][1]]["all"]["per_target"][i]["oracle"] if cols else "–"
        lines.append(f"| {t} | {oracle} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def fitted() -> dict[str, dict[str, Any]]:
    """The record of every finished fit under .work/forms (whichever process fitted it), paper first, by pool and β."""
    from salad.onsite.forms import FORMS

    out = {}
    for form in FORMS:
        for pool_name in POOLS:
            for beta in BETAS:
                if (FORMS_WORK / estimator_name(form, pool_name, beta) / "estimator.json").exists():
                    out[estimator_name(form, pool_name, beta)] = fit(form, pool_name, beta, 1, 0)
    return out


def report(configuration: str) -> dict[str, Any]:
    """Analyse whatever is fitted and write site_similarity_forms.json / .md."""
    fits = fitted()
    points = embed(sorted(fits))
    result: dict[str, Any] = {"schema": "salad-site-similarity-forms/1", "machine": machine(), "configuration": configuration,
              "targets": target_names(), "fits": fits, "analysis": analyse(fits, points)}
    committed = json.loads((OUT / "site_similarity.json").read_text())["analysis"]["summary"]
    result["committed"] = {v: {m: {k: x for k, x in committed[v][m].items() if k != "per_target"}
                               for m in ("asap", "asap-eqc", "asap-loso", "asap-eqc-loso") if m in committed[v]} for v in committed}
    for form in result["analysis"]["methods"].values():  # distances stay in the JSON; per-target rows are in per_target
        for m in form.values():
            m["distance"] = {t: {c: round(v, 6) for c, v in d.items()} for t, d in m["distance"].items()}
    (OUT / "site_similarity_forms.json").write_text(json.dumps(result, indent=1) + "\n")
    (OUT / "site_similarity_forms.md").write_text(markdown(result))
    return result


@click.group()
def main() -> None:
    """ASAP forms on the site-similarity data."""


@main.command("run")
@click.option("--pools", default=",".join(POOLS), show_default=True, help="Comma-separated pools to fit.")
@click.option("--betas", default=",".join(f"{b:g}" for b in BETAS), show_default=True, help="Comma-separated β values.")
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--steps", type=int, default=600, show_default=True)
@click.option("--configuration", default="every pool, β 0.3 / 0.6 / 1.0, 600 steps", help="Recorded in the results.")
def run_command(pools: str, betas: str, threads: int, steps: int, configuration: str) -> None:
    """Fit both forms (paper first, one estimator at a time, β in the given order), then report."""
    from salad.onsite.forms import FORMS

    for beta in (float(b) for b in betas.split(",")):
        for pool_name in pools.split(","):
            for form in FORMS:
                t0 = time.perf_counter()
                eqc = fit(form, pool_name, beta, threads, steps)["eqc"]
                click.echo(f"{estimator_name(form, pool_name, beta)}: EQC {eqc:.3f} ({time.perf_counter() - t0:.0f} s)", err=True)
    click.echo(markdown(report(configuration)))


@main.command("inputs")
def inputs_command() -> None:
    """Preprocess every target and the bundles' training normals for the estimators (cached; fits may run meanwhile)."""
    for key in [*(f"cand~{s}" for s in REAL_SITES), *target_names()]:
        click.echo(f"{key}: {inputs(key).shape}", err=True)


@main.command("report")
@click.option("--configuration", required=True, help="What was fitted, recorded in the results.")
def report_command(configuration: str) -> None:
    """Analyse the fits made so far."""
    click.echo(markdown(report(configuration)))


if __name__ == "__main__":
    main()
