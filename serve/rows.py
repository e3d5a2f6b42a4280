"""The rows of scores.jsonl: the parts every row shares, the batch being scored, and the ledger's listener on the Scorer.

`Rows` hears the Scorer's `scored` event (runtime/events.py) and stages each film's row; the worker's commit appends
a batch's rows with one write and one fsync, the commit point of its films (docs/architecture.md §11).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pydicom.dataset import Dataset

from salad.errors import SaladError
from salad.runtime.events import Scored, ScoredBatch

from .store import Queued, Store

log = logging.getLogger("salad.serve")


def iso(ns: int) -> str:
    """A time.time_ns() value as the rows write it (UTC, milliseconds)."""
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).isoformat(timespec="milliseconds")


def film_ids(header: Dataset | None) -> dict[str, str | None]:
    """The SOP instance, study and series UIDs a row names (None where the header has none)."""
    def get(keyword: str) -> str | None:
        value = header.get(keyword) if header is not None else None
        return str(value) if value else None

    return {
        "sop_instance_uid": get("SOPInstanceUID"),
        "study_instance_uid": get("StudyInstanceUID"),
        "series_instance_uid": get("SeriesInstanceUID"),
    }


@dataclass(frozen=True)
class Judge:
    """What judged a film, in every row and SR: the threshold, the score it applies to, the bundle's sha256, the runtime."""

    threshold: float
    decided_by: str
    bundle_sha256: str
    runtime: str
    precision: str

    def row(self, ids: dict[str, str | None], source: str | None = None) -> dict[str, Any]:
        """A row's common part: the film's ids, then what judged it (and where the film came from, for refusals)."""
        row: dict[str, Any] = {**ids, "threshold": self.threshold, "decided_by": self.decided_by,
                               "bundle_sha256": self.bundle_sha256, "runtime": self.runtime, "precision": self.precision}
        return {**row, "source": source} if source else row


@dataclass
class Received:
    """Headers and pixel sha256s of films acknowledged and not yet scored, by inbox key: each film is read once.

    After a restart the inbox is read from disk instead (the worker falls back to the file).
    """

    films: dict[str, tuple[Dataset, str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, key: str, header: Dataset, sha: str) -> None:
        with self.lock:
            self.films[key] = (header, sha)

    def pop(self, key: str) -> tuple[Dataset, str] | None:
        with self.lock:
            return self.films.pop(key, None)


@dataclass(frozen=True)
class Film:
    """A queued film with what its row needs: header (None: unreadable), pixel sha256, whether its UID collides."""

    item: Queued
    header: Dataset | None
    sha: str | None
    collision: bool


@dataclass
class Batch:
    """The films being scored now, by the path the Scorer names each by: where the node's listeners find a film's context."""

    films: dict[str, Film] = field(default_factory=dict)
    started_ns: int = 0

    def begin(self, films: list[Film], started_ns: int) -> None:
        self.films, self.started_ns = {str(f.item.path): f for f in films}, started_ns

    def film(self, name: str | None) -> Film:
        """The film the Scorer scored as `name`; a SaladError (a bug: the node scores only its batch) for any other."""
        film = self.films.get(str(name))
        if film is None:
            raise SaladError(f"{name}: scored outside the node's batch ({len(self.films)} film(s) in it)")
        return film


class Rows:
    """The ledger's listener: on `scored`, the film's row (error rows logged); on commit, the batch's rows in one write."""

    def __init__(self, store: Store, judge: Judge, batch: Batch) -> None:
        self.store, self.judge, self.batch = store, judge, batch
        self.staged: dict[int, tuple[Film, dict[str, Any]]] = {}  # by the event's index

    def on_scored(self, event: Scored) -> None:
        film, result = self.batch.film(event.result.path), event.result
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
            "queue_ms": round((self.batch.started_ns - film.item.accepted_ns) / 1e6, 3),
        }
        if result.ok and result.label is not None:
            row.update(score=result.score, knn_angle=result.knn_angle, label=result.label)
        else:
            row.update(label=None, error=result.error)
            log.warning("error row for %s: %s", film.item.uid, result.error)
        self.staged[event.index] = (film, row)

    def commit(self, batch: ScoredBatch, srs: dict[int, str | Exception]) -> list[tuple[Film, dict[str, Any]]]:
        """Append the batch's rows (each naming its SR, or why it has none) with one write and one fsync; in batch order.

        An OSError (a full disk) leaves no part of any row: the films stay in inbox/. A film without a staged row (its
        listener failed, logged by the Scorer) is a SaladError, which stops the node with the queue kept.
        """
        staged, self.staged = self.staged, {}
        missing = [str(s.result.path) for s in batch.scored if s.index not in staged]
        if missing:
            raise SaladError(f"no row was made for {', '.join(missing)} (see the error logged above)")
        done = [staged[s.index] for s in batch.scored]
        now = time.time_ns()
        for (film, row), scored in zip(done, batch.scored, strict=True):
            if "error" not in row:
                _name_sr(film, row, srs.get(scored.index, SaladError("its SR was not rendered (see the error logged above)")))
            row["timings"]["latency_ms"] = round((now - film.item.accepted_ns) / 1e6, 3)
            row.update(received=iso(film.item.accepted_ns), scored=iso(now))
        self.store.append_rows([row for _, row in done])
        return done


def _name_sr(film: Film, row: dict[str, Any], sr: str | Exception) -> None:
    """A labelled film's row names its SR, or says why it has none (the film then waits in nosr/ for the next start)."""
    if isinstance(sr, str):
        row["sr"] = sr
        return
    row["sr"] = None
    row["sr_error"] = f"{film.item.path}: no structured report ({type(sr).__name__}: {sr})"
    log.error("%s", row["sr_error"])
