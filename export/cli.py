"""`salad export` / `salad-export`: a thin click command around salad.export.export_bundle.

Imports only click and the core at module level, so registering it in the `salad` group costs a
console nothing; torch and onnx load when the command runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from salad.clitools import OUTPUT, deprecated_alias, friendly_errors, is_stdout, write_output

#: Reference films stored by default.
REFERENCE_FILMS = 32


def count_validation_films(run: Path) -> int:
    """Rows of RUN/val.csv (the films reference films are drawn from); 0 if it is missing or unreadable."""
    try:
        with open(run / "val.csv", encoding="utf-8") as fh:
            return max(0, sum(1 for line in fh if line.strip()) - 1)
    except OSError:
        return 0


@click.command("export", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Bundle directory to create.")
@click.option("--force", is_flag=True, help="Replace an existing --out (only once the new bundle has validated).")
@click.option("--bank-as-input", is_flag=True,
              help="The scorer takes the memory bank as input 'bank' [N,200] (stored as bank.npy) instead of holding it.")
@click.option("--slim", is_flag=True, help="Leave checkpoint.pt out of the bundle (the manifest keeps its sha256).")
@click.option("--reference-films", type=click.IntRange(min=1), default=None,
              help="Validation films stored with their PyTorch outputs as the parity oracle.  "
                   f"[default: {REFERENCE_FILMS}, or every validation film of the run if it has fewer]")
@deprecated_alias("--reference-images", "--reference-films", "reference_films", type=click.IntRange(min=1))
@click.option("--operating-point", default="specificity:0.95", show_default=True,
              help="Where the threshold sits on the run's validation scores: specificity:X or sensitivity:X.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (17..20).")
@click.option("--allow-below-floors", is_flag=True,
              help="Export a run whose labelled validation AUC does not beat its training-free floors (for testing).")
@friendly_errors
def export_command(run: Path, out: Path, force: bool, bank_as_input: bool, slim: bool, reference_films: int | None,
                   operating_point: str, opset: int, allow_below_floors: bool) -> None:
    """Export training run RUN to a verified ONNX bundle (encoder, scorer, merged model, manifest)."""
    from salad.bundle import Bundle
    from salad.export import export_bundle
    from salad.manifest_blocks import Validation

    if reference_films is None:  # the default caps itself to the films there are; an explicit count is honoured or refused
        reference_films = min(REFERENCE_FILMS, count_validation_films(run)) or REFERENCE_FILMS
    bundle = export_bundle(
        run, out, force=force, bank_as_input=bank_as_input, slim=slim, reference_films=reference_films,
        operating_point=operating_point, opset=opset, allow_below_floors=allow_below_floors)
    m = Bundle.open(bundle, verify=False).manifest
    t = m.threshold
    validation = t.validation or Validation()
    achieved = ", ".join(f"{k} {v:.3f}" for k, v in (t.achieved or {}).items() if v is not None)
    parity = m.graphs["model"].details.get("parity", {})
    click.echo(
        f"wrote {bundle}: {', '.join(g.file for g in m.graphs.values())}; bank {m.bank.rows} rows "
        f"({m.bank.form}), K={m.k}\n"
        f"threshold {t.score} > {t.value:.6g} ({achieved} on {validation.n_normal} normal / "
        f"{validation.n_abnormal} abnormal validation films)\n"
        f"ONNX Runtime vs PyTorch on {m.reference.images} reference films: max |Δscore| "
        f"{parity.get('max_abs_diff', {}).get('score', float('nan')):.2g}, min embedding cosine "
        f"{parity.get('embedding_cosine_min', float('nan')):.7f}"
    )


#: The shape of `salad validate --json` (salad/schemas/validation.json).
VALIDATION_SCHEMA = "salad-validation/1"


def _write_json(out: Path | None, payload: dict[str, Any]) -> None:
    """Strict JSON to `out` ('-': stdout), written atomically."""
    if out is not None:
        write_output(out, json.dumps(payload, indent=2, allow_nan=False) + "\n")


@click.command("validate", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "json_out", type=OUTPUT, default=None,
              help="Write {valid, graphs, failures} here (schema salad-validation/1), passed or failed ('-' for stdout).")
@friendly_errors
def validate_command(bundle: Path, json_out: Path | None) -> None:
    """Check BUNDLE as export does: every sha256, onnx.checker and the graph contract, ONNX Runtime vs PyTorch.

    Exits with 3, listing every failing check, when any fails. Precision variants are judged by
    `salad parity BUNDLE`.
    """
    from salad.errors import ExportValidationError
    from salad.export.validate import validate_bundle

    try:
        report = validate_bundle(bundle)
    except ExportValidationError as exc:
        _write_json(json_out, {"schema": VALIDATION_SCHEMA, "bundle": str(bundle), "valid": False, "graphs": {},
                               "failures": exc.failures})
        raise
    _write_json(json_out, {"schema": VALIDATION_SCHEMA, "bundle": str(bundle), "valid": True, "graphs": report,
                           "failures": []})
    if is_stdout(json_out):
        return
    for key, worst in report.items():
        diffs = ", ".join(f"|Δ{k}| {v:.2g}" for k, v in worst.get("max_abs_diff", {}).items())
        cosine = f", min embedding cosine {worst['embedding_cosine_min']:.7f}" if "embedding_cosine_min" in worst else ""
        click.echo(f"{key}: ok at batch sizes {worst.get('batch_sizes')} ({diffs}{cosine})")
    click.echo(f"{bundle}: valid")
