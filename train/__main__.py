"""`torchrun --nproc_per_node N -m salad.train --data … --out …`: one rank of a data-parallel run.

Takes exactly the options of `salad train` (the same click parameters). Started by torchrun, each
process joins the process group and trains its share (salad.train.distributed); started without
torchrun, it is plain single-process `salad train`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from salad.cli import friendly_errors
from salad.cli import train as train_command
from salad.errors import SaladError


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


def _run(data: Path, out: Path, preset: str, val: Path | None, resume: bool, force: bool, **overrides: Any) -> None:
    """Train like `salad train`, as one rank of a torchrun job when started by torchrun."""
    from salad.train.distributed import ReportedByMain, launched_by_torchrun, train_distributed
    from salad.train.trainer import PRESETS, train_run

    overrides.pop("nproc", None)
    cfg = dataclasses.replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    if not launched_by_torchrun():
        click.echo(json.dumps(train_run(data, out, cfg, val=val, resume=resume, force=force)))
        return
    try:
        summary = train_distributed(data, out, cfg, val=val, resume=resume, force=force)
    except ReportedByMain:
        return  # rank 0 reports the error and fails the job; this rank leaves quietly so the failure is rank 0's
    except SaladError as exc:
        if _rank() != 0:
            raise SaladError(f"[rank {_rank()}] {exc}") from exc
        raise
    if summary is not None:
        click.echo(json.dumps(summary))


main = click.Command(
    "salad.train",
    params=[p for p in train_command.params if p.name != "nproc"],
    callback=friendly_errors(_run),
    help="One rank of `salad train` under torchrun (data-parallel), or plain `salad train` without it.",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)

if __name__ == "__main__":
    main(prog_name="python -m salad.train")
