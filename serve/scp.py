"""The network side: a pynetdicom Storage SCP (C-ECHO, C-STORE) and the C-ECHO client of `salad serve --check`.

Every storage SOP class is accepted at association, so that a sender of an MR or CT gets a failure status
per C-STORE (serve/admission.py decides) and a log line, not an association that silently lacks a context.
Who may associate is decided when the A-ASSOCIATE-RQ arrives (called AE, allow-list, per-sender limit);
each decision and each C-STORE is a line of the audit log (serve/audit.py).
"""

from __future__ import annotations

import io
import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
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

from salad.errors import BackendError, SaladError
from salad.imageio import RADIOGRAPH_SOP_CLASSES

from .admission import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH,
    NOT_A_CHEST_FILM,
    SOP_CLASS_NOT_SUPPORTED,
    Admission,
    check_ae_title,
    sop_class_name,
)
from .audit import AuditLog
from .tls import peer_subject

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
#: DIMSE statuses (PS3.7 Annex C, PS3.4 Table B.2-1) the handler answers with; refusals are serve/admission.py's.
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
STATUS_MEANING = {
    SUCCESS: "stored", SOP_CLASS_NOT_SUPPORTED: "refused: SOP class not supported", OUT_OF_RESOURCES: "out of resources",
    DATASET_DOES_NOT_MATCH: "refused: data set does not match SOP class", CANNOT_UNDERSTAND: "refused: cannot understand",
    NOT_A_CHEST_FILM: "refused: not a frontal chest film",
}

#: A stored-instance receiver: (sop_class_uid, decoded header, encoded bytes with file meta, transfer syntax, who) → status.
Receiver = Callable[[str, Dataset | None, bytes, str, str], int]
__all__ = ["CANNOT_UNDERSTAND", "DATASET_DOES_NOT_MATCH", "SOP_CLASS_NOT_SUPPORTED", "Receiver", "echo", "sop_class_name",
           "start_scp"]


def make_ae(admission: Admission) -> AE:
    """An AE that accepts Verification and every storage SOP class (refusing per C-STORE) in TRANSFER_SYNTAXES."""
    ae = AE(ae_title=admission.called_ae)
    ae.maximum_pdu_size = 0  # no limit on what peers send us per PDU: fewer, larger reads for 7 MB films
    ae.add_supported_context(Verification)
    for context in StoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, list(TRANSFER_SYNTAXES))
    ae.maximum_associations = admission.max_associations
    # a silent peer is aborted after idle_timeout_s: before its A-ASSOCIATE-RQ (acse), between messages (network)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = admission.idle_timeout_s
    return ae


class _Gate:
    """The EVT_REQUESTED decision (accept, or A-ASSOCIATE-RJ with its reason) and the association's audit lines."""

    def __init__(self, admission: Admission, audit: AuditLog | None) -> None:
        self.admission = admission
        self.audit = audit
        self.lock = threading.Lock()
        self.open: dict[tuple[str, str], set[Any]] = {}

    def _record(self, event: str, assoc: Any, **fields: Any) -> None:
        if self.audit is not None:
            rq = assoc.requestor
            self.audit.append(event, calling_ae=str(rq.primitive.calling_ae_title if rq.primitive else rq.ae_title).strip(),
                              called_ae=str(rq.primitive.called_ae_title if rq.primitive else "").strip(),
                              address=rq.address, port=rq.port, **fields)

    def on_requested(self, event: Any) -> None:
        assoc = event.assoc
        rq = assoc.requestor.primitive
        calling, called, address = str(rq.calling_ae_title), str(rq.called_ae_title), str(assoc.requestor.address)
        try:
            with self.lock:
                key = (calling.strip(), address)
                alive = {a for a in self.open.get(key, set()) if a.is_alive() and not (a.is_released or a.is_aborted)}
                echo_only = all(str(cx.abstract_syntax) == Verification for cx in rq.presentation_context_definition_list)
                decision = self.admission.refuse(called, calling, address, len(alive), echo_only)
                if decision is None:
                    self.open[key] = alive | {assoc}
        except Exception as exc:  # fail closed: a fault in the policy never opens the node
            decision = ((0x02, 0x02, 0x01), f"the admission check failed ({type(exc).__name__}: {exc})")
        if decision is None:
            return
        (result, source, reason), why = decision
        log.warning("association from %s@%s rejected: %s", calling.strip(), address, why)
        self._record("association", assoc, outcome="rejected", reject=[result, source, reason], reason=why)
        assoc.acse.send_reject(result, source, reason)
        assoc.is_rejected = True
        assoc.kill()

    def on_established(self, event: Any) -> None:
        tls = peer_subject(getattr(event.assoc.dul.socket, "socket", None))
        self._record("association", event.assoc, outcome="accepted", tls_client=tls)

    def on_rejected(self, event: Any) -> None:  # pynetdicom's own rejections: more than maximum_associations
        why = f"more than {self.admission.max_associations} associations at once (--max-associations); the sender may retry"
        log.warning("association from %s rejected: %s", event.assoc.requestor.address, why)
        self._record("association", event.assoc, outcome="rejected", reject=[0x02, 0x03, 0x02], reason=why)

    def on_ended(self, event: Any) -> None:
        outcome = "released" if event.event == evt.EVT_RELEASED else "aborted"
        self._record("association-end", event.assoc, outcome=outcome)


