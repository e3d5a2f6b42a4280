"""`salad score BUNDLE PATH...` and `salad parity BUNDLE`: thin click commands over Scorer and compare.

Registered in the `salad` group by salad/cli.py; importing this module pulls in neither torch nor
onnx, so both run on a console with only salad-edge[runtime].
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from salad.cli import LazyChoice, friendly_errors
from salad.data import Unreadable, scan_images
from salad.manifest import PRECISIONS

from .base import runner_names
from .parity import compare, parse_tolerance_options
from .scorer import Result, Scorer

LABELS = {0: "normal", 1: "abnormal"}


@click.command("score")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--runtime", type=LazyChoice(runner_names), default="onnxruntime", show_default=True,
              help="Backend that runs the bundle's graph.")
@click.option("--precision", type=click.Choice(list(PRECISIONS)), default="fp32", show_default=True,
              help="Graph variant in the bundle (fp16/int8 are added by `salad calibrate`).")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: cpu, or cuda:0 for tensorrt).")
@click.option("--batch", "batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images per inference call (the engine's maximum batch).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="Write {results, runtime, precision} here instead of printing a table ('-' for stdout).")
@click.option("--triton", "triton_url", default=None, metavar="URL",
              help="Score on a Triton Inference Server serving this bundle (written by `salad export-triton`): "
                   "http://HOST:8000 or grpc://HOST:8001. Replaces --runtime and --device.")
@click.option("--triton-model", default="salad", show_default=True,
              help="Name of the ensemble in the Triton repository (export-triton --name).")
@click.option("--drift", is_flag=True,
              help="Also report whether these films look like the bundle's training films (needs `salad similarity "
                   "attach`); never changes a score or a label.")
@click.option("--drift-window", type=click.IntRange(min=4), default=50, show_default=True,
              help="Films per window of the drift report (the whole call is judged too).")
@friendly_errors
def score_command(
    bundle: Path, paths: Sequence[Path], runtime: str, precision: str, device: str | None, batch: int, json_out: Path | None,
    triton_url: str | None, triton_model: str, drift: bool = False, drift_window: int = 50,
) -> None:
    """Score X-ray files, folders (searched recursively) and DICOM with BUNDLE.

    Every path that cannot be scored (missing, empty or unreadable folder, symlink loop, unreadable
    or refused file, non-finite output) is its own error row and one line on stderr; the others are
    still scored, and the exit code is 1 if anything failed.
    """
    entries = scan_images(paths)
    guard = None
    if drift:  # before scoring, so a bundle without an attached estimator fails fast
        from salad.similarity.attach import DriftGuard

        guard = DriftGuard.from_bundle(bundle)
    if triton_url is not None:
        from .triton_client import triton_scorer

        scorer = triton_scorer(bundle, triton_url, model=triton_model, precision=precision, max_batch=batch)
    else:
        scorer = Scorer.from_bundle(bundle, runtime=runtime, precision=precision, device=device, max_batch=batch)
    files = [e for e in entries if isinstance(e, Path)]
    with scorer:
        scored = iter(scorer.score(files, on_error="record") if files else [])
    results = [Result.failure(str(e.path), e.error) if isinstance(e, Unreadable) else next(scored) for e in entries]
    failed = [r for r in results if not r.ok]
    drift_report = guard.check_files([Path(str(r.path)) for r in results if r.ok], drift_window)[0] if guard else None
    if json_out is not None:
        payload = {
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
        if str(json_out) == "-":
            click.echo(text)
        else:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(text + "\n", encoding="utf-8")
            click.echo(f"scored {len(results) - len(failed)} of {len(results)} file(s) with {scorer.runtime}/{scorer.precision} → {json_out}")
    else:
        click.echo(format_table(results, scorer.threshold_score))
    for line in drift_report.lines() if drift_report is not None else []:
        click.echo(line, err=True)
    for r in failed:
        click.echo("error: " + " ".join(str(r.error).split()), err=True)  # one line per file, whatever the decoder said
    if failed:
        sys.exit(1)


def format_table(results: Sequence[Result], decided_by: str = "score") -> str:
    """A fixed-width table: path, score, knn_angle, label, ms; failed rows say FAILED."""
    rows = [("path", "score", "knn_angle", f"label ({decided_by})", "ms")]
    for r in results:
        if r.ok and r.label is not None and not math.isnan(r.score):
            rows.append((str(r.path), f"{r.score:.6f}", f"{r.knn_angle:.6f}", LABELS.get(r.label, str(r.label)), f"{r.timings.total_ms:.1f}"))
        else:
            rows.append((str(r.path), "-", "-", "FAILED", "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))) for row in rows]
    return "\n".join(lines)


@click.command("parity")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--runtime", "runtimes", multiple=True, type=LazyChoice(runner_names),
              help="Runtime to compare with the PyTorch reference; repeat for several.  [default: onnxruntime]")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(list(PRECISIONS)),
              help="Graph variant to compare; repeat for several.  [default: every precision in the bundle]")
@click.option("--data", type=click.Path(exists=True, path_type=Path), default=None,
              help="Labelled films (class folders normal/ + others, or a CSV path,label) to compare on as well, "
                   "with AUC and AUPRC. Needs PyTorch and the bundle's checkpoint.pt for their reference outputs.")
@click.option("--tolerance", "tolerance_options", multiple=True, metavar="[PRECISION:]METRIC=VALUE",
              help="Override a tolerance of the manifest, e.g. max_abs_score_diff=1e-4 or int8:label_agreement=0.98.")
@click.option("--device", default=None, help="cpu, cuda or cuda:N for the compared runtimes (the reference runs on cpu).")
@click.option("--batch", "batch", type=click.IntRange(min=1), default=32, show_default=True, help="Films per inference call.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="Write the report as JSON here ('-' for stdout).")
@click.option("--markdown", "markdown_out", type=click.Path(path_type=Path), default=None,
              help="Write the report as markdown here ('-' for stdout).")
@friendly_errors
def parity_command(
    bundle: Path, runtimes: Sequence[str], precisions: Sequence[str], data: Path | None, tolerance_options: Sequence[str],
    device: str | None, batch: int, json_out: Path | None, markdown_out: Path | None,
) -> None:
    """Prove each runtime × precision makes the PyTorch reference's decisions on BUNDLE's reference films.

    Prints a table and exits with 1, listing every failing metric with its tolerance and the
    tolerance that would have passed, when any check fails. Without PyTorch (a console) or with a
    --slim bundle, compares with the PyTorch outputs stored in the bundle's reference.npz.
    """
    report = compare(
        bundle, runtimes or ("onnxruntime",), precisions or None, data=data,
        tolerances=parse_tolerance_options(tolerance_options), device=device, max_batch=batch,
    )
    to_stdout = "-" in (str(json_out), str(markdown_out))
    if not to_stdout:
        click.echo(report.format_table())
    for out, text in ((json_out, report.to_json() + "\n"), (markdown_out, report.to_markdown())):
        if out is None:
            continue
        if str(out) == "-":
            click.echo(text, nl=False)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
    report.raise_if_failed()
