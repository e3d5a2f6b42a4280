"""What `salad serve` was asked to do: the node's configuration, one frozen record shared by its parts."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from salad.imageio import MAX_FILE_BYTES

from .admission import Admission
from .forward import Destination


@dataclass(frozen=True)
class NodeConfig:
    """What `salad serve` was asked to do. `port=None` runs no SCP (watch folder only)."""

    bundle: Path
    out: Path
    runtime: str = "onnxruntime"
    precision: str = "fp32"
    device: str | None = None
    max_batch: int = 8
    threads: int | None = None
    host: str = "0.0.0.0"
    port: int | None = 11112
    ae_title: str = "SALAD"
    forward: Destination | None = None
    watch: Path | None = None
    settle_s: float = 2.0
    status_every_s: float = 60.0
    retry_base_s: float = 0.5
    retry_max_s: float = 60.0
    drain_timeout_s: float = 30.0
    #: Who may associate and the association limits (serve/admission.py); None: AE `ae_title`, this machine's senders.
    admission: Admission | None = None
    #: DICOM TLS for the listener (serve/tls.py); None: plain TCP.
    tls: ssl.SSLContext | None = None
    #: Largest film taken in (C-STORE or watch folder), checked before the bytes are read or stored.
    max_film_bytes: int = MAX_FILE_BYTES
    #: Failed deliveries of one SR before it is moved to RESULTS/deadletter/ with its reason.
    forward_tries: int = 5
