"""The node: intake (SCP and watch folder) → disk queue → one scoring worker → rows, SRs, outbox.

Threads: pynetdicom's association threads and the watcher only store and acknowledge (serve/intake.py); one
worker owns the activated Scorer and scores whatever waits in inbox/ in batches of up to `max_batch`, its rows and
SRs listening to the Scorer's events and each batch committed on its `batch-scored` event (serve/worker.py); the
forwarder empties outbox/. The main thread supervises and, on SIGTERM or Ctrl-C, drains:
it stops taking new films, scores the queue, forwards once more, then returns. docs/architecture.md §11.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer

from salad.errors import SaladError
from salad.fsutil import writer_lock
from salad.manifest import MANIFEST, sha256_file
from salad.runtime import Scorer

from .audit import AuditLog
from .config import NodeConfig
from .forward import Forwarder, parse_forward
from .health import Stats
from .intake import Intake
from .recovery import check_folders, log_recovered, regenerate_srs
from .reports import Reports
from .rows import Judge, Received, iso
from .scp import start_scp
from .sr_template import ReportTemplate
from .store import Store
from .watch import Watcher
from .worker import Worker

__all__ = ["Node", "NodeConfig", "Stats", "check_folders", "parse_forward"]

log = logging.getLogger("salad.serve")
HEALTH = "health.json"


class Node:
    """A running DICOM node over one bundle; `run()` blocks until SIGTERM/Ctrl-C and a drain."""

    def __init__(self, config: NodeConfig) -> None:
        check_folders(config)
        self.config = config
        options: dict[str, Any] = {"threads": config.threads} if config.threads else {}
        self.scorer = Scorer.from_bundle(
            config.bundle, runtime=config.runtime, precision=config.precision, device=config.device,
            max_batch=config.max_batch, **options,
        )
        #: The bundle's identity in every row and SR: sha256 of manifest.json, which holds every file's sha256.
        self.bundle_sha256 = sha256_file(Path(config.bundle) / MANIFEST)
        self.judge = Judge(self.scorer.threshold, self.scorer.threshold_score, self.bundle_sha256, self.scorer.runtime,
                           self.scorer.precision)
        self.stats = Stats()
        self.wake = threading.Event()
        self._stop_intake = threading.Event()
        self._draining = threading.Event()
        self._stop_forward = threading.Event()
        self._status_stop = threading.Event()
        self._worker_error: BaseException | None = None
        self.store: Store | None = None
        self.forwarder: Forwarder | None = None
        self.audit = AuditLog(config.out)  # who sent what: one line per association, instance (C-STORE or watch folder) and SR

    # -- health ----------------------------------------------------------------------------------

    def status_line(self) -> str:
        assert self.store is not None
        p50, p95 = self.stats.percentiles()
        s = self.stats
        outbox = f", outbox {len(self.store.outbox_items())}" if self.forwarder is not None else ""
        return (
            f"status: received {s.received}, scored {s.scored}, failed {s.failed}, refused {s.refused}, "
            f"duplicates {s.duplicates}, queue {len(self.store.queued())}{outbox}, "
            f"latency p50 {p50:.0f} ms p95 {p95:.0f} ms (last {len(s.latencies)}){s.health_text()}"
        )

    def write_health(self) -> None:
        assert self.store is not None
        self.stats.write(self.store.root / HEALTH, queue=len(self.store.queued()), at=iso(time.time_ns()))

    def _status_loop(self) -> None:
        while not self._status_stop.wait(self.config.status_every_s):
            log.info("%s", self.status_line())
            self.write_health()

    def _watch_failed(self, why: str) -> None:
        self.stats.fail("watch", why, "watch_errors")
        self.write_health()

    # -- lifecycle -------------------------------------------------------------------------------

    def run(self, ready: Callable[[Node], None] | None = None) -> Stats:
        """Serve until SIGTERM/Ctrl-C (KeyboardInterrupt), then drain; a second one stops at once (the queue stays)."""
        c = self.config
        c.out.parent.mkdir(parents=True, exist_ok=True)  # the lock file lives beside RESULTS
        with writer_lock(c.out, timeout=0, what="results folder"):
            self.store = Store(c.out)
            try:
                return self._run(self.store, ready)
            finally:
                self.scorer.close()
                self.store.close()

    def _run(self, store: Store, ready: Callable[[Node], None] | None) -> Stats:
        self.scorer.activate()
        log_recovered(store)
        received = Received()
        intake = Intake(self.config, store, self.judge, self.stats, self.audit, received, self.wake)
        reports = self._reports(store)
        regenerate_srs(store, reports.write)
        worker = Worker(self.config, store, self.scorer, self.judge, reports, self.stats, received, self.wake, self._draining)
        threads = self._threads(worker)
        watcher = self._watcher(store, intake)
        ae, server = self._listen(intake)  # first: a port in use fails before any thread starts
        for t in threads:
            t.start()
        if watcher is not None:
            watcher.start(self._stop_intake)
        self.write_health()
        self._log_ready(store)
        if ready is not None:
            ready(self)
        try:
            self._supervise(watcher)
        except KeyboardInterrupt:
            log.info("stopping: no new films; scoring the %d queued%s", len(store.queued()),
                     ", then forwarding" if self.forwarder is not None else "")
        finally:
            self._stop_taking(ae, server, watcher)
        self._drain(store, threads)
        return self.stats

    def _reports(self, store: Store) -> Reports:
        """The SR writer (and the forwarder it wakes, when SRs are forwarded)."""
        c = self.config
        template = ReportTemplate(threshold=self.judge.threshold, decided_by=self.judge.decided_by,
                                  bundle_sha256=self.bundle_sha256, runtime=self.judge.runtime, precision=self.judge.precision)
        reports = Reports(c, store, template, self.audit)
        if c.forward is not None:
            self.forwarder = Forwarder(store, c.forward, c.ae_title, base_s=c.retry_base_s, max_s=c.retry_max_s,
                                       tries=c.forward_tries, on_dead=lambda: self.stats.add("forward_dead"))
            reports.forwarder = self.forwarder
        return reports

    def _threads(self, worker: Worker) -> list[threading.Thread]:
        """The scoring worker first, then the forwarder and the status line where configured (not started)."""
        threads = [threading.Thread(target=self._guarded, args=(worker.run,), name="salad-score", daemon=True)]
        if self.forwarder is not None:
            threads.append(threading.Thread(target=self.forwarder.run, args=(self._stop_forward,), name="salad-forward", daemon=True))
        if self.config.status_every_s > 0:
            threads.append(threading.Thread(target=self._status_loop, name="salad-status", daemon=True))
        return threads

    def _watcher(self, store: Store, intake: Intake) -> Watcher | None:
        c = self.config
        if c.watch is None:
            return None
        return Watcher(c.watch, store, intake.take_file, settle_s=c.settle_s, max_bytes=c.max_film_bytes,
                       on_error=self._watch_failed, on_ok=lambda: self.stats.clear("watch"))

    def _listen(self, intake: Intake) -> tuple[AE | None, ThreadedAssociationServer | None]:
        c = self.config
        if c.port is None:
            return None, None
        return start_scp(c.ae_title, c.host, c.port, intake.receive, admission=c.admission, tls=c.tls, audit=self.audit)

    def _log_ready(self, store: Store) -> None:
        c = self.config
        where = [f"AE {c.ae_title} on {c.host}:{c.port}"] if c.port is not None else []
        where += [f"watching {c.watch}"] if c.watch is not None else []
        log.info(
            "ready: %s; bundle %s (%s/%s, sha256 %s…, activated in %.0f ms); results in %s; %d queued from before%s",
            ", ".join(where), c.bundle, self.scorer.runtime, self.scorer.precision, self.bundle_sha256[:12],
            self.scorer.activation_ms, c.out, len(store.queued()), f"; forwarding SRs to {c.forward}" if c.forward else "",
        )

    def _supervise(self, watcher: Watcher | None) -> None:
        """Wait for SIGTERM/Ctrl-C or a failed worker; a watcher thread that died is restarted (logged, counted)."""
        while self._worker_error is None:
            time.sleep(0.2)
            if watcher is not None:
                watcher.restart_if_dead(self._stop_intake)

    def _stop_taking(self, ae: AE | None, server: ThreadedAssociationServer | None, watcher: Watcher | None) -> None:
        """Close the listener (open associations get drain_timeout_s to finish) and stop the watcher."""
        if server is not None and ae is not None:
            server.shutdown()
            deadline = time.monotonic() + self.config.drain_timeout_s
            while ae.active_associations and time.monotonic() < deadline:
                time.sleep(0.1)
            ae.shutdown()  # aborts what is still open: those films were not acknowledged, the sender keeps them
        self._stop_intake.set()
        if watcher is not None and watcher.thread is not None:
            _join(watcher.thread)

    def _drain(self, store: Store, threads: list[threading.Thread]) -> None:
        """Score what is queued, forward once more, stop the status line; a failed worker is a SaladError."""
        self._raise_if_failed(store)
        self._draining.set()
        self.wake.set()
        _join(threads[0])
        self._raise_if_failed(store)
        self._stop_forward.set()
        if self.forwarder is not None:
            self.forwarder.wake.set()
            _join(threads[1])
        self._status_stop.set()
        log.info("%s", self.status_line())
        log.info("stopped")

    def _raise_if_failed(self, store: Store) -> None:
        if self._worker_error is not None:
            raise SaladError(f"scoring stopped: {self._worker_error}; the queue in {store.inbox} is kept for a restart.")

    def _guarded(self, work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as exc:  # the runtime failed: stop the node, keep the queue on disk
            log.exception("the scoring worker stopped")
            self._worker_error = exc


def _join(thread: threading.Thread) -> None:
    """Join in short steps, so a second SIGTERM/Ctrl-C still interrupts the main thread."""
    while thread.is_alive():
        thread.join(0.2)
