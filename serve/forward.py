"""Forward the SRs in outbox/ to a PACS by C-STORE, with exponential back-off while it is unreachable.

An SR leaves outbox/ only after the PACS answered success (or a warning, which PS3.4 counts as stored);
until then it stays on disk, across restarts, and is resent.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import ComprehensiveSRStorage  # type: ignore[attr-defined]

from salad.errors import ConfigError

from .store import Store

log = logging.getLogger("salad.serve")

_DESTINATION = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:@]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class Destination:
    """A remote DICOM node: AE title, host, port."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_forward(text: str) -> Destination:
    """AE@HOST:PORT → Destination, or a SaladError showing the expected form."""
    m = _DESTINATION.match(text.strip())
    port = int(m.group("port")) if m else 0
    if not m or not 0 < port < 65536:
        raise ConfigError(f"--forward {text!r}: expected AE@HOST:PORT, e.g. PACS@10.0.0.5:104 (AE title ≤ 16 characters).")
    return Destination(m.group("ae").strip(), m.group("host").strip("[]"), port)


class Forwarder:
    """Sends outbox/ to one destination; failures back off from `base_s` doubling up to `max_s`."""

    def __init__(self, store: Store, destination: Destination, calling_ae: str, base_s: float = 0.5, max_s: float = 60.0) -> None:
        self.store = store
        self.destination = destination
        self.calling_ae = calling_ae
        self.base_s = base_s
        self.max_s = max_s
        self.wake = threading.Event()
        self.sent = 0
        self.failures = 0  # consecutive failed attempts: the back-off exponent

    def backoff_s(self) -> float:
        return min(self.max_s, self.base_s * 2 ** max(0, self.failures - 1)) if self.failures else 0.0

    def run(self, stop: threading.Event) -> None:
        """Forward until `stop`; then one last pass without waiting (what fails stays queued)."""
        while not stop.is_set():
            if self.store.outbox_items():
                self.send_pending()
            self.wake.wait(self.backoff_s() or 1.0)
            self.wake.clear()
        self.send_pending()

    def send_pending(self) -> int:
        """One association, every SR in outbox/; return how many were delivered. Never raises for network trouble."""
        items = self.store.outbox_items()
        if not items:
            return 0
        ae = AE(ae_title=self.calling_ae)
        ae.add_requested_context(ComprehensiveSRStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        d = self.destination
        assoc = ae.associate(d.host, d.port, ae_title=d.ae_title)
        if not assoc.is_established:
            self._failed(f"cannot associate with {d} ({'rejected' if assoc.is_rejected else 'no answer'})", len(items))
            return 0
        delivered = 0
        try:
            for path in items:
                if not path.exists():
                    continue
                try:
                    status = assoc.send_c_store(path)
                except Exception as exc:  # an aborted association, an unreadable file: retry later
                    self._failed(f"C-STORE of {path.name} to {d} failed ({type(exc).__name__}: {exc})", len(items) - delivered)
                    break
                code = int(getattr(status, "Status", -1)) if status else -1
                if code == 0 or 0xB000 <= code <= 0xBFFF:
                    path.unlink(missing_ok=True)
                    delivered += 1
                else:
                    self._failed(f"{d} answered C-STORE of {path.name} with status {code:#06x}", len(items) - delivered)
                    break
        finally:
            if assoc.is_established:
                assoc.release()
        if delivered:
            self.sent += delivered
            if delivered == len(items):
                self.failures = 0
            log.info("forwarded %d SR(s) to %s", delivered, d)
        return delivered

    def _failed(self, why: str, waiting: int) -> None:
        self.failures += 1
        log.warning("forward: %s; %d SR(s) stay queued in %s, retry in %.1f s", why, waiting, self.store.outbox, self.backoff_s())
