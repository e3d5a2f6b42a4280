"""The parts every row of scores.jsonl shares: the film's identity, the bundle and runtime that judged it, times."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pydicom.dataset import Dataset


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
