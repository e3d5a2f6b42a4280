"""The node: intake (SCP and watch folder) → disk queue → one scoring worker → rows, SRs, outbox.

Threads: pynetdicom's association threads and the watcher only store and acknowledge; one worker
owns the activated Scorer and scores whatever waits in inbox/ in batches of up to `max_batch`; the
forwarder empties outbox/. The main thread supervises and, on SIGTERM or Ctrl-C, drains: it stops
taking new films, scores the queue, forwards once more, then returns. docs/architecture.md §11.
"""

from __future__ import annotations

import io
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from salad.errors import SaladError
from salad.fsutil import write_atomic, writer_lock
from salad.imageio import MAX_FILE_BYTES
from salad.manifest import MANIFEST, sha256_file
from salad.runtime import Result, Scorer

from .admission import Admission, film_refusal
from .audit import AuditLog
from .forward import Destination, Forwarder, parse_forward
from .health import Stats
from .ledger import film_key, pixel_sha256
from .recovery import check_folders, log_recovered, regenerate_srs
from .scp import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH,
    OUT_OF_RESOURCES,
    SUCCESS,
    sop_class_name,
    start_scp,
)
from .sr import build_report
from .store import Queued, Store, is_uid
from .watch import Watcher

__all__ = ["Node", "NodeConfig", "Stats", "check_folders", "parse_forward"]

log = logging.getLogger("salad.serve")
HEALTH = "health.json"


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


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).isoformat(timespec="milliseconds")


