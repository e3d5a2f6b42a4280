"""The scoring worker: one thread owns the activated Scorer, scores inbox/ in batches, and commits each batch it hears.

The node's parts listen to the Scorer (runtime/events.py) instead of being called on its Results: on each `scored`
event the ledger's listener stages the film's row (serve/rows.py) and the SR writer renders its SR (serve/reports.py);
on each `batch-scored` event the worker's `commit` makes the batch durable in the order that makes a crash harmless
(docs/architecture.md §11): its SRs, then its rows with one write and one fsync (the commit point), then its inbox
entries removed. A film killed before its row is scored again; one killed after it is dropped from inbox/ at start.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from typing import Any

import pydicom

from salad.runtime import Scorer
from salad.runtime.events import BATCH_SCORED, SCORED, ScoredBatch

from .config import NodeConfig
from .health import Stats
from .ledger import pixel_sha256
from .reports import Reports
from .rows import Film, Judge, Received, Rows
from .store import Queued, Store

log = logging.getLogger("salad.serve")


class Worker:
    """Scores what waits in inbox/ until `draining` is set and the queue is empty."""

    def __init__(self, config: NodeConfig, store: Store, scorer: Scorer, judge: Judge, reports: Reports, stats: Stats,
                 received: Received, wake: threading.Event, draining: threading.Event) -> None:
        self.config, self.store, self.scorer, self.reports = config, store, scorer, reports
        self.stats, self.received, self.wake, self.draining = stats, received, wake, draining
        self.batch = reports.batch  # the films being scored, where the SR writer and the ledger's listener look them up
        self.rows = Rows(store, judge, self.batch)
        self.committed = False  # whether the last batch scored was committed (False: a full disk; the films stay queued)

    @contextmanager
    def listening(self) -> Iterator[None]:
        """The ledger and the SR writer bound to the Scorer's `scored`, `commit` to its `batch-scored`, for a with-block."""
        with ExitStack() as stack:
            stack.enter_context(self.scorer.bound(SCORED, self.rows.on_scored))
            stack.enter_context(self.scorer.bound(SCORED, self.reports.on_scored))
            stack.enter_context(self.scorer.bound(BATCH_SCORED, self.commit))
            yield

    def run(self) -> None:
        """Score batches of up to max_batch; on a full disk wait (backing off) and score the same films again."""
        with self.listening(), closing(self.reports):
            while True:
                items = [q for q in self.store.queued() if not self._already(q)][: self.config.max_batch]
                if not items:
                    if self.draining.is_set():
                        return
                    self.wake.wait(0.5)
                    self.wake.clear()
                    continue
                if not self.score(items):  # a full disk: the films stay in inbox/
                    self.draining.wait(min(30.0, self.config.retry_base_s * 2 ** min(self.stats.disk_errors, 6)))
                    if self.draining.is_set():
                        return

    def score(self, items: list[Queued]) -> bool:
        """Score one batch (at most the Scorer's max_batch) while `listening`; whether it was committed."""
        films = self._films(items)
        self.batch.begin(films, time.time_ns())
        self.reports.prepare(films)  # their SR documents are built beside the decode and inference
        self.committed = False
        self.scorer.score([q.path for q in items], on_error="record")
        return self.committed

    def _already(self, item: Queued) -> bool:
        if self.store.ledger.has(item.uid, item.sha):
            self.store.done(item)  # a resend that arrived while the first copy was being scored
            self.received.pop(item.key)
            return True
        return False

    def commit(self, batch: ScoredBatch) -> bool:
        """BATCH_SCORED's handler: the batch's SRs, then its rows (one fsync), then its inbox entries gone.

        The rows are the commit point. An intervention (its result decides, its exception stops the node with the queue
        kept) because the order must hold for the batch as a whole and a failure must reach the worker: notification
        listeners act per film and their errors are only logged. False (the Scorer stops) when the rows could not be
        written (a full disk): the films stay in inbox/ and are scored again after a back-off.
        """
        srs = self.reports.commit()
        try:
            done = self.rows.commit(batch, srs)
        except OSError as exc:
            why = f"cannot write a row to {self.store.rows_path} ({exc.strerror or exc})"
            log.error("%s; %d film(s) stay in %s and are scored again", why, len(batch.scored), self.store.inbox)
            self.stats.fail("disk", why, "disk_errors")
            return False
        self.stats.clear("disk")
        for film, row in done:
            self._settle(film, row)
        self.committed = True
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
