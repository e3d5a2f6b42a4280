"""The scoring worker: one thread owns the activated Scorer, scores inbox/ in batches and commits each batch.

A batch is committed in the order that makes a crash harmless (docs/architecture.md §11): its SRs durable
(serve/reports.py), then its rows with one write and one fsync (the commit point), then its inbox entries
removed. A film killed before its row is scored again; one killed after it is dropped from inbox/ at start.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from salad.runtime import Result, Scorer

from .config import NodeConfig
from .health import Stats
from .ledger import pixel_sha256
from .reports import Reports, Scored
from .rows import Judge, Received, film_ids, iso
from .store import Queued, Store

log = logging.getLogger("salad.serve")


@dataclass(frozen=True)
class Film:
    """A queued film with what its row needs: header (None: unreadable), pixel sha256, whether its UID collides."""

    item: Queued
    header: Dataset | None
    sha: str | None
    collision: bool


class Worker:
    """Scores what waits in inbox/ until `draining` is set and the queue is empty."""

    def __init__(self, config: NodeConfig, store: Store, scorer: Scorer, judge: Judge, reports: Reports, stats: Stats,
                 received: Received, wake: threading.Event, draining: threading.Event) -> None:
        self.config, self.store, self.scorer, self.judge, self.reports = config, store, scorer, judge, reports
        self.stats, self.received, self.wake, self.draining = stats, received, wake, draining

    def run(self) -> None:
        """Score batches of up to max_batch; on a full disk wait (backing off) and score the same films again."""
        while True:
            items = [q for q in self.store.queued() if not self._already(q)][: self.config.max_batch]
            if not items:
                if self.draining.is_set():
                    return
                self.wake.wait(0.5)
                self.wake.clear()
                continue
            started = time.time_ns()
            results = self.scorer.score([q.path for q in items], on_error="record")
            if not self.commit(items, results, started):  # a full disk: the films stay in inbox/
                self.draining.wait(min(30.0, self.config.retry_base_s * 2 ** min(self.stats.disk_errors, 6)))
                if self.draining.is_set():
                    return

    def _already(self, item: Queued) -> bool:
        if self.store.ledger.has(item.uid, item.sha):
            self.store.done(item)  # a resend that arrived while the first copy was being scored
            self.received.pop(item.key)
            return True
        return False

    def commit(self, items: list[Queued], results: list[Result], started_ns: int) -> bool:
        """Write the batch's SRs, then its rows (one fsync), then drop its inbox entries: the rows are the commit point.

        False when the rows could not be written (a full disk): the films stay in inbox/ and are scored again.
        """
        films = self._films(items)
        rows = [self._row(film, result, started_ns) for film, result in zip(films, results, strict=True)]
        self._reports(films, results, rows)
        now = time.time_ns()
        for film, row in zip(films, rows, strict=True):
            row["timings"]["latency_ms"] = round((now - film.item.accepted_ns) / 1e6, 3)
            row.update(received=iso(film.item.accepted_ns), scored=iso(now))
        try:
            self.store.append_rows(rows)
        except OSError as exc:
            why = f"cannot write a row to {self.store.rows_path} ({exc.strerror or exc})"
            log.error("%s; %d film(s) stay in %s and are scored again", why, len(films), self.store.inbox)
            self.stats.fail("disk", why, "disk_errors")
            return False
        self.stats.clear("disk")
        for film, row in zip(films, rows, strict=True):
            self._settle(film, row)
        return True

    def _films(self, items: list[Queued]) -> list[Film]:
        """The batch's films; a UID collides with a scored row or with another film earlier in this batch."""
        films: list[Film] = []
        for item in items:
            film = self._film(item)
            if any(f.item.uid == item.uid and f.item.key != item.key for f in films) and not film.collision:
                film = Film(film.item, film.header, film.sha, True)  # its row is not in the ledger yet, but comes first
            films.append(film)
        return films

    def _film(self, item: Queued) -> Film:
        """The film's header and pixel sha256: as intake read them, or from its inbox file (after a restart)."""
        kept = self.received.pop(item.key)
        if kept is not None:
            header, sha = kept
        else:
            try:
                data = item.path.read_bytes()
                header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
                sha = pixel_sha256(data)
            except Exception:  # unreadable now: scored (an error row, most likely) under what its name says
                header, sha = None, item.sha  # type: ignore[assignment]
        return Film(item, header, sha, self.store.ledger.collides(item.uid, sha))

    def _row(self, film: Film, result: Result, started_ns: int) -> dict[str, Any]:
        ids = film_ids(film.header)
        ids["sop_instance_uid"] = film.item.uid
        row = {**self.judge.row(ids), "pixel_sha256": film.sha}
        if film.collision:
            row["collision"] = (f"SOP Instance UID {film.item.uid} already has a scored row for a different film (other pixel "
                                "data); this film was kept and scored as its own. Fix the UID generation at the modality.")
        row["timings"] = {
            "preprocess_ms": round(result.timings.preprocess_ms, 3),
            "inference_ms": round(result.timings.inference_ms, 3),
            "batch_size": result.timings.batch_size,
            "queue_ms": round((started_ns - film.item.accepted_ns) / 1e6, 3),
        }
        if result.ok and result.label is not None:
            row.update(score=result.score, knn_angle=result.knn_angle, label=result.label)
        else:
            row.update(label=None, error=result.error)
            log.warning("error row for %s: %s", film.item.uid, result.error)
        return row

    def _reports(self, films: list[Film], results: list[Result], rows: list[dict[str, Any]]) -> None:
        """The SRs of the labelled films of a batch; a film whose SR failed keeps its score, its row says why."""
        labelled = [i for i, row in enumerate(rows) if "error" not in row]
        scored = [Scored(films[i].item.key, films[i].header, results[i], films[i].collision) for i in labelled]
        for i, done in zip(labelled, self.reports.write_batch(scored), strict=True):
            if isinstance(done, str):
                rows[i]["sr"] = done
                continue
            rows[i]["sr"] = None
            rows[i]["sr_error"] = f"{films[i].item.path}: no structured report ({type(done).__name__}: {done})"
            log.error("%s", rows[i]["sr_error"])

    def _settle(self, film: Film, row: dict[str, Any]) -> None:
        """After its row: drop the inbox entry (or keep it in nosr/ for its SR), count it."""
        if row.get("sr", "") is None and film.header is not None:
            self.store.keep_for_sr(film.item)  # its SR is made at the next start
        else:
            self.store.done(film.item)
        if film.collision:
            self.stats.add("collisions")
            log.warning("UID collision: %s", row["collision"])
        if "error" in row:
            self.stats.add("failed")
            return
        self.stats.add("scored")
        with self.stats.lock:
            self.stats.latencies.append(row["timings"]["latency_ms"])
