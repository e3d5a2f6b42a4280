"""`torchrun --nproc_per_node N -m salad.train --data … --out …`: one rank of a data-parallel run.

Takes exactly the options of `salad train` (the same click parameters). Started by torchrun, each
process joins the process group and trains its share (salad.train.distributed); started without
torchrun, it is plain single-process `salad train`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

import click

from salad.cli import train as train_command
from salad.clitools import friendly_errors
from salad.errors import SaladError
from salad.train.config import TRAIN_SCHEMA


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _run(data: Path, out: Path, preset: str, val: Path | None, resume: bool, force: bool, **overrides: Any) -> None:
    """Train like `salad train`, as one rank of a torchrun job when started by torchrun."""
    from salad.train.distributed import ReportedByMain, launched_by_torchrun, train_distributed
    from salad.train.trainer import PRESETS, train_run

    overrides.pop("nproc", None)
    cfg = dataclasses.replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    if not launched_by_torchrun():
        click.echo(json.dumps({"schema": TRAIN_SCHEMA, **train_run(data, out, cfg, val=val, resume=resume, force=force)}))
        return
    try:
        summary = train_distributed(data, out, cfg, val=val, resume=resume, force=force)
    except ReportedByMain:
        _leave(0)  # rank 0 reports the error and fails the job; this rank leaves quietly so the failure is rank 0's
    except SaladError as exc:
        click.echo(f"error: {exc}" if _rank() == 0 else f"error: [rank {_rank()}] {exc}", err=True)
        _leave(exc.exit_code)
    except KeyboardInterrupt:
        click.echo(f"[rank {_rank()}] interrupted; the run continues with --resume", err=True)
        _leave(130)
    except Exception:  # an unexpected failure: its traceback, then the same clean exit
        traceback.print_exc()
        _leave(1)
    if summary is not None:
        click.echo(json.dumps({"schema": TRAIN_SCHEMA, **summary}))
    # Success leaves the same way: the run directory is complete (train_distributed waits at a barrier for
    # rank 0), and a normal interpreter exit can still abort in Gloo's thread teardown (exit -6 seen in CI).
    _leave(0)


def _leave(code: int) -> NoReturn:
    """Exit a worker now, with `code`, once its message is out.

    A normal interpreter exit runs the collective library's C++ destructors while the other ranks
    tear down their side: Gloo can then abort the process (exit -6 instead of the decided code), which
    torchrun would report as a crash. The message is already printed and the run directory is
    consistent (rank 0 writes it atomically), so nothing is lost by skipping interpreter teardown.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


main = click.Command(
    "salad.train",
    params=[p for p in train_command.params if p.name != "nproc"],
    callback=friendly_errors(_run),
    help="One rank of `salad train` under torchrun (data-parallel), or plain `salad train` without it.",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)

if __name__ == "__main__":
    main(prog_name="python -m salad.train")
