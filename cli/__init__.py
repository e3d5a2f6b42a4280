"""The `salad` command line (the CLI layer: the top-level cli/ folder, installed as salad.cli): thin click commands.

The CLI layer is the only place that imports every stage; the core (salad/) imports no stage, not even
lazily (docs/architecture.md §1); each command calls one public function.

Stage modules are imported inside each command so that `salad score` on a console never imports
torch or onnx. A SaladError becomes a one-line message and its exit code (salad.errors), never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

import salad
from salad.clitools import (  # noqa: F401 - describe_os_error: stage CLIs' old import path
    DEVICE,
    OUTPUT,
    LazyChoice,
    deprecated_alias,
    describe_os_error,
    friendly_errors,
    is_stdout,
    require,
    write_output,
)
from salad.errors import EXIT_CHECKS_FAILED
from salad.scoring import SCORES


def _encoder_names() -> list[str]:
    from salad.train import ENCODERS

    return ENCODERS.names()


def _activation_names() -> list[str]:
    from salad.train import ACTIVATIONS

    return ACTIVATIONS.names()


def _preset_names() -> list[str]:
    from salad.train import PRESETS

    return list(PRESETS)


def _method_names() -> list[str]:
    from salad.train import METHOD_REGISTRY

    return METHOD_REGISTRY.names()


class StageGroup(click.Group):
    """A click group whose stage commands are imported only when listed or run.

    Stage command modules import only click and the core at module level, so `salad --help` and
    `salad score` on a console never load torch or onnx.
    """

    lazy_commands = {
        "export": "salad.export.cli:export_command",
        "score": "salad.onsite.score:score_command",
        "parity": "salad.runtime.cli:parity_command",
        "calibrate": "salad.calibration.cli:calibrate_command",
        "bench": "salad.runtime.bench:bench_command",
        "export-triton": "salad.export.triton_cli:export_triton_command",
        "serve": "salad.serve.cli:serve_command",
        "inspect": "salad.runtime.cli:inspect_command",
        "validate": "salad.export.cli:validate_command",
        "build-engine": "salad.runtime.cli:build_engine_command",
        "similarity": "salad.similarity.cli:similarity_group",
        "choose-bundle": "salad.onsite.cli:choose_bundle_command",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy_commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.lazy_commands.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        import importlib

        module, attr = target.split(":")
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=StageGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(salad.__version__, prog_name="salad-edge")
@click.option("-v", "--verbose", count=True, help="More log output (-vv: debug).")
@click.option("-q", "--quiet", is_flag=True, help="Errors only, and no progress bars.")
def main(verbose: int, quiet: bool) -> None:
    """salad-edge: train SALAD X-ray anomaly detectors, export verified bundles, score on consoles.

    \b
    Exit codes (salad.errors): 0 success; 1 could not run (bad input, bundle or environment; score: a film
    could not be scored); 2 usage error; 3 the checks ran and failed (parity, validation, calibration gate);
    130 interrupted.
    """
    from salad.progress import set_verbosity

    set_verbosity(verbose, quiet)


@main.command()
@click.option("--data", required=True, type=click.Path(exists=True, path_type=Path),
              help="Training data: a folder of normal images, a folder of class folders, or a CSV (path,label[,patient_id]).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run directory to create.")
@click.option("--preset", type=LazyChoice(_preset_names, metavar="NAME"), default="cpu", show_default=True,
              help="A preset of train/config.py: cpu fits 2 CPU cores in ≤ 20 min; cpu-ar: SALAD with 10 % confirmed abnormal films in "
                   "--data (the paper's AR setting); paper: the MICCAI 2020 chest settings (GPU).")
@click.option("--val", type=click.Path(exists=True, path_type=Path), default=None,
              help="Labelled validation data for thresholds and monitoring (default: 10% of the training normals, by patient).")
@click.option("--method", type=LazyChoice(_method_names, metavar="NAME"), default=None,
              help="salad, or a baseline from the same code (train/config.py METHODS: memdae, salad-no-agg, salad-no-mse).")
@click.option("--encoder", type=LazyChoice(_encoder_names, metavar="NAME"), default=None,
              help="Encoder/decoder pair registered in train/models.py (e.g. cxr, resnet18; another name lists them).")
@click.option("--size", type=int, default=None, help="Input size S (pixels).")
@click.option("--width", type=float, default=None, help="Channel width multiplier.")
@click.option("--activation", type=LazyChoice(_activation_names, metavar="NAME"), default=None,
              help="Activation of the conv blocks (train/models.py ACTIVATIONS): leaky_relu (the paper's, every preset's) or "
                   "relu, which ONNX Runtime fuses into its int8 convolutions (docs/architecture.md says what each is for).")
@click.option("--pretrain-epochs", type=int, default=None, help="Epochs of round 0 (no anchors).")
@click.option("--rounds", type=int, default=None, help="Number of progressive rounds R.")
@click.option("--round-epochs", type=int, default=None, help="Epochs per round.")
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None, help="Adam learning rate.")
@click.option("--lr-schedule", type=click.Choice(["constant", "cosine"]), default=None)
@click.option("--tau", type=float, default=None, help="Softmax temperature τ.")
@click.option("--neighbours", type=int, default=None, help="k neighbours of an anchor.")
@click.option("--neighbours-growth", type=int, default=None, help="Neighbours added to k per round after the first (0: k fixed).")
@click.option("--latent-loss", type=click.Choice(["replace", "sum"]), default=None,
              help="Anchors' loss: replace (the reference code: replaces -log p_ii) or sum (the paper's Eq. 3, L_ss + L_agg).")
@click.option("--lam", type=float, default=None, help="Weight λ of the discrimination loss.")
@click.option("--k", "score_k", type=int, default=None, help="K nearest bank rows in the score.")
@click.option("--score", "score", type=LazyChoice(SCORES.names), default=None,
              help="Operating score: the output thresholds, evaluation and decisions use (both are always computed).")
@click.option("--centre-tilt", type=click.FloatRange(min=0.0), default=None,
              help="Weight of the centre-density tilt fitted after training (0: none; the cpu preset: 2, cpu-ar: 8). "
                   "docs/quality.md says what it is and why.")
@click.option("--bank-refresh/--no-bank-refresh", default=None,
              help="Replace the bank by clean embeddings of the training films after training.")
@click.option("--known-anomaly-ratio", type=float, default=None,
              help="Mix this fraction of abnormal films into training (the paper's AR setting); their bank rows are dropped.")
@click.option("--weights", type=click.Path(exists=True), default=None, help="Local pretrained encoder weights (state dict).")
@click.option("--seed", type=int, default=None)
@click.option("--device", type=DEVICE, default=None, help="cpu, cuda or cuda:N (one process; --nproc takes a GPU each).")
@click.option("--threads", type=int, default=None, help="torch CPU threads (0 = all cores).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=None,
              help="Write checkpoint.pt every N epochs and after the last (default 1; --resume continues from the last one).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--force", is_flag=True, help="Delete an existing --out and start again.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Data-parallel processes on this machine, started with torchrun (one GPU each with --device cuda; "
                   "Gloo on CPU). The global batch stays --batch-size.")
@friendly_errors
def train(data: Path, out: Path, preset: str, val: Path | None, resume: bool, force: bool, nproc: int, **overrides: Any) -> None:
    """Train encoder + memory bank on normal X-rays into a run directory."""
    import dataclasses

    from salad.train import PRESETS, TRAIN_SCHEMA, train_run

    cfg = dataclasses.replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    if nproc > 1:
        from salad.train import launch, option_args, preflight

        preflight(data, out, cfg, val, resume, force, nproc)
        ctx = click.get_current_context()
        sys.exit(launch(nproc, option_args(ctx.command.params, ctx.params)))
    summary = train_run(data, out, cfg, val=val, resume=resume, force=force)
    click.echo(json.dumps({"schema": TRAIN_SCHEMA, **summary}))


@main.command()
@click.argument("run", type=click.Path(exists=True, path_type=Path))
@click.option("--labelled", type=click.Path(exists=True, path_type=Path), default=None,
              help="Labelled films: class folders (normal/ + others) or a CSV (path,label).  [required]")
@deprecated_alias("--data", "--labelled", "labelled", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "json_out", type=OUTPUT, default=None, help="Write the metrics as JSON here ('-' for stdout).")
@click.option("--plots", type=click.Path(path_type=Path), default=None, help="Folder for ROC, PR and histogram PNGs.")
@friendly_errors
def evaluate(run: Path, labelled: Path | None, json_out: Path | None, plots: Path | None) -> None:
    """AUC and AUPRC of a run on labelled data (abnormal = positive)."""
    require(labelled, "--labelled")
    from salad.train import evaluate_run

    result = evaluate_run(run, labelled, plots=plots)
    write_output(json_out, json.dumps(result, indent=2) + "\n")
    if not is_stdout(json_out):
        click.echo(f"AUC {result['auc']:.4f}  AUPRC {result['auprc']:.4f}  ({result['n_normal']} normal, {result['n_abnormal']} abnormal)")


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("salad-demo"), show_default=True,
              help="Folder for the run, the bundle and report.html / report.md.")
@click.option("--data", type=click.Path(exists=True, path_type=Path), default=None,
              help="Your own data (folder, class folders or CSV); default: the real chest X-rays shipped with salad-edge.")
@click.option("--quick", is_flag=True, help="A shorter training budget (half of the CPU preset's epochs).")
@click.option("--force", is_flag=True, help="Replace an existing --out that is a demo output (or a run or bundle), never another folder.")
@click.option("--machine", type=click.Choice(["auto", "busy", "quiet"]), default="auto", hidden=True,
              help="For tests: treat the machine as busy or quiet whatever its load average (auto: by the load).")
@friendly_errors
def demo(out: Path, data: Path | None, quick: bool, force: bool, machine: str) -> None:
    """Train → evaluate → export → calibrate → parity → bench → score, and write a report."""
    from salad.cli.demo import run_demo

    result = run_demo(out, data=data, quick=quick, force=force, echo=click.echo, machine=machine)
    auc = result.metrics.get("evaluation", {}).get("auc")
    verdicts = ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in result.parity.items())
    click.echo(f"AUC {auc:.3f} on the test films" if auc is not None else "AUC n/a (no abnormal films to evaluate on)")
    if result.operating is not None:
        click.echo(f"operating point: {result.operating.describe()}")
    click.echo(f"parity (test films): {verdicts}")
    click.echo(f"speed (batch 1, end to end): {result.headline.summary if result.headline else 'n/a'}")
    missed = sorted(name for name, ok in result.parity.items() if not ok and not name.endswith("/fp32"))
    if missed:
        # On 40 test films one flipped decision is 2.5 % disagreement: a variant that misses a tolerance here is
        # reported as not verified, not a failed demo. The fp32 bundle must match PyTorch whatever the films.
        click.echo(f"not verified on the test films: {', '.join(missed)} (see parity.md; judge a variant on ≥ 100 films of "
                   "your own with `salad calibrate` and `salad parity` before deploying it)")
    if not all(ok for name, ok in result.parity.items() if name.endswith("/fp32")):
        sys.exit(EXIT_CHECKS_FAILED)


def export_main() -> None:
    """Entry point of the `salad-export` console script (same as `salad export`)."""
    from salad.export.cli import export_command

    export_command(prog_name="salad-export")


if __name__ == "__main__":
    main()
