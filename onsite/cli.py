"""`salad choose-bundle`: rank candidate bundles for a site's films, by their own scores or by style (`--by`, `rank_by_style`).

Registered in the `salad` group by the CLI layer (cli/, salad.cli); importing this module pulls in neither torch nor
onnx: choosing a bundle runs on a console with only salad-edge[runtime].
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from salad.clitools import OUTPUT, LazyChoice, friendly_errors, is_stdout, name_path_pairs, write_output
from salad.errors import ConfigError
from salad.runtime.base import runner_names
from salad.runtime.options import check_taken, given, options_for, runner_option_flags

#: The ways `salad choose-bundle --by` ranks candidate bundles for a site's films.
RANKINGS = ("score", "style")
#: The shape of `salad choose-bundle --by style --json` (salad/schemas/similarity-ranking.json).
RANKING_SCHEMA = "salad-similarity-ranking/1"


@click.command("choose-bundle")
@click.option("--target", required=True, type=click.Path(exists=True, path_type=Path),
              help="The new site's films: a folder (searched recursively) or a CSV path,label.")
@click.option("--candidate", "candidates", multiple=True, required=True, metavar="NAME=BUNDLE",
              help="A candidate bundle; repeat. --by score: every candidate must threshold the same score; "
                   "--by style: a bundle with an attached estimator, or a folder/CSV of films.")
@click.option("--by", type=click.Choice(RANKINGS), default="score", show_default=True,
              help="score: the films' mean operating score on each bundle, lowest first (runs every bundle); style: the "
                   "ASAP distance of the films to each candidate's training films, nearest first (runs --estimator only).")
@click.option("--estimator", type=click.Path(exists=True, path_type=Path), default=None,
              help="--by style: the similarity estimator (`salad similarity fit`).")
@click.option("--plot", type=click.Path(path_type=Path), default=None,
              help="--by style: scatter PNG of the collections.  [default: beside --json, same name .png]")
@click.option("--runtime", type=LazyChoice(runner_names), default="onnxruntime", show_default=True,
              help="--by score: the backend that runs the bundles' graphs.")
@click.option("--json", "json_out", type=OUTPUT, default=None, help="Write the ranking here ('-' for stdout).")
@runner_option_flags()
@friendly_errors
def choose_bundle_command(target: Path, candidates: Sequence[str], by: str, estimator: Path | None, plot: Path | None,
                          runtime: str, json_out: Path | None, **backend: Any) -> None:
    """Rank candidate bundles for TARGET films: by each bundle's own scores (lowest first) or by style (nearest first)."""
    from salad.data import film_paths

    from .choose import CHOICE_SCHEMA, rank_bundles, read_films

    options = given(backend)
    if by == "style":
        off = [f"--{k.replace('_', '-')}" for k in options if k != "threads"]
        if click.get_current_context().get_parameter_source("runtime") is not ParameterSource.DEFAULT:
            off.insert(0, "--runtime")
        if estimator is None:
            raise ConfigError("--by style needs --estimator EST, a `salad similarity fit` directory.")
        if off:
            raise ConfigError(f"{', '.join(off)} given with --by style; they are for --by score, which runs the bundles. "
                              "--by style runs the estimator only (--threads sets its ONNX Runtime threads).")
        return rank_by_style(estimator, target, candidates, json_out, plot, options.get("threads"))
    if estimator is not None or plot is not None:
        raise ConfigError("--estimator and --plot are for --by style; --by score ranks by the bundles' own scores.")
    named = name_path_pairs(candidates, "--candidate")
    check_taken([runtime], options)
    films, skipped = read_films(film_paths(target))
    fits = rank_bundles(films, named, runtime=runtime, **options_for(runtime, options))
    payload = {"schema": CHOICE_SCHEMA, "target": str(target), "films": len(films), "skipped": skipped,
               "rule": "ascending mean operating score of the target films", "ranking": [f.to_dict() for f in fits]}
    if is_stdout(json_out):
        write_output(json_out, json.dumps(payload, indent=2, allow_nan=False) + "\n")
        return
    width = max(len(f.candidate) for f in fits)
    lines = [f"{'rank':>4}  {'candidate'.ljust(width)}  mean score  flagged  validation normals' median"]
    lines += [f"{i:>4}  {f.candidate.ljust(width)}  {f.mean_score:10.4f}  {100 * f.flagged:6.1f} %  "
              + ("–" if f.validation_normal_median is None else f"{f.validation_normal_median:.4f}") for i, f in enumerate(fits, 1)]
    click.echo("\n".join(lines))
    for s in skipped:
        click.echo(f"skipped: {s}", err=True)
    if write_output(json_out, json.dumps(payload, indent=2, allow_nan=False) + "\n"):
        click.echo(f"ranking → {json_out}", err=True)


def rank_by_style(estimator: Path, target: Path, candidates: Sequence[str], json_out: Path | None, plot: Path | None,
                  threads: int | None) -> None:
    """`salad choose-bundle --by style`: candidate bundles or datasets by ASAP distance to the target films, nearest first."""
    from salad.data import film_paths

    from .attach import collection
    from .distance import rank
    from .estimator import Estimator
    from .plot import scatter_png

    t0 = time.perf_counter()
    named = name_path_pairs(candidates, "--candidate")
    est = Estimator.load(estimator)
    latent = est.latent(threads)
    points = {name: collection(spec, latent, est.sha256) for name, spec in named.items()}
    target_pts = latent.embed_files(film_paths(target), desc="embedding target films")
    ranking = rank(target_pts, points)
    payload = {
        "schema": RANKING_SCHEMA, "target": str(target),
        "estimator": {"path": str(estimator), "sha256": est.sha256, "eqc": est.info.get("eqc")},
        "films": {"target": len(target_pts), **{n: len(p) for n, p in points.items()}},
        "ranking": [{"candidate": r.candidate, "distance": r.distance} for r in ranking],
        "seconds": time.perf_counter() - t0,
    }
    width = max(len(r.candidate) for r in ranking)
    table = "\n".join([f"{'rank':>4}  {'candidate'.ljust(width)}  distance"]
                      + [f"{i:>4}  {r.candidate.ljust(width)}  {r.distance:.4f}" for i, r in enumerate(ranking, 1)])
    png = plot or (json_out.with_suffix(".png") if json_out is not None and not is_stdout(json_out) else None)
    if png is not None:
        key = f"target: {target.name}"
        scatter_png({**points, key: target_pts}, png, target=key, title=f"ASAP latent space: {target.name} vs candidates")
    if is_stdout(json_out):
        write_output(json_out, json.dumps(payload, indent=2) + "\n")
        return
    click.echo(table)
    if write_output(json_out, json.dumps(payload, indent=2) + "\n"):
        click.echo(f"ranking → {json_out}" + (f", scatter → {png}" if png else ""), err=True)
    elif png is not None:
        click.echo(f"scatter → {png}", err=True)
    sys.stdout.flush()
