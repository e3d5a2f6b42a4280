"""`salad score`, `parity`, `inspect` and `build-engine`: thin click commands over Scorer, compare, Bundle, EngineLoader.

Registered in the `salad` group by the CLI layer (cli/, salad.cli); importing this module pulls in neither torch nor
onnx, so both run on a console with only salad-edge[runtime].
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

from salad.clitools import DEVICE, OUTPUT, LazyChoice, deprecated_alias, friendly_errors, is_stdout, write_output
from salad.data import Unreadable, scan_images
from salad.drift import MIN_CALIBRATION_FILMS
from salad.errors import EXIT_ERROR, ConfigError
from salad.manifest import PRECISIONS
from salad.progress import progress
from salad.scoring import SCORE_NAMES
from salad.tables import fixed_width

from .base import runner_class, runner_names
from .events import SCORED
from .options import check_taken, given, options_for, runner_option_flags
from .parity import compare, parse_tolerance_options
from .scorer import Result, Scorer, open_to_score

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
        from salad.onsite.drift import DriftGuard  # the site's side: lazily, only for --drift

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
            from salad.onsite.spotcheck import default_state_path, spot_check

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


@click.command("parity")
@click.argument("bundle", type=click.Path(path_type=Path, readable=False))
@click.option("--runtime", "runtimes", multiple=True, type=LazyChoice(runner_names),
              help="Runtime to compare with the PyTorch reference; repeat for several.  [default: onnxruntime]")
@click.option("--precision", "precisions", multiple=True, type=LazyChoice(PRECISIONS.names),
              help="Graph variant to compare; repeat for several.  [default: every precision in the bundle]")
@click.option("--labelled", type=click.Path(exists=True, path_type=Path), default=None,
              help="Labelled films (class folders normal/ + others, or a CSV path,label) to compare on as well, "
                   "with AUC and AUPRC. Needs PyTorch and the bundle's checkpoint.pt for their reference outputs.")
@deprecated_alias("--data", "--labelled", "labelled", type=click.Path(exists=True, path_type=Path))
@click.option("--tolerance", "tolerance_options", multiple=True, metavar="[PRECISION:]METRIC=VALUE",
              help="Override a tolerance of the manifest, e.g. max_abs_score_diff=1e-4 or int8:label_agreement=0.98.")
@click.option("--device", type=DEVICE, default=None,
              help="cpu, cuda or cuda:N for the compared runtimes (the reference runs on cpu).")
@click.option("--batch", "batch", type=click.IntRange(min=1), default=32, show_default=True, help="Films per inference call.")
@click.option("--json", "json_out", type=OUTPUT, default=None,
              help="Write the report as JSON here ('-' for stdout).")
@click.option("--markdown", "markdown_out", type=OUTPUT, default=None,
              help="Write the report as markdown here ('-' for stdout).")
@runner_option_flags()
@friendly_errors
def parity_command(
    bundle: Path, runtimes: Sequence[str], precisions: Sequence[str], labelled: Path | None,
    tolerance_options: Sequence[str], device: str | None, batch: int, json_out: Path | None, markdown_out: Path | None,
    **backend: Any,
) -> None:
    """Prove each runtime × precision makes the PyTorch reference's decisions on BUNDLE's reference films.

    Prints a table and exits with 3, listing every failing metric with its tolerance and the
    tolerance that would have passed, when any check fails. Without PyTorch (a console) or with a
    --slim bundle, compares with the PyTorch outputs stored in the bundle's reference.npz.
    """
    runtimes = runtimes or ("onnxruntime",)
    options = given(backend)
    check_taken(runtimes, options)
    report = compare(
        bundle, runtimes, precisions or None, labelled=labelled,
        tolerances=parse_tolerance_options(tolerance_options), device=device, max_batch=batch, runner_options=options,
    )
    if not is_stdout(json_out, markdown_out):
        click.echo(report.format_table())
    for out, text in ((json_out, report.to_json() + "\n"), (markdown_out, report.to_markdown())):
        write_output(out, text)
    report.raise_if_failed()


@click.command("inspect")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "json_out", type=OUTPUT, default=None, is_flag=False, flag_value="-",
              help="Write the description as JSON here (schema salad-inspect/1; '-', or --json alone, for stdout).")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 of the bundle's files (the manifest is still checked).")
@friendly_errors
def inspect_command(bundle: Path, json_out: Path | None, no_verify: bool) -> None:
    """Show what BUNDLE holds: graphs, precisions, threshold, bank, tolerances and calibration."""
    from salad.bundle import Bundle

    info = Bundle.open(bundle, verify=not no_verify).describe()
    write_output(json_out, json.dumps(info, indent=2) + "\n")
    if is_stdout(json_out):
        return
    t, b = info["threshold"], info["bank"]
    lines = [
        f"bundle {info['bundle']} (schema {info['schema_version']}, salad-edge {info['toolkit_version']}, created {info['created']})"
        + ("" if no_verify else "; every file matches its sha256"),
        f"precisions: {', '.join(info['precisions'])}",
        f"threshold: {t['score']} > {t['value']:.6g}"
        + (f" at {', '.join(f'{k} {v}' for k, v in t['operating_point'].items())}" if isinstance(t.get("operating_point"), dict) else ""),
        f"bank: {b.get('rows')} rows × {info['embedding_dim']}, {b.get('form', '?')}, K = {info['k']}, sha256 {str(b.get('sha256'))[:12]}…",
        f"preprocessing: {', '.join(f'{k}={v}' for k, v in info['preprocessing'].items())}",
        "graphs:",
    ]
    for key, g in info["graphs"].items():
        ios = " → ".join(", ".join(f"{t['name']}{t['shape']}" for t in g[side]) for side in ("inputs", "outputs"))
        size = f"{g['bytes'] / 1e6:.2f} MB" if g["bytes"] is not None else "missing"
        lines.append(f"  {key:<14} {g['file']:<20} {g['precision']:<5} opset {g['opset']}  {size:>9}  {ios}")
    lines.append("tolerances:")
    for precision, tol in info["tolerances"].items():
        lines.append(f"  {precision}: " + ", ".join(f"{k}={v:g}" for k, v in tol.items()))
    for precision, cal in info["calibration"].items():
        lines.append(f"calibration {precision}: " + ", ".join(f"{k}={v}" for k, v in cal.items() if not isinstance(v, list | dict)))
    d = info["drift"]

    def check(name: str, n: int | None) -> str:
        if n is None:
            return f"{name} off (no validation normals stored; re-export)"
        if n < MIN_CALIBRATION_FILMS:
            return f"{name} off ({n} validation normals; needs {MIN_CALIBRATION_FILMS})"
        return f"{name} ({n} validation normals)"

    lines.append("drift checks (salad score --drift): "
                 + ", ".join(check(name, n) for name, n in (("score", d["score_films"]), ("exposure", d["exposure_films"])))
                 + (", style (estimator attached)" if d["style_attached"] else ", style off (no estimator attached)"))
    click.echo("\n".join(lines))


@click.command("build-engine")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--precision", type=LazyChoice(PRECISIONS.names), default="fp32", show_default=True,
              help="Graph variant to build the engine of.")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Largest batch of the engine's optimisation profile (what `salad score --batch` may use).")
@click.option("--opt-batch", type=click.IntRange(min=1), default=None, help="The profile's optimum batch.  [default: --max-batch]")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Engine cache folder the runtime reads.  [default: salad.runtime.cache's]")
@click.option("--workspace-mb", type=click.IntRange(min=1), default=None, help="TensorRT builder workspace limit.")
@click.option("--device", type=DEVICE, default="cuda:0", show_default=True, help="The GPU to build for (cuda or cuda:N).")
@click.option("--rebuild", is_flag=True, help="Build even if the cache holds the engine.")
@click.option("--allow-tf32", is_flag=True, help="Let float32 layers use TF32 (breaks the fp32 parity tolerance).")
@friendly_errors
def build_engine_command(
    bundle: Path, precision: str, max_batch: int, opt_batch: int | None, cache_dir: Path | None, workspace_mb: int | None,
    device: str, rebuild: bool, allow_tf32: bool,
) -> None:
    """Build BUNDLE's TensorRT engine now (e.g. when a console installs it), so the first score loads it from the cache."""
    from .tensorrt_engine import build_engine

    done = build_engine(
        bundle, precision, device=device, max_batch=max_batch, opt_batch=opt_batch, cache_dir=cache_dir,
        workspace_mb=workspace_mb, rebuild=rebuild, allow_tf32=allow_tf32,
    )
    verb = "built" if done["built"] else "found in the cache"
    click.echo(f"{done['graph']} engine for {done['gpu']['name']} {verb}: {done['engine']}")
