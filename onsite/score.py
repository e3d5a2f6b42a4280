"""`salad score`: the Scorer over a site's films, with the drift guard and the confirmed-normal spot check listening.

It lives on the site's side (salad.onsite) because `--drift` and `--confirmed-normal` are the site's checks; the
runtime stage stays below it (onsite imports runtime, never the reverse). Registered in the `salad` group by the CLI
layer (cli/, salad.cli); importing this module pulls in neither torch nor onnx, so it runs on a console with only
salad-edge[runtime].
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click

from salad.clitools import DEVICE, OUTPUT, LazyChoice, friendly_errors, write_output
from salad.data import Unreadable, scan_images
from salad.errors import EXIT_ERROR, ConfigError
from salad.manifest import PRECISIONS
from salad.progress import progress
from salad.runtime.base import runner_class, runner_names
from salad.runtime.events import SCORED
from salad.runtime.options import check_taken, given, options_for, runner_option_flags
from salad.runtime.scorer import Result, Scorer, open_to_score
from salad.scoring import SCORE_NAMES
from salad.tables import fixed_width

from .drift import DriftGuard
from .spotcheck import default_state_path, spot_check

LABELS = {0: "normal", 1: "abnormal"}
#: The shape of `salad score --json` (salad/schemas/score.json).
SCORE_SCHEMA = "salad-score/1"
#: Fewer films than this are scored without a progress bar (a bar for a handful only adds noise).
PROGRESS_MIN_FILMS = 64


@click.command("score")
# readable=False: an unreadable film is its own error row (salad.data.scan_images, salad.imageio), an unreadable bundle
# a one-line error (exit 1); click's own check would stop the whole call with a usage error (exit 2), nothing scored.
@click.argument("bundle", type=click.Path(path_type=Path, readable=False))
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path, readable=False))
@click.option("--runtime", type=LazyChoice(runner_names), default="onnxruntime", show_default=True,
              help="Backend that runs the bundle's graph.")
@click.option("--precision", type=LazyChoice(PRECISIONS.names), default="fp32", show_default=True,
              help="Graph variant in the bundle (fp16/int8 are added by `salad calibrate`).")
@click.option("--device", type=DEVICE, default=None, help="cpu, cuda or cuda:N (default: cpu, or cuda:0 for tensorrt).")
@click.option("--batch", "batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Films per inference call (the engine's maximum batch).")
@click.option("--json", "json_out", type=OUTPUT, default=None,
              help="Write {results, runtime, precision} here instead of printing a table ('-' for stdout).")
@click.option("--url", default=None, metavar="URL",
              help="The server of a remote runtime (--runtime triton): http://HOST:8000 or grpc://HOST:8001.")
@click.option("--triton", "triton_url", default=None, metavar="URL",
              help="Score on a Triton Inference Server serving this bundle (written by `salad export-triton`): "
                   "http://HOST:8000 or grpc://HOST:8001. Replaces --runtime and --device.")
@click.option("--triton-model", default="salad", show_default=True,
              help="Name of the ensemble in the Triton repository (export-triton --name).")
@click.option("--drift", is_flag=True,
              help="Also report whether these films look like the bundle's site: the detector's own score against its "
                   "validation normals, and style if `salad similarity attach` added an estimator. Never changes a score or a label.")
@click.option("--drift-window", type=click.IntRange(min=4), default=50, show_default=True,
              help="Films per window of the drift report (the whole call is judged too).")
@click.option("--confirmed-normal", "confirmed", multiple=True, type=click.Path(path_type=Path, readable=False),
              help="Films a radiologist read as normal (files or folders; repeat). Implies --drift: the report adds their "
                   "false-positive rate with its 95 % interval, warns when it is above twice the design rate, and keeps a "
                   "running estimate across calls in --confirmed-state. They get no row of their own.")
@click.option("--confirmed-state", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The spot check's running-estimate file.  [default: salad-spot-check.json beside the --json file, "
                   "or in the current folder]")
@runner_option_flags()
@friendly_errors
def score_command(
    bundle: Path, paths: Sequence[Path], runtime: str, precision: str, device: str | None, batch: int, json_out: Path | None,
    url: str | None, triton_url: str | None, triton_model: str, drift: bool = False, drift_window: int = 50,
    confirmed: Sequence[Path] = (), confirmed_state: Path | None = None, **backend: Any,
) -> None:
    """Score X-ray files, folders (searched recursively) and DICOM with BUNDLE.

    Every path that cannot be scored (missing, empty or unreadable folder, symlink loop, unreadable
    or refused file, non-finite output) is its own error row and one line on stderr; the others are
    still scored, and the exit code is 1 if anything failed.
    """
    entries = scan_images(paths)
    guard, spot = None, None
    spot_failed: list[Result] = []  # confirmed normals that could not be scored
    drift = drift or bool(confirmed)  # the spot check is part of the drift report
    if triton_url is not None:  # --triton URL is --runtime triton --url URL
        runtime, url = "triton", triton_url
    runner = runner_class(runtime)
    if url is not None and "url" not in runner.options:
        raise ConfigError(f"--url is for a remote runtime (--runtime triton); the {runtime} runtime runs on this machine.")
    options = given(backend)
    check_taken([runtime], options)
    remote = {k: v for k, v in (("url", url), ("model", triton_model)) if k in runner.options}
    opened = open_to_score(bundle, runtime, precision)  # once: the drift guard and the scorer read this one
    if drift:  # before scoring, so a bundle where no drift check can run fails fast

        guard = DriftGuard.from_bundle(opened)
    scorer = Scorer.from_bundle(opened, runtime=runtime, precision=precision, device=device, max_batch=batch,
                                **remote, **options_for(runtime, options))
    files = [e for e in entries if isinstance(e, Path)]
    watch = None
    with scorer, progress(total=len(files), desc="scoring", unit="film", disable=len(files) < PROGRESS_MIN_FILMS) as bar:
        with ExitStack() as listening:  # the bar and the drift guard listen to the scorer: each film is decoded once
            listening.enter_context(scorer.bound(SCORED, lambda _: bar.update()))
            if guard is not None:
                watch = listening.enter_context(guard.watching(scorer))
            done = scorer.score(files, on_error="record")
        if confirmed:

            spot, spot_failed = spot_check(scorer, confirmed, confirmed_state or default_state_path(json_out))
    scored = iter(done)
    results = [Result.failure(str(e.path), e.error) if isinstance(e, Unreadable) else next(scored) for e in entries]
    failed = [r for r in results if not r.ok]
    drift_report = watch.report(drift_window) if watch is not None else None
    if drift_report is not None:
        drift_report.spot_check = spot
    elif spot is not None:  # no film of the call could be judged: the spot check still reports
        for line in spot.lines():
            click.echo(line, err=True)
    if json_out is not None:
        payload = {
            "schema": SCORE_SCHEMA,
            "results": [r.to_dict() for r in results],
            "runtime": scorer.runtime,
            "precision": scorer.precision,
            "device": scorer.runner.device,
            "threshold": {"value": scorer.threshold, "score": scorer.threshold_score},
            "bundle": str(bundle),
        }
        if drift_report is not None:
            payload["drift"] = drift_report.to_dict()
        text = json.dumps(payload, indent=2, allow_nan=False)  # strict JSON: a NaN never reaches a consumer
        if write_output(json_out, text + "\n"):
            click.echo(
                f"scored {len(results) - len(failed)} of {len(results)} file(s) with {scorer.runtime}/{scorer.precision} → {json_out}"
            )
    else:
        click.echo(format_table(results, scorer.threshold_score))
    for line in drift_report.lines() if drift_report is not None else []:
        click.echo(line, err=True)
    for r in failed + spot_failed:
        click.echo("error: " + " ".join(str(r.error).split()), err=True)  # one line per file, whatever the decoder said
    if failed or spot_failed:
        sys.exit(EXIT_ERROR)  # could not score some films (the others were): salad.errors.EXIT_CODES


def format_table(results: Sequence[Result], decided_by: str = "score") -> str:
    """A fixed-width table: path, score, knn_angle, label, ms; failed rows say FAILED."""
    rows = [("path", *SCORE_NAMES, f"label ({decided_by})", "ms")]
    for r in results:
        if r.ok and r.label is not None and not math.isnan(r.score):
            rows.append(
                (str(r.path), f"{r.score:.6f}", f"{r.knn_angle:.6f}", LABELS.get(r.label, str(r.label)), f"{r.timings.total_ms:.1f}")
            )
        else:
            rows.append((str(r.path), "-", "-", "FAILED", "-"))
    return fixed_width(rows, left=1)