def start_scp(
    ae_title: str, host: str, port: int, receive: Receiver, *, admission: Admission | None = None,
    tls: ssl.SSLContext | None = None, audit: AuditLog | None = None,
) -> tuple[AE, ThreadedAssociationServer]:
    """Listen on host:port (TLS with `tls`); each C-STORE goes to `receive`, whose status is sent back to the peer.

    `admission` decides who may associate; None is Admission's default: AE `ae_title`, senders on this machine only.
    """
    admission = admission if admission is not None else Admission(called_ae=check_ae_title(ae_title, "--ae-title"))
    gate = _Gate(admission, audit)

    def on_store(event: Any) -> int:
        calling = str(event.assoc.requestor.ae_title).strip()
        who = f"{calling}@{event.assoc.requestor.address}"
        sop_class = str(event.context.abstract_syntax)
        syntax = str(event.context.transfer_syntax)
        header: Dataset | None = None
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception as exc:
            log.error("from %s: cannot read the received bytes (%s)", who, exc)
            status = CANNOT_UNDERSTAND
        else:
            try:  # the header only: the pixel data is stored as received and decoded once, by the scorer
                header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            except Exception as exc:  # pydicom raises many types on a dataset it cannot parse
                log.error("from %s: cannot decode the dataset of a %s C-STORE (%s)", who, sop_class_name(sop_class), exc)
            status = receive(sop_class, header, data, syntax, who)
        if audit is not None:
            audit.append(
                "instance", calling_ae=calling, address=event.assoc.requestor.address,
                sop_instance_uid=str(header.get("SOPInstanceUID", "")) or None if header is not None else None,
                sop_class_uid=str(header.get("SOPClassUID", "")) or None if header is not None else None,
                context_sop_class_uid=sop_class, transfer_syntax=syntax, status=f"{status:#06x}",
                meaning=STATUS_MEANING.get(status, "failure"),
            )
        return status

    def on_echo(event: Any) -> int:
        return SUCCESS

    ae = make_ae(admission)
    handlers: list[Any] = [
        (evt.EVT_C_STORE, on_store), (evt.EVT_C_ECHO, on_echo), (evt.EVT_REQUESTED, gate.on_requested),
        (evt.EVT_ESTABLISHED, gate.on_established), (evt.EVT_REJECTED, gate.on_rejected),
        (evt.EVT_RELEASED, gate.on_ended), (evt.EVT_ABORTED, gate.on_ended),
    ]
    try:
        server = ae.start_server((host, port), block=False, evt_handlers=handlers, ssl_context=tls)
    except OSError as exc:  # the environment, not the command line: exit 1 (README, exit codes)
        raise SaladError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); another program (or `salad serve`) uses the port, "
            "or ports below 1024 need privileges. Choose another --port."
        ) from exc
    if server is None:  # only a blocking server returns None
        raise SaladError(f"pynetdicom started no server on {host}:{port}.")
    return ae, server


def echo(host: str, port: int, ae_title: str, timeout: float = 10.0, tls: ssl.SSLContext | None = None) -> float:
    """C-ECHO host:port (called AE `ae_title`); return the round trip in ms or raise a SaladError saying what failed."""
    called = check_ae_title(ae_title, "--ae-title")
    ae = AE(ae_title="SALAD-CHECK")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    start = time.perf_counter()
    assoc = ae.associate(host, port, ae_title=called, tls_args=(tls, host) if tls is not None else None)
    if not assoc.is_established:
        raise BackendError(
            f"no DICOM node answered at {called}@{host}:{port} (association {'rejected' if assoc.is_rejected else 'not established'}). "
            "Check that `salad serve` runs with this --port and --ae-title, that SALAD-CHECK from this machine is "
            "allowed (--allow), and the host and firewall."
        )
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = int(getattr(status, "Status", -1)) if status else -1
    if code != SUCCESS:
        raise BackendError(f"{called}@{host}:{port} answered C-ECHO with status {code:#06x}; expected 0x0000.")
    return (time.perf_counter() - start) * 1000
