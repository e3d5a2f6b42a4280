"""`salad parity`, `inspect` and `build-engine`: thin click commands over compare, Bundle and EngineLoader.

Registered in the `salad` group by the CLI layer (cli/, salad.cli); importing this module pulls in neither torch nor
onnx, so both run on a console with only salad-edge[runtime].
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from salad.clitools import DEVICE, OUTPUT, LazyChoice, deprecated_alias, friendly_errors, is_stdout, write_output
from salad.drift import MIN_CALIBRATION_FILMS
from salad.manifest import PRECISIONS

from .base import runner_names
from .options import check_taken, given, runner_option_flags
from .parity import compare, parse_tolerance_options


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
