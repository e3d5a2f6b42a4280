"""`salad similarity fit | attach`: thin click commands over similarity/fit.py and onsite/attach.py (docs/similarity.md);
`salad similarity rank` is the deprecated alias of `salad choose-bundle --by style` (salad.onsite.cli.rank_by_style).

Registered lazily by the CLI layer (cli/, salad.cli). Module level imports click, the core and onsite/forms.py only;
`fit` imports torch inside the command, so `attach` and `rank` run under the `[runtime]` install.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from salad.clitools import OUTPUT, deprecated_alias, friendly_errors, name_path_pairs
from salad.errors import DataError
from salad.onsite.forms import DEFAULT_FORM, FORMS


@click.group("similarity")
def similarity_group() -> None:
    """Style-aware site similarity (ASAP): which bundle fits these films, and a drift warning."""


@similarity_group.command("fit")
@click.option("--data", "data", multiple=True, required=True, metavar="NAME=PATH",
              help="A known dataset (folder or CSV of films; every film, any label); repeat, at least twice.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Estimator directory to create.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Training steps (default 600).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Triplets per training step (default 16).")
@deprecated_alias("--batch", "--batch-size", "batch_size", type=click.IntRange(min=1))
@click.option("--films", type=click.IntRange(min=2), default=None, help="Films drawn per dataset (default 600).")
@deprecated_alias("--max-films", "--films", "films", type=click.IntRange(min=2))
@click.option("--alpha", type=click.FloatRange(0, 1), default=None, help="α: reconstruction vs triplet terms (default 0.5).")
@click.option("--beta", "betas", type=click.FloatRange(0, 1), multiple=True,
              help="β: pixel/latent vs style terms; repeat to fit one estimator per value and keep the lowest EQC "
                   "(the paper's label-free choice). Default: 0.3, 0.6 (the paper's) and 1.0.")
@click.option("--form", type=click.Choice(FORMS), default=DEFAULT_FORM, show_default=True,
              help="The equations: the paper's as written, or salad-edge-v1 (Grams divided by H·W, plain distances in "
                   "the triplets, EQC from centroids); recorded in estimator.json.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads.")
@click.option("--resume", is_flag=True, help="Continue an interrupted fit of the same data and settings.")
@click.option("--force", is_flag=True, help="Replace an existing estimator directory.")
@friendly_errors
def fit_command(data: Sequence[str], out: Path, steps: int | None, batch_size: int | None, films: int | None,
                alpha: float | None, betas: Sequence[float], form: str, seed: int, threads: int | None, resume: bool, force: bool) -> None:
    """Train the estimator on known datasets (membership is the only label) and write EST with its ONNX graph."""
    import dataclasses

    from salad.data import film_paths

    from .fit import BETA_CHOICES, FitConfig, fit_by_eqc, fit_estimator, load_films
    from .model import LossConfig

    sources = name_path_pairs(data, "--data")
    if len(sources) < 2:
        raise DataError(f"--data given {len(sources)} time(s); the estimator needs at least 2 known datasets.")
    defaults, paper = FitConfig(seed=seed), LossConfig()
    betas = tuple(betas) or BETA_CHOICES
    loss = dataclasses.replace(paper, alpha=paper.alpha if alpha is None else alpha, beta=betas[0], form=form)
    cfg = dataclasses.replace(defaults, steps=steps or defaults.steps, batch=batch_size or defaults.batch,
                              max_films=films or defaults.max_films, loss=loss)
    known = {name: load_films(film_paths(path), desc=f"reading {name}") for name, path in sources.items()}
    if len(betas) == 1:
        info = fit_estimator(known, out, cfg, sources=sources, resume=resume, force=force, threads=threads)
    else:
        info = fit_by_eqc(known, out, cfg, betas, sources=sources, resume=resume, force=force, threads=threads)
        eqcs = ", ".join(f"β {b}: {e:.3f}" for b, e in info["selection"]["eqc_by_beta"].items())
        click.echo(f"EQC by β ({eqcs}): kept β = {info['selection']['chosen_beta']:g}")
    click.echo(f"estimator {out}: {len(known)} datasets, {form} form, EQC {info['eqc']:.3f}, {info['training']['seconds'] / 60:.1f} min")


@similarity_group.command("attach")
@click.argument("estimator", type=click.Path(exists=True, path_type=Path))
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@click.option("--data", required=True, type=click.Path(exists=True, path_type=Path),
              help="The bundle's training films (folder or CSV; its normals are used).")
@click.option("--holdout", type=click.Path(exists=True, path_type=Path), default=None,
              help="Normal films of the same site the bundle did not train on, for the drift threshold "
                   "(default: 20 % of --data, by patient).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace an attached estimator.")
@friendly_errors
def attach_command(estimator: Path, bundle: Path, data: Path, holdout: Path | None, seed: int, force: bool) -> None:
    """Store the training films' 2-D points, the estimator and drift thresholds in BUNDLE (no pixels)."""
    from salad.onsite.attach import attach

    info = attach(estimator, bundle, data, holdout=holdout, seed=seed, force=force)
    thr = ", ".join(f"{k} films: {v:.3f}" for k, v in info["style"]["thresholds"].items())
    click.echo(f"attached estimator {info['estimator']['sha256'][:12]}… to {bundle} "
               f"({info['films']['reference']} reference, {info['films']['held_out']} held-out films); style drift thresholds {thr}")


@similarity_group.command("rank")
@click.option("--estimator", required=True, type=click.Path(exists=True, path_type=Path), help="Estimator directory.")
@click.option("--target", required=True, type=click.Path(exists=True, path_type=Path), help="The new site's films (folder or CSV).")
@click.option("--candidate", "candidates", multiple=True, required=True, metavar="NAME=BUNDLE_OR_DATA",
              help="A bundle with an attached estimator, or a folder/CSV of films; repeat.")
@click.option("--json", "json_out", type=OUTPUT, default=None, help="Write the ranking here ('-' for stdout).")
@click.option("--plot", type=click.Path(path_type=Path), default=None,
              help="Scatter PNG of the collections (default: beside --json, same name .png).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime threads.")
@friendly_errors
def rank_command(estimator: Path, target: Path, candidates: Sequence[str], json_out: Path | None, plot: Path | None,
                 threads: int | None) -> None:
    """Deprecated: `salad choose-bundle --by style` (the same options and output)."""
    click.echo("warning: `salad similarity rank` is deprecated; use `salad choose-bundle --by style` "
               "(the same options, the same output).", err=True)
    from salad.onsite.cli import rank_by_style

    rank_by_style(estimator, target, candidates, json_out, plot, threads)
