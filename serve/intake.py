"""Intake: each film from a C-STORE or the watch folder is refused (with a row) or stored in inbox/, then acknowledged.

The answer a sender gets is decided here: a film is acknowledged (0x0000) only once it is durable in inbox/
(serve/store.py), a duplicate of a scored film is acknowledged without being stored, and a refusal writes an
error row before its failure status is sent. The header and pixel sha256 read here are kept for the scoring
worker (serve/rows.py Received), so a film's header is parsed once on its way to its row.
"""

from __future__ import annotations

import logging
import threading
import time

from pydicom.dataset import Dataset

from .admission import film_refusal
from .audit import AuditLog
from .config import NodeConfig
from .health import Stats
from .ledger import film_key, pixel_sha256
from .rows import Judge, Received, film_ids, iso
from .scp import CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH, OUT_OF_RESOURCES, SUCCESS, sop_class_name
from .store import Store, is_uid

log = logging.getLogger("salad.serve")
Ids = dict[str, str | None]


class Intake:
    """The film decisions of one node; `receive` is the SCP's C-STORE handler, `take_file` the watch folder's."""

    def __init__(self, config: NodeConfig, store: Store, judge: Judge, stats: Stats, audit: AuditLog,
                 received: Received, wake: threading.Event) -> None:
        self.config, self.store, self.judge, self.stats, self.audit = config, store, judge, stats, audit
        self.received, self.wake = received, wake

    def receive(self, sop_class: str, header: Dataset | None, data: bytes, syntax: str, who: str) -> int:
        """A C-STORE: refuse (with a row and a log line) or store in inbox/; the returned status is the ack."""
        if len(data) > self.config.max_film_bytes:
            return self._refuse(film_ids(header), f"dicom:{who}", OUT_OF_RESOURCES, f"{len(data):,} bytes is larger than the "
                                f"node's {self.config.max_film_bytes:,}-byte cap for one film; not stored. Refused with 0xA700.")
        return self._accept(sop_class, header, data, f"dicom:{who}")

    def take_file(self, rel: str, header: Dataset | None, data: bytes, error: str | None) -> str:
        """A settled watch-folder file: the same decisions as a C-STORE; returns the outcome for the ledger."""
        source = f"watch:{rel}"
        if error is not None or header is None:
            log.warning("refused from %s: %s", source, error or f"{rel}: no DICOM header")
            if not self.error_row(film_ids(None), error or f"{rel}: no DICOM header", source, refused=CANNOT_UNDERSTAND):
                raise OSError(f"the refusal row for {rel} could not be written")  # not recorded: taken again next pass
            return "unreadable"
        sop_class = str(getattr(getattr(header, "file_meta", None), "MediaStorageSOPClassUID", "") or header.get("SOPClassUID", ""))
        status = self._accept(sop_class, header, data, source)
        self.audit.append("instance", source="watch", path=rel, sop_instance_uid=str(header.get("SOPInstanceUID", "")) or None,
                          sop_class_uid=sop_class or None, status=f"{status:#06x}")
        if status == OUT_OF_RESOURCES:  # a full disk: not taken in, so the next pass tries again
            raise OSError(f"{rel} could not be stored (answered {status:#06x})")
        return "stored" if status == SUCCESS else f"refused {status:#06x}"

    def _accept(self, sop_class: str, header: Dataset | None, data: bytes, source: str) -> int:
        ids = film_ids(header)
        uid = ids["sop_instance_uid"] or ""
        modality = str(header.get("Modality", "") or "").strip().upper() if header is not None else ""
        what = f"{sop_class_name(sop_class)}, modality {modality or 'missing'}, SOP Instance UID {uid or 'missing'}"
        refusal = film_refusal(sop_class, header)  # serve/admission.py: SOP class, context, modality, chest, view
        if refusal is not None:
            return self._refuse(ids, source, refusal.status, f"{what}: {refusal.reason}")
        if header is None or not is_uid(uid):
            return self._refuse(ids, source, DATASET_DOES_NOT_MATCH, f"{what}: no valid SOP Instance UID; fix the export at the modality.")
        sha = pixel_sha256(data)
        if self.store.ledger.has(uid, sha):
            self.stats.add("duplicates")
            log.info("%s: SOP Instance UID %s (the same pixels) was already scored; acknowledged, not scored again", source, uid)
            return SUCCESS
        if self.store.ledger.collides(uid, sha):
            log.warning("%s: SOP Instance UID %s already names a different film (pixel sha256 %s… differs); kept and "
                        "scored as its own film, its row names the collision", source, uid, sha[:16])
        return self._store(film_key(uid, sha), header, sha, data, source)

    def _store(self, key: str, header: Dataset, sha: str, data: bytes, source: str) -> int:
        """Make the film durable in inbox/ (the ack waits for this), or answer 0xA700 when the disk refuses it."""
        self.received.put(key, header, sha)
        try:
            self.store.put(key, data)
        except OSError as exc:
            self.received.pop(key)
            self.stats.fail("disk", f"cannot store films in {self.store.inbox} ({exc.strerror or exc})", "disk_errors")
            log.error("%s: cannot store %s in %s (%s); answered 0xA700 (out of resources), the sender keeps it",
                      source, header.get("SOPInstanceUID"), self.store.inbox, exc.strerror or exc)
            return OUT_OF_RESOURCES
        self.stats.clear("disk")
        self.stats.add("received")
        self.wake.set()
        return SUCCESS

    def _refuse(self, ids: Ids, source: str, status: int, why: str) -> int:
        log.warning("refused from %s: %s", source, why)
        self.error_row(ids, why, source, refused=status)
        return status

    def error_row(self, ids: Ids, error: str, source: str, refused: int) -> bool:
        """Write a refusal row; False (logged, counted) when the disk is full: the film was not acknowledged."""
        row = {**self.judge.row(ids, source), "label": None, "error": error, "refused": f"{refused:#06x}",
               "received": iso(time.time_ns())}
        self.stats.add("refused")
        try:
            self.store.append_rows([row])
        except OSError as exc:
            why = f"cannot write a row to {self.store.rows_path} ({exc.strerror or exc})"
            log.error("%s; the refusal of %s from %s is in this log only", why, ids.get("sop_instance_uid"), source)
            self.stats.fail("disk", why, "disk_errors")
            return False
        return True
