"""`salad calibrate BUNDLE --precision fp16|int8`: a thin click command around salad.calibration.calibrate_bundle.

Imports only click and the core at module level, so registering it in the `salad` group costs a
console nothing; onnx, onnxruntime's quantizer and torch (for the PyTorch reference) load when the
command runs.
"""

from __future__ import annotations

from pathlib import Path

import click

from salad.clitools import LazyChoice, deprecated_alias, friendly_errors

# Literal copies of the defaults in salad.calibration (importing them would load numpy, onnx, …):
# tests/calibration/test_cli.py checks they agree.
METHODS = ("minmax", "entropy", "percentile")
MIN_IMAGES = 100
MIN_CHANNELS = 16


def _precisions() -> list[str]:
    """The registered builders' precisions (calibration/builders.py), loaded when the option is parsed or listed."""
    from .builders import BUILDERS

    return BUILDERS.names()


@click.command("calibrate", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--precision", required=True, type=LazyChoice(_precisions),
              help="fp16: float16 encoder (a cast, no films needed); int8: Q/DQ encoder calibrated on --data.")
@click.option("--data", type=click.Path(exists=True, path_type=Path), default=None,
              help="Real normal films for int8 calibration: a folder of images, class folders (normal/ is used) or a CSV.")
@click.option("--method", type=click.Choice(list(METHODS)), default="minmax", show_default=True,
              help="How int8 activation ranges are chosen from the calibration films.")
@click.option("--films", type=click.IntRange(min=1), default=None,
              help="Calibrate on this many films, spread over the sorted list.  [default: all found, at most 500]")
@deprecated_alias("--images", "--films", "films", type=click.IntRange(min=1))
@click.option("--min-films", type=click.IntRange(min=1), default=MIN_IMAGES, show_default=True,
              help="Refuse to calibrate int8 on fewer normal films.")
@deprecated_alias("--min-images", "--min-films", "min_films", type=click.IntRange(min=1))
@click.option("--per-channel/--per-tensor", default=True, show_default=True,
              help="int8 weight scales per output channel or one per layer.")
@click.option("--min-channels", type=click.IntRange(min=0), default=MIN_CHANNELS, show_default=True,
              help="Keep int8 layers with fewer channels (in or out) float: slower in int8 on CPUs. 0 quantizes all.")
@click.option("--max-auc-drop", type=click.FloatRange(min=0, max=1, max_open=True), default=None,
              help="Accuracy-bounded mode: keep the most error-prone layers float until |ΔAUC| on --labelled ≤ this.")
@click.option("--labelled", type=click.Path(exists=True, path_type=Path), default=None,
              help="Labelled validation films (normal/ + abnormal class folders, or a CSV) to measure ΔAUC on. "
                   "Use validation data, never the test set.")
@deprecated_alias("--data-labelled", "--labelled", "labelled", type=click.Path(exists=True, path_type=Path))
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Inference threads of the parity gate's runtimes and the latency measurement.  [default: their own]")
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write <precision>.json and .md.  [default: BUNDLE/calibration/]")
@click.option("--force", is_flag=True, help="Replace a variant the bundle already has (once the new one has passed).")
@friendly_errors
def calibrate_command(
    bundle: Path, precision: str, data: Path | None, method: str, films: int | None, min_films: int, per_channel: bool,
    min_channels: int, max_auc_drop: float | None, labelled: Path | None, threads: int | None, report_dir: Path | None,
    force: bool,
) -> None:
    """Add the fp16 or int8 variant of BUNDLE's graphs, measured against PyTorch in AUC and decisions.

    The scoring graph stays float32. The variant is added only if it meets its parity tolerances
    (manifest.parity[PRECISION]); otherwise the bundle is unchanged and the exit code is 3. The
    report (accuracy, per-layer error, sizes, CPU latency) is written either way.
    """
    from salad.calibration import calibrate_bundle

    report = calibrate_bundle(
        bundle, precision, data, method=method, films=films, per_channel=per_channel, min_films=min_films,
        max_auc_drop=max_auc_drop, labelled=labelled, report_dir=report_dir, min_channels=min_channels, force=force,
        threads=threads,
    )
    d = report.to_dict()
    acc = d["accuracy"]
    figures = [f"label agreement {acc['label_agreement']:.4f}" if acc["label_agreement"] is not None else None,
               f"ΔAUC {report.delta_auc:+.4f}{'' if acc['delta_auc'] is not None else ' (on the reference films)'}"
               if report.delta_auc is not None else None,
               f"max |Δscore| {acc['max_abs_score_diff']:.3g}" if acc["max_abs_score_diff"] is not None else None]
    speed = report.speedup_line()
    floats = len(report.layers_in_float)
    click.echo(
        f"added {', '.join(report.graphs.values())} to {bundle}\n"
        f"vs PyTorch: {', '.join(f for f in figures if f)}"
        + (f"; {floats} layer(s) kept float" if precision == "int8" else "") + "\n"
        + (f"speed: {speed}\n" if speed else "")
        + f"report: {report.files.get('markdown')}"
    )
