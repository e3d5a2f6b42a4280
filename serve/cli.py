"""`salad serve BUNDLE --out RESULTS`: the DICOM node (Storage SCP and/or watch folder); `salad serve --check`.

Registered in the `salad` group by salad/cli.py. Imports neither torch nor onnx: runs on a console with
salad-edge[runtime,dicom].
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from salad.clitools import DEVICE, LazyChoice, friendly_errors
from salad.errors import BackendUnavailableError, ConfigError
from salad.manifest import PRECISIONS
from salad.runtime.base import runner_names

DEFAULT_PORT = 11112


def _configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log = logging.getLogger("salad.serve")
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
    # pynetdicom logs each failed association itself; the node's own lines say what failed and what happens next
    logging.getLogger("pynetdicom").setLevel(logging.INFO if verbose else logging.CRITICAL)


def _need_dicom_extra() -> None:
    try:
        import highdicom  # noqa: F401
        import pynetdicom  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError(
            f"`salad serve` needs pynetdicom and highdicom ({exc.name} is not installed): pip install 'salad-edge[dicom]'."
        ) from None


@click.command("serve")
@click.argument("bundle", type=click.Path(path_type=Path), required=False)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Results folder: scores.jsonl, sr/, and the disk queue (inbox/, outbox/).")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help=f"DICOM port to listen on [default: {DEFAULT_PORT}; with --watch, no listener unless given].")
@click.option("--host", default=None, help="Address to listen on [default: 0.0.0.0; --check: 127.0.0.1].")
@click.option("--ae-title", default="SALAD", show_default=True, help="This node's AE title (the called AE of senders).")
@click.option("--runtime", type=LazyChoice(runner_names), default="onnxruntime", show_default=True,
              help="Backend that runs the bundle's graph.")
@click.option("--precision", type=click.Choice(list(PRECISIONS)), default="fp32", show_default=True,
              help="Graph variant in the bundle.")
@click.option("--device", type=DEVICE, default=None, help="cpu, cuda or cuda:N (default: cpu, or cuda:0 for tensorrt).")
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Most films scored per inference call when several wait.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Inference threads (default: the runtime's choice).")
@click.option("--forward", "forward", default=None, metavar="AE@HOST:PORT",
              help="Send each SR on to this PACS by C-STORE (queued on disk, retried with back-off).")
@click.option("--watch", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Also score DICOM files exported into this folder (read only; each file once).")
@click.option("--settle", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Seconds a watched file's size and mtime must stay unchanged before it is read.")
@click.option("--status-every", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Seconds between status lines on stderr (0: none).")
@click.option("--retry-max", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Longest wait between forwarding attempts while the PACS is unreachable (seconds).")
@click.option("--check", is_flag=True, help="C-ECHO the node at --host/--port/--ae-title and exit (0: it answered).")
@click.option("-v", "--verbose", is_flag=True, help="Log every association (pynetdicom's own log).")
@friendly_errors
def serve_command(
    bundle: Path | None, out: Path | None, port: int | None, host: str | None, ae_title: str, runtime: str, precision: str,
    device: str | None, batch: int, threads: int | None, forward: str | None, watch: Path | None, settle: float,
    status_every: float, retry_max: float, check: bool, verbose: bool,
) -> None:
    """Score films as they arrive: a DICOM Storage SCP (C-STORE, C-ECHO) and/or a watch folder, with BUNDLE.

    Each CR/DX instance is acknowledged once it is on disk, scored from that queue, and ends as one row
    of RESULTS/scores.jsonl (score or error) plus, when scored, a Comprehensive SR in RESULTS/sr/.
    SIGTERM or Ctrl-C stops intake and scores what is queued; a second one stops at once (the queue
    resumes at the next start).
    """
    _need_dicom_extra()
    _configure_logging(verbose)
    from .scp import echo

    if check:
        target = host or "127.0.0.1"
        ms = echo(target, port or DEFAULT_PORT, ae_title)
        click.echo(f"ok: {ae_title}@{target}:{port or DEFAULT_PORT} answered C-ECHO in {ms:.0f} ms")
        return
    if bundle is None or out is None:
        raise ConfigError("salad serve needs BUNDLE and --out RESULTS (or --check to test a running node).")
    from .forward import parse_forward
    from .node import Node, NodeConfig

    config = NodeConfig(
        bundle=bundle, out=out, runtime=runtime, precision=precision, device=device, max_batch=batch, threads=threads,
        host=host or "0.0.0.0", port=port if port is not None or watch is not None else DEFAULT_PORT, ae_title=ae_title,
        forward=parse_forward(forward) if forward else None, watch=watch, settle_s=settle, status_every_s=status_every,
        retry_max_s=retry_max,
    )
    stats = Node(config).run()
    click.echo(f"served: received {stats.received}, scored {stats.scored}, failed {stats.failed}, refused {stats.refused}")
