"""The network side: a pynetdicom Storage SCP (C-ECHO, C-STORE) and the C-ECHO client of `salad serve --check`.

Which SOP classes are stored is decided here, per C-STORE, so that a sender of an MR or CT gets a
failure status (0x0122, SOP class not supported) and a log line rather than an association that
silently lacks a presentation context.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    RLELossless,
)
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from salad.errors import BackendError, ConfigError, SaladError
from salad.imageio import RADIOGRAPH_SOP_CLASSES

log = logging.getLogger("salad.serve")

#: Transfer syntaxes the SCP accepts: the uncompressed ones, JPEG 2000 (lossless and lossy), JPEG Lossless
#: (process 14, and its selection value 1) and RLE. All decode with the core's pydicom/pylibjpeg, exactly as
#: `salad score` reads the same file. Others (JPEG baseline/extended, JPEG-LS, big endian) are declined at
#: association, so an SCU that can decompress falls back to one of these.
TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless, JPEG2000, JPEGLosslessSV1, JPEGLossless, RLELossless,
)
#: SOP classes stored and scored: projection radiographs (CR, DX for presentation, DX for processing), the
#: core's own list. Secondary capture is refused (docs/architecture.md §11: no acquisition geometry, often
#: burned-in text and an unknown display transform, so its scores are not the detector's validated input).
ACCEPTED_SOP_CLASSES = RADIOGRAPH_SOP_CLASSES
#: DIMSE statuses (PS3.7 Annex C, PS3.4 Table B.2-1) the handler answers with.
SUCCESS = 0x0000
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000

#: A stored-instance receiver: (sop_class_uid, decoded header, encoded bytes with file meta, who) → status.
Receiver = Callable[[str, Dataset | None, bytes, str, str], int]


def sop_class_name(uid: str) -> str:
    """'MR Image Storage (1.2.840.10008.5.1.4.1.1.4)' for a UID pydicom knows, the UID otherwise."""
    name = UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid


def make_ae(ae_title: str) -> AE:
    """An AE that accepts Verification and every storage SOP class (refusing per C-STORE) in TRANSFER_SYNTAXES."""
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = 0  # no limit on what peers send us per PDU: fewer, larger reads for 7 MB films
    ae.add_supported_context(Verification)
    for context in StoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, list(TRANSFER_SYNTAXES))
    ae.maximum_associations = 16
    return ae


def start_scp(ae_title: str, host: str, port: int, receive: Receiver) -> tuple[AE, ThreadedAssociationServer]:
    """Listen on host:port; each C-STORE goes to `receive`, whose status is sent back to the peer."""

    def on_store(event: Any) -> int:
        who = f"{event.assoc.requestor.ae_title}@{event.assoc.requestor.address}"
        sop_class = str(event.context.abstract_syntax)
        syntax = str(event.context.transfer_syntax)
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception as exc:
            log.error("from %s: cannot read the received bytes (%s)", who, exc)
            return CANNOT_UNDERSTAND
        try:  # the header only: the pixel data is stored as received and decoded once, by the scorer
            header: Dataset | None = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        except Exception as exc:  # pydicom raises many types on a dataset it cannot parse
            log.error("from %s: cannot decode the dataset of a %s C-STORE (%s)", who, sop_class_name(sop_class), exc)
            header = None
        return receive(sop_class, header, data, syntax, who)

    def on_echo(event: Any) -> int:
        return SUCCESS

    ae = make_ae(ae_title)
    try:
        server = ae.start_server((host, port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_C_ECHO, on_echo)])
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); another program (or `salad serve`) uses the port, "
            "or ports below 1024 need privileges. Choose another --port."
        ) from exc
    if server is None:  # only a blocking server returns None
        raise SaladError(f"pynetdicom started no server on {host}:{port}.")
    return ae, server


def echo(host: str, port: int, ae_title: str, timeout: float = 10.0) -> float:
    """C-ECHO host:port (called AE `ae_title`); return the round trip in ms or raise a SaladError saying what failed."""
    ae = AE(ae_title="SALAD-CHECK")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    start = time.perf_counter()
    assoc = ae.associate(host, port, ae_title=ae_title)
    if not assoc.is_established:
        raise BackendError(
            f"no DICOM node answered at {ae_title}@{host}:{port} (association {'rejected' if assoc.is_rejected else 'not established'}). "
            "Check that `salad serve` runs with this --port and --ae-title, and the host and firewall."
        )
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = int(getattr(status, "Status", -1)) if status else -1
    if code != SUCCESS:
        raise BackendError(f"{ae_title}@{host}:{port} answered C-ECHO with status {code:#06x}; expected 0x0000.")
    return (time.perf_counter() - start) * 1000