def _ids(header: Dataset | None) -> dict[str, str | None]:
    def get(keyword: str) -> str | None:
        value = header.get(keyword) if header is not None else None
        return str(value) if value else None

    return {
        "sop_instance_uid": get("SOPInstanceUID"),
        "study_instance_uid": get("StudyInstanceUID"),
        "series_instance_uid": get("SeriesInstanceUID"),
    }


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
        self.stats = Stats()
        self.wake = threading.Event()
        self._stop_intake = threading.Event()
        self._draining = threading.Event()
        self._stop_forward = threading.Event()
        self._worker_error: BaseException | None = None
        self.store: Store | None = None
        self.forwarder: Forwarder | None = None
        self.audit = AuditLog(config.out)  # who sent what: one line per association, instance (C-STORE or watch folder) and SR

    # -- intake ----------------------------------------------------------------------------------

    def receive(self, sop_class: str, header: Dataset | None, data: bytes, syntax: str, who: str) -> int:
        """A C-STORE: refuse (with a row and a log line) or store in inbox/; the returned status is the ack."""
        if len(data) > self.config.max_film_bytes:
            return self._refuse(_ids(header), f"dicom:{who}", OUT_OF_RESOURCES, f"{len(data):,} bytes is larger than the node's "
                                f"{self.config.max_film_bytes:,}-byte cap for one film; not stored. Refused with 0xA700.")
        return self._accept(sop_class, header, data, f"dicom:{who}")

    def take_file(self, rel: str, header: Dataset | None, data: bytes, error: str | None) -> str:
        """A settled watch-folder file: the same decisions as a C-STORE; returns the outcome for the ledger."""
        source = f"watch:{rel}"
        if error is not None or header is None:
            log.warning("refused from %s: %s", source, error or f"{rel}: no DICOM header")
            if not self._error_row({"sop_instance_uid": None, "study_instance_uid": None, "series_instance_uid": None},
                                   error or f"{rel}: no DICOM header", source, refused=CANNOT_UNDERSTAND):
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
        assert self.store is not None
        ids = _ids(header)
        uid = ids["sop_instance_uid"] or ""
        modality = str(header.get("Modality", "") or "").strip().upper() if header is not None else ""
        what = f"{sop_class_name(sop_class)}, modality {modality or 'missing'}, SOP Instance UID {uid or 'missing'}"
        refusal = film_refusal(sop_class, header)  # serve/admission.py: SOP class, context, modality, chest, view
        if refusal is not None:
            return self._refuse(ids, source, refusal.status, f"{what}: {refusal.reason}")
        if not is_uid(uid):
            return self._refuse(ids, source, DATASET_DOES_NOT_MATCH, f"{what}: no valid SOP Instance UID; fix the export at the modality.")
        sha = pixel_sha256(data)
        if self.store.ledger.has(uid, sha):
            self.stats.add("duplicates")
            log.info("%s: SOP Instance UID %s (the same pixels) was already scored; acknowledged, not scored again", source, uid)
            return SUCCESS
        if self.store.ledger.collides(uid, sha):
            log.warning("%s: SOP Instance UID %s already names a different film (pixel sha256 %s… differs); kept and "
                        "scored as its own film, its row names the collision", source, uid, sha[:16])
        try:
            self.store.put(film_key(uid, sha), data)
        except OSError as exc:
            self.stats.fail("disk", f"cannot store films in {self.store.inbox} ({exc.strerror or exc})", "disk_errors")
            log.error("%s: cannot store %s in %s (%s); answered 0xA700 (out of resources), the sender keeps it",
                      source, uid, self.store.inbox, exc.strerror or exc)
            return OUT_OF_RESOURCES
        self.stats.clear("disk")
        self.stats.add("received")
        self.wake.set()
        return SUCCESS

    def _refuse(self, ids: dict[str, str | None], source: str, status: int, why: str) -> int:
        log.warning("refused from %s: %s", source, why)
        self._error_row(ids, why, source, refused=status)
        return status

    def _base_row(self, ids: dict[str, str | None], source: str | None = None) -> dict[str, Any]:
        row = {
            **ids,
            "threshold": self.scorer.threshold,
            "decided_by": self.scorer.threshold_score,
            "bundle_sha256": self.bundle_sha256,
            "runtime": self.scorer.runtime,
            "precision": self.scorer.precision,
        }
        return {**row, "source": source} if source else row

    def _error_row(self, ids: dict[str, str | None], error: str, source: str, refused: int) -> bool:
        """Write a refusal row; False (logged, counted) when the disk is full: the film was not acknowledged."""
        assert self.store is not None
        row = {**self._base_row(ids, source), "label": None, "error": error, "refused": f"{refused:#06x}",
               "received": _iso(time.time_ns())}
        self.stats.add("refused")
        try:
            self.store.append_row(row)
        except OSError as exc:
            why = f"cannot write a row to {self.store.rows_path} ({exc.strerror or exc})"
            log.error("%s; the refusal of %s from %s is in this log only", why, ids.get("sop_instance_uid"), source)
            self.stats.fail("disk", why, "disk_errors")
            return False
        return True

    # -- scoring ---------------------------------------------------------------------------------

    def _score_loop(self) -> None:
        assert self.store is not None
        while True:
            items = [q for q in self.store.queued() if not self._already(q)][: self.config.max_batch]
            if not items:
                if self._draining.is_set():
                    return
                self.wake.wait(0.5)
                self.wake.clear()
                continue
            started = time.time_ns()
            results = self.scorer.score([q.path for q in items], on_error="record")
            committed = [self._commit(item, result, started) for item, result in zip(items, results, strict=True)]
            if not all(committed):  # a full disk: the films stay in inbox/; wait, then score them again
                self._draining.wait(min(30.0, self.config.retry_base_s * 2 ** min(self.stats.disk_errors, 6)))
                if self._draining.is_set():
                    return

    def _already(self, item: Queued) -> bool:
        assert self.store is not None
        if self.store.ledger.has(item.uid, item.sha):
            self.store.done(item)  # a resend that arrived while the first copy was being scored
            return True
        return False

    def _commit(self, item: Queued, result: Result, started_ns: int) -> bool:
        """Write SR (and its outbox link), then the row, then drop the inbox entry: the row is the commit point.

        False when the row could not be written (a full disk): the film stays in inbox/ and is scored again.
        """
        assert self.store is not None
        try:
            data = item.path.read_bytes()
            header: Dataset | None = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        except Exception:
            data, header = b"", None
        ids = _ids(header)
        ids["sop_instance_uid"] = item.uid
        row = self._base_row(ids)
        sha = pixel_sha256(data) if data else item.sha
        row["pixel_sha256"] = sha
        collision = self.store.ledger.collides(item.uid, sha)
        if collision:
            row["collision"] = (f"SOP Instance UID {item.uid} already has a scored row for a different film (other pixel data); "
                                "this film was kept and scored as its own. Fix the UID generation at the modality.")
        timings = {
            "preprocess_ms": round(result.timings.preprocess_ms, 3),
            "inference_ms": round(result.timings.inference_ms, 3),
            "batch_size": result.timings.batch_size,
            "queue_ms": round((started_ns - item.accepted_ns) / 1e6, 3),
        }
        if result.ok and result.label is not None:
            row.update(score=result.score, knn_angle=result.knn_angle, label=result.label)
            try:
                row["sr"] = self._write_sr(film_key(item.uid, sha), header, result, collision=collision)
            except Exception as exc:  # a header highdicom cannot reference, a full disk: keep the score, retry the SR at start
                row["sr"] = None
                row["sr_error"] = f"{item.path}: no structured report ({type(exc).__name__}: {exc})"
                log.error("%s", row["sr_error"])
        else:
            row.update(label=None, error=result.error)
            log.warning("error row for %s: %s", item.uid, result.error)
        now = time.time_ns()
        latency = (now - item.accepted_ns) / 1e6
        timings["latency_ms"] = round(latency, 3)
        row.update(timings=timings, received=_iso(item.accepted_ns), scored=_iso(now))
        try:
            self.store.append_row(row)
        except OSError as exc:
            why = f"cannot write a row to {self.store.rows_path} ({exc.strerror or exc})"
            log.error("%s; %s stays in %s and is scored again", why, item.uid, self.store.inbox)
            self.stats.fail("disk", why, "disk_errors")
            return False
        self.stats.clear("disk")
        if row.get("sr", "") is None and header is not None:
            self.store.keep_for_sr(item)  # its SR is made at the next start
        else:
            self.store.done(item)
        if collision:
            self.stats.add("collisions")
            log.warning("UID collision: %s", row["collision"])
        if "error" in row:
            self.stats.add("failed")
        else:
            self.stats.add("scored")
            with self.stats.lock:
                self.stats.latencies.append(latency)
        return True

    def _write_sr(self, key: str, header: Dataset | None, result: Result, collision: bool = False) -> str:
        """Write sr/KEY.dcm (and queue it for forwarding); a UID collision's SR gets its own SOP Instance UID."""
        assert self.store is not None and result.label is not None
        if header is None:
            raise SaladError("the stored header cannot be read again")
        report = build_report(
            header, score=result.score, knn_angle=result.knn_angle, label=result.label,
            threshold=self.scorer.threshold, decided_by=self.scorer.threshold_score,
            bundle_sha256=self.bundle_sha256, runtime=self.scorer.runtime, precision=self.scorer.precision,
        )
        if collision:  # the same source UID would give the same SR UID: a PACS would keep only one of the two reports
            report.SOPInstanceUID = report.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["salad-sr", key])
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, report, enforce_file_format=True)
        path = self.store.sr_path(key)
        write_atomic(path, buffer.getvalue())
        if self.forwarder is not None:
            self.store.queue_for_forwarding(path)
            self.forwarder.wake.set()
        self.audit.append("sr", sop_instance_uid=str(header.SOPInstanceUID), sr_sop_instance_uid=str(report.SOPInstanceUID),
                          sr=str(path.relative_to(self.store.root)), label=result.label, forward_to=str(self.config.forward or "") or None)
        return str(path.relative_to(self.store.root))

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
        self.stats.write(self.store.root / HEALTH, queue=len(self.store.queued()), at=_iso(time.time_ns()))

    def _status_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.config.status_every_s):
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
                return self._run(ready)
            finally:
                self.scorer.close()
                self.store.close()

    def _run(self, ready: Callable[[Node], None] | None) -> Stats:
        c = self.config
        assert self.store is not None
        self.scorer.activate()
        log_recovered(self.store)
        if c.forward is not None:
            self.forwarder = Forwarder(self.store, c.forward, c.ae_title, base_s=c.retry_base_s, max_s=c.retry_max_s,
                                       tries=c.forward_tries, on_dead=lambda: self.stats.add("forward_dead"))
        regenerate_srs(self.store, self._write_sr)
        threads = [threading.Thread(target=self._guarded_score_loop, name="salad-score", daemon=True)]
        if self.forwarder is not None:
            threads.append(threading.Thread(target=self.forwarder.run, args=(self._stop_forward,), name="salad-forward", daemon=True))
        status_stop = threading.Event()
        if c.status_every_s > 0:
            threads.append(threading.Thread(target=self._status_loop, args=(status_stop,), name="salad-status", daemon=True))
        watcher = None
        if c.watch is not None:
            watcher = Watcher(c.watch, self.store, self.take_file, settle_s=c.settle_s, max_bytes=c.max_film_bytes,
                              on_error=self._watch_failed, on_ok=lambda: self.stats.clear("watch"))
        ae = server = None
        if c.port is not None:  # first: a port in use fails before any thread starts
            ae, server = start_scp(c.ae_title, c.host, c.port, self.receive, admission=c.admission, tls=c.tls, audit=self.audit)
        for t in threads:
            t.start()
        if watcher is not None:
            watcher.start(self._stop_intake)
        self.write_health()
        where = [f"AE {c.ae_title} on {c.host}:{c.port}"] if c.port is not None else []
        where += [f"watching {c.watch}"] if c.watch is not None else []
        log.info(
            "ready: %s; bundle %s (%s/%s, sha256 %s…, activated in %.0f ms); results in %s; %d queued from before%s",
            ", ".join(where), c.bundle, self.scorer.runtime, self.scorer.precision, self.bundle_sha256[:12],
            self.scorer.activation_ms, c.out, len(self.store.queued()), f"; forwarding SRs to {c.forward}" if c.forward else "",
        )
        if ready is not None:
            ready(self)
        try:
            while self._worker_error is None:
                time.sleep(0.2)
                if watcher is not None:
                    watcher.restart_if_dead(self._stop_intake)  # never silently: logged, counted in the health
        except KeyboardInterrupt:
            log.info("stopping: no new films; scoring the %d queued%s", len(self.store.queued()),
                     ", then forwarding" if self.forwarder is not None else "")
        finally:
            if server is not None and ae is not None:
                server.shutdown()
                deadline = time.monotonic() + c.drain_timeout_s
                while ae.active_associations and time.monotonic() < deadline:
                    time.sleep(0.1)
                ae.shutdown()  # aborts what is still open: those films were not acknowledged, the sender keeps them
            self._stop_intake.set()
            if watcher is not None and watcher.thread is not None:
                _join(watcher.thread)
        if self._worker_error is not None:
            raise SaladError(f"scoring stopped: {self._worker_error}; the queue in {self.store.inbox} is kept for a restart.")
        self._draining.set()
        self.wake.set()
        _join(threads[0])
        if self._worker_error is not None:
            raise SaladError(f"scoring stopped: {self._worker_error}; the queue in {self.store.inbox} is kept for a restart.")
        self._stop_forward.set()
        if self.forwarder is not None:
            self.forwarder.wake.set()
            _join(threads[1])
        status_stop.set()
        log.info("%s", self.status_line())
        log.info("stopped")
        return self.stats

    def _guarded_score_loop(self) -> None:
        try:
            self._score_loop()
        except BaseException as exc:  # the runtime failed: stop the node, keep the queue on disk
            log.exception("the scoring worker stopped")
            self._worker_error = exc


def _join(thread: threading.Thread) -> None:
    """Join in short steps, so a second SIGTERM/Ctrl-C still interrupts the main thread."""
    while thread.is_alive():
        thread.join(0.2)
