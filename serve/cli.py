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
@click.option("--precision", type=LazyChoice(PRECISIONS.names), default="fp32", show_default=True,
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
@click.option("--allow", "allow", multiple=True, metavar="AE[@HOST]",
              help="A sender that may associate: its AE title, optionally @ its address, network (10.0.0.0/24) or name; "
                   "`*@HOST` for any AE from HOST. Repeatable. Without --allow or --any-sender: senders on this machine only.")
@click.option("--any-sender", is_flag=True, help="Accept associations from any calling AE and address (the called AE is still checked).")
@click.option("--max-associations", type=click.IntRange(min=1), default=32, show_default=True,
              help="Associations open at once; more are rejected as busy (transient).")
@click.option("--max-per-sender", type=click.IntRange(min=1), default=4, show_default=True,
              help="Associations open at once from one calling AE and address, so that one sender cannot take every slot.")
@click.option("--idle-timeout", type=click.FloatRange(min=1), default=30.0, show_default=True,
              help="Seconds a peer may stay silent (before its association request, or between messages) before it is aborted.")
@click.option("--tls-cert", type=click.Path(path_type=Path), default=None,
              help="DICOM TLS: this node's certificate (PEM); with --tls-key. --check: the client certificate.")
@click.option("--tls-key", type=click.Path(path_type=Path), default=None, help="DICOM TLS: the certificate's private key (PEM).")
@click.option("--tls-ca", type=click.Path(path_type=Path), default=None,
              help="DICOM TLS: CA certificates (PEM); senders must present a certificate signed by one. --check: verifies the node.")
@click.option("--check", is_flag=True, help="C-ECHO the node at --host/--port/--ae-title and exit (0: it answered).")
@click.option("-v", "--verbose", is_flag=True, help="Log every association (pynetdicom's own log).")
@friendly_errors
def serve_command(
    bundle: Path | None, out: Path | None, port: int | None, host: str | None, ae_title: str, runtime: str, precision: str,
    device: str | None, batch: int, threads: int | None, forward: str | None, watch: Path | None, settle: float,
    status_every: float, retry_max: float, allow: tuple[str, ...], any_sender: bool, max_associations: int,
    max_per_sender: int, idle_timeout: float, tls_cert: Path | None, tls_key: Path | None, tls_ca: Path | None,
    check: bool, verbose: bool,
) -> None:
    """Score films as they arrive: a DICOM Storage SCP (C-STORE, C-ECHO) and/or a watch folder, with BUNDLE.

    Each CR/DX instance is acknowledged once it is on disk, scored from that queue, and ends as one row
    of RESULTS/scores.jsonl (score or error) plus, when scored, a Comprehensive SR in RESULTS/sr/.
    SIGTERM or Ctrl-C stops intake and scores what is queued; a second one stops at once (the queue
    resumes at the next start).
    """
    _need_dicom_extra()
    _configure_logging(verbose)
    from .admission import Admission, check_ae_title
    from .scp import echo
    from .tls import client_context, server_context

    ae_title = check_ae_title(ae_title, "--ae-title")
    if (tls_cert is None) != (tls_key is None) and not (check and tls_cert is None):
        raise ConfigError("--tls-cert and --tls-key go together: give both (PEM files), or neither for plain DICOM.")
    if check:
        target = host or "127.0.0.1"
        tls = client_context(tls_cert, tls_key, tls_ca) if tls_cert or tls_ca else None
        ms = echo(target, port or DEFAULT_PORT, ae_title, tls=tls)
        click.echo(f"ok: {ae_title}@{target}:{port or DEFAULT_PORT} answered C-ECHO in {ms:.0f} ms{' over TLS' if tls else ''}")
        return
    if bundle is None or out is None:
        raise ConfigError("salad serve needs BUNDLE and --out RESULTS (or --check to test a running node).")
    if tls_ca is not None and tls_cert is None:
        raise ConfigError("--tls-ca needs --tls-cert and --tls-key: the node's own certificate comes first.")
    admission = Admission.build(
        ae_title, allow, any_sender, per_sender=max_per_sender, max_associations=max_associations, idle_timeout_s=idle_timeout,
    )
    tls_context = server_context(tls_cert, tls_key, tls_ca) if tls_cert is not None and tls_key is not None else None
    from .forward import parse_forward
    from .node import Node, NodeConfig

    config = NodeConfig(
        bundle=bundle, out=out, runtime=runtime, precision=precision, device=device, max_batch=batch, threads=threads,
        host=host or "0.0.0.0", port=port if port is not None or watch is not None else DEFAULT_PORT, ae_title=ae_title,
        forward=parse_forward(forward) if forward else None, watch=watch, settle_s=settle, status_every_s=status_every,
        retry_max_s=retry_max, admission=admission, tls=tls_context,
    )
    if config.port is not None:
        logging.getLogger("salad.serve").info(
            "associations: called AE %s, from %s; at most %d at once (%d per sender), idle %.0f s; %s", ae_title,
            admission.describe(), max_associations, max_per_sender, idle_timeout,
            f"DICOM TLS ({'client certificates required' if tls_ca else 'no client certificates'})" if tls_context else "no TLS",
        )
    stats = Node(config).run()
    click.echo(f"served: received {stats.received}, scored {stats.scored}, failed {stats.failed}, refused {stats.refused}")
