"""Forward the SRs in outbox/ to a PACS by C-STORE, with exponential back-off while it is unreachable.

An SR leaves outbox/ only after the PACS answered success (or a warning, which PS3.4 counts as stored),
or after it was refused `tries` times, when it moves to deadletter/ with the reason; until then it stays
on disk, across restarts, and is resent.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
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
    """Sends outbox/ to one destination; an unreachable PACS backs off from `base_s` doubling up to `max_s`.

    A refusal (a failure status for one SR, or an association the PACS rejects, e.g. for a wrong AE title)
    counts against each SR concerned, with the reason logged and kept in forward.jsonl; after `tries` of them
    the SR moves to deadletter/ beside a .reason.json, so one bad SR never blocks the ones behind it.
    A PACS that does not answer at all is waited for without limit: nothing is dead-lettered for an outage.
    """

    def __init__(self, store: Store, destination: Destination, calling_ae: str, base_s: float = 0.5, max_s: float = 60.0,
                 tries: int = 5, on_dead: Callable[[], None] | None = None) -> None:
        self.store = store
        self.destination = destination
        self.calling_ae = calling_ae
        self.base_s = base_s
        self.max_s = max_s
        self.tries = tries
        self.on_dead = on_dead or (lambda: None)
        self.wake = threading.Event()
        self.sent = 0
        self.dead = 0
        self.failures = 0  # consecutive failed passes: the back-off exponent
        self.refusals = store.forward_failures()  # SR file name → refusals so far (survives restarts)

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
        answer: list[Any] = []
        assoc = ae.associate(d.host, d.port, ae_title=d.ae_title,
                             evt_handlers=[(evt.EVT_ACSE_RECV, lambda event: answer.append(event.primitive))])
        if not assoc.is_established:
            if assoc.is_rejected:  # the PACS answered and said no: a refusal of every SR waiting
                why = f"{d} rejected the association ({_rejection(answer)})"
                for path in items:
                    self._refused(path, why)
            self._failed(f"cannot associate with {d} ({why if assoc.is_rejected else 'no answer'})", len(items))
            return 0
        delivered = 0
        try:
            for path in items:
                if not path.exists():
                    continue
                try:
                    status = assoc.send_c_store(path)
                except Exception as exc:  # an unreadable file, or the association went away: retry later
                    self._failed(f"C-STORE of {path.name} to {d} failed ({type(exc).__name__}: {exc})", len(items) - delivered)
                    if not assoc.is_established:
                        break
                    self._refused(path, f"C-STORE failed ({type(exc).__name__}: {exc})")
                    continue
                code = int(getattr(status, "Status", -1)) if status else -1
                if code == 0 or 0xB000 <= code <= 0xBFFF:
                    path.unlink(missing_ok=True)
                    delivered += 1
                elif code == -1:  # no answer within the timeout: the association is gone
                    self._failed(f"{d} did not answer the C-STORE of {path.name}", len(items) - delivered)
                    break
                else:  # this SR is refused; the ones behind it are still sent
                    comment = str(getattr(status, "ErrorComment", "") or "")
                    self._refused(path, f"{d} answered C-STORE with status {code:#06x}{f' ({comment})' if comment else ''}")
        finally:
            if assoc.is_established:
                assoc.release()
        if delivered:
            self.sent += delivered
            self.failures = 0
            log.info("forwarded %d SR(s) to %s", delivered, d)
        return delivered

    def _refused(self, path: Path, why: str) -> None:
        """Count one refusal of `path`; after `tries`, move it to deadletter/ with the reason."""
        n = self.refusals.get(path.name, 0) + 1
        self.refusals[path.name] = n
        entry = {"sr": path.name, "event": "failed", "try": n, "reason": why, "at": datetime.now(timezone.utc).isoformat()}
        with contextlib.suppress(OSError):
            self.store.record_forward(entry)
        if n < self.tries:
            log.warning("forward: %s refused (try %d of %d): %s", path.name, n, self.tries, why)
            return
        try:
            target = self.store.bury(path, {**entry, "event": "dead-lettered", "tries": n, "destination": str(self.destination)})
        except OSError as exc:
            log.error("forward: %s could not be moved to %s (%s); it stays queued", path.name, self.store.dead_letter, exc)
            return
        self.dead += 1
        self.on_dead()
        log.error("forward: %s dead-lettered after %d refusals (last: %s); it is kept in %s with its reason, and "
                  "resent once moved back into %s", path.name, n, why, target.parent, self.store.outbox)

    def _failed(self, why: str, waiting: int) -> None:
        self.failures += 1
        log.warning("forward: %s; %d SR(s) stay queued in %s, retry in %.1f s", why, waiting, self.store.outbox, self.backoff_s())


def _rejection(primitives: list[Any]) -> str:
    """The A-ASSOCIATE-RJ's result, source and reason in words (e.g. 'called AE title not recognised')."""
    for p in primitives:
        if getattr(p, "result", None) in (0x01, 0x02):
            return f"{p.result_str}; {p.source_str}; {p.reason_str}"
    return "no reason given"
