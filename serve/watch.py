"""Watch-folder intake: take in each complete DICOM file a console exports into a folder, once.

A file is complete when it is visible under its final name (writers that rename into place: names
starting with '.' or ending in .tmp/.part/.partial are skipped) and its size and mtime have not
changed for `settle_s` seconds (writers that write in place). Taken-in files are recorded in
RESULTS/watched.jsonl by (path, size, mtime_ns), so a restart takes in only what is new; a file
rewritten later (new size or mtime) is taken in again, and its SOP Instance UID decides whether it
is scored again. The watched folder is only read, never changed.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from .store import Store

log = logging.getLogger("salad.serve")

PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")
#: A taken-in file: (relative path, decoded header or None, bytes, parse error or None) → outcome text.
Intake = Callable[[str, Dataset | None, bytes, str | None], str]


class Watcher:
    """Polls a folder (recursively) every `poll_s` and hands each settled, new file to `intake`."""

    def __init__(self, folder: Path, store: Store, intake: Intake, settle_s: float = 2.0, poll_s: float = 0.5) -> None:
        self.folder = folder
        self.store = store
        self.intake = intake
        self.settle_s = settle_s
        self.poll_s = poll_s
        self.seen = store.watched()
        self._pending: dict[str, tuple[int, int, float]] = {}  # path → (size, mtime_ns, unchanged since)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.scan()
            stop.wait(self.poll_s)

    def scan(self) -> int:
        """One pass: take in every settled new file; return how many were taken in."""
        now = time.monotonic()
        taken = 0
        present = set()
        for dirpath, dirnames, filenames in os.walk(self.folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith(".") or name.lower().endswith(PARTIAL_SUFFIXES):
                    continue
                path = Path(dirpath) / name
                try:
                    info = path.stat()
                except FileNotFoundError:
                    continue
                rel = str(path.relative_to(self.folder))
                key = (rel, info.st_size, info.st_mtime_ns)
                if key in self.seen or not path.is_file():
                    continue
                present.add(rel)
                before = self._pending.get(rel)
                if before is None or before[:2] != key[1:]:
                    self._pending[rel] = (info.st_size, info.st_mtime_ns, now)
                    continue
                if now - before[2] < self.settle_s:
                    continue
                self._take(path, rel, info.st_size, info.st_mtime_ns)
                taken += 1
        for rel in set(self._pending) - present:
            del self._pending[rel]
        return taken

    def _take(self, path: Path, rel: str, size: int, mtime_ns: int) -> None:
        header: Dataset | None = None
        error: str | None = None
        try:
            data = path.read_bytes()
        except OSError as exc:
            data, error = b"", f"{path}: cannot read ({exc.strerror or exc}); check its permissions."
        if error is None:
            try:
                header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            except Exception as exc:  # InvalidDicomError and the many types of a damaged header
                error = f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc}); the watch folder takes DICOM exports."
        outcome = self.intake(rel, header, data, error)
        self.store.record_watched(rel, size, mtime_ns, outcome)
        self.seen.add((rel, size, mtime_ns))
        self._pending.pop(rel, None)
