"""`salad export-triton BUNDLE --out REPO`: a thin click command around salad.export.triton.export_triton.

Imports only click and the core at module level (like salad.export.cli), so registering it in the
`salad` group costs a console nothing; onnx and onnxruntime load when the command runs.
"""

from __future__ import annotations

from pathlib import Path

import click

from salad.clitools import LazyChoice, friendly_errors
from salad.manifest import PRECISIONS


@click.command("export-triton", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Model repository directory to create.")
@click.option("--precision", type=LazyChoice(PRECISIONS.names), default="fp32", show_default=True,
              help="Encoder variant of the bundle to serve (fp16/int8 are added by `salad calibrate`); the scorer stays fp32.")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="max_batch_size of every model: the most films Triton runs at once.")
@click.option("--tensorrt-accelerator", is_flag=True,
              help="Let ONNX Runtime's TensorRT provider run the models on GPUs (precision from --precision).")
@click.option("--name", default="salad", show_default=True,
              help="Ensemble name; the composing models are NAME_encoder and NAME_scorer.")
@click.option("--max-queue-delay-us", "queue_delay_us", type=click.IntRange(min=0), default=100, show_default=True,
              help="How long the dynamic batcher may hold a request to fill a batch (microseconds).")
@click.option("--force", is_flag=True, help="Replace an existing --out (only once the new repository has been checked).")
@friendly_errors
def export_triton_command(bundle: Path, out: Path, precision: str, max_batch: int, tensorrt_accelerator: bool, name: str,
                          queue_delay_us: int, force: bool) -> None:
    """Write a Triton Inference Server model repository serving BUNDLE (encoder, scorer, ensemble NAME)."""
    from salad.export.triton import export_triton

    repo = export_triton(
        bundle, out, precision=precision, max_batch=max_batch, name=name, tensorrt_accelerator=tensorrt_accelerator,
        queue_delay_us=queue_delay_us, force=force,
    )
    click.echo(
        f"wrote {repo}: ensemble {name!r} = {name}_encoder ({precision}) → {name}_scorer (fp32), max batch {max_batch}"
        f"{', TensorRT accelerator' if tensorrt_accelerator else ''}. Serve it with "
        f"`tritonserver --model-repository={repo}` (see {repo / 'README.md'})."
    )
