"""Watch-folder intake: take in each complete DICOM file a console exports into a folder, once.

A file is complete when it is visible under its final name (writers that rename into place: names
starting with '.' or ending in .tmp/.part/.partial are skipped) and its size and mtime have not
changed for `settle_s` seconds (writers that write in place). Taken-in files are recorded in
RESULTS/watched.jsonl by (path, size, mtime_ns), so a restart takes in only what is new; a file
rewritten later (new size or mtime) is taken in again, and its SOP Instance UID and pixels decide
whether it is scored again. The watched folder is only read, never changed. Before a byte is read, a
file is refused with a row when it is larger than the node's cap, not a regular file, or a symlink that
leads out of the folder; a failure of one pass is logged and reported, and the next pass runs.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from salad.imageio import MAX_FILE_BYTES

from .store import Store

log = logging.getLogger("salad.serve")

PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")
#: A taken-in file: (relative path, decoded header or None, bytes, parse error or None) → outcome text.
Intake = Callable[[str, Dataset | None, bytes, str | None], str]
#: Told of a failed pass or file (the node counts it in its health); the watcher carries on.
OnError = Callable[[str], None]


class Watcher:
    """Polls a folder (recursively) every `poll_s` and hands each settled, new file to `intake`."""

    def __init__(self, folder: Path, store: Store, intake: Intake, settle_s: float = 2.0, poll_s: float = 0.5,
                 max_bytes: int = MAX_FILE_BYTES, on_error: OnError | None = None,
                 on_ok: Callable[[], None] | None = None) -> None:
        self.folder = folder
        self.real = folder.resolve()
        self.store = store
        self.intake = intake
        self.settle_s = settle_s
        self.poll_s = poll_s
        self.max_bytes = max_bytes
        self.on_error = on_error or (lambda why: None)
        self.on_ok = on_ok or (lambda: None)
        self.thread: threading.Thread | None = None
        self._file_failures = 0
        self.seen = store.watched()
        self._pending: dict[str, tuple[int, int, float]] = {}  # path → (size, mtime_ns, unchanged since)

    def start(self, stop: threading.Event) -> None:
        """Run in a daemon thread until `stop`."""
        self.thread = threading.Thread(target=self.run, args=(stop,), name="salad-watch", daemon=True)
        self.thread.start()

    def restart_if_dead(self, stop: threading.Event) -> bool:
        """Start the thread again if it ended while `stop` is unset (reported through on_error); True if it did."""
        if self.thread is None or self.thread.is_alive() or stop.is_set():
            return False
        why = "the watch thread stopped; restarted"
        log.error("%s", why)
        self.on_error(why)
        self.start(stop)
        return True

    def run(self, stop: threading.Event) -> None:
        """Scan until `stop`; a failed pass (disk full, a folder gone) is logged and reported, then retried after a pause."""
        failures = 0
        while not stop.is_set():
            try:
                if self.scan_failures() == 0:
                    self.on_ok()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the watch thread must not die: report and go on
                failures += 1
                why = f"watch folder {self.folder}: a pass failed ({type(exc).__name__}: {exc}); retrying"
                log.error("%s", why)
                self.on_error(why)
            stop.wait(min(30.0, self.poll_s * 2 ** min(failures, 6)))

    def scan_failures(self) -> int:
        """One pass (scan); return how many files could not be taken in (each reported through on_error)."""
        self._file_failures = 0
        self.scan()
        return self._file_failures

    def scan(self) -> int:
        """One pass: take in every settled new file; return how many were taken in."""
        now = time.monotonic()
        taken = 0
        present = set()
        for dirpath, dirnames, filenames in os.walk(self.folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]  # os.walk does not enter these
            for name in sorted(filenames) + links:
                if name.startswith(".") or name.lower().endswith(PARTIAL_SUFFIXES):
                    continue
                path = Path(dirpath) / name
                try:
                    info = path.lstat()
                except FileNotFoundError:
                    continue
                rel = str(path.relative_to(self.folder))
                key = (rel, info.st_size, info.st_mtime_ns)
                if key in self.seen:
                    continue
                present.add(rel)
                before = self._pending.get(rel)
                if before is None or before[:2] != key[1:]:
                    self._pending[rel] = (info.st_size, info.st_mtime_ns, now)
                    continue
                if now - before[2] < self.settle_s:
                    continue
                try:
                    self._take(path, rel, info)
                except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
                    why = f"watch folder: {path} could not be taken in ({type(exc).__name__}: {exc}); retried on the next pass"
                    log.error("%s", why)
                    self._file_failures += 1
                    self.on_error(why)
                    continue
                taken += 1
        for rel in set(self._pending) - present:
            del self._pending[rel]
        return taken

    def _refusal(self, path: Path, info: os.stat_result) -> str | None:
        """Why `path` is not read at all (a symlink out of the folder, not a regular file, too large), or None."""
        if stat.S_ISLNK(info.st_mode):
            target = path.resolve()
            if not target.is_relative_to(self.real):
                return (f"{path}: a symbolic link to {target}, outside the watch folder {self.real}; not read. "
                        "Export the film itself into the folder.")
            return None  # a link within the folder: its target is taken in under its own name; the pixels dedupe
        if not stat.S_ISREG(info.st_mode):
            return f"{path}: not a regular file (a folder link, device or pipe); not read."
        if info.st_size > self.max_bytes:
            return (f"{path}: {info.st_size:,} bytes is larger than the node's {self.max_bytes:,}-byte cap for one film; "
                    "not read. Export the film without embedded extras, or check the file.")
        return None

    def _take(self, path: Path, rel: str, info: os.stat_result) -> None:
        header: Dataset | None = None
        error = self._refusal(path, info)
        data = b""
        if error is None and stat.S_ISLNK(info.st_mode):
            outcome = "symlink within the folder: skipped"
        else:
            if error is None:
                data, error = self._read(path)
            if error is None:
                try:
                    header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
                except Exception as exc:  # InvalidDicomError and the many types of a damaged header
                    error = f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc}); the watch folder takes DICOM exports."
            outcome = self.intake(rel, header, data, error)
        self.store.record_watched(rel, info.st_size, info.st_mtime_ns, outcome)
        self.seen.add((rel, info.st_size, info.st_mtime_ns))
        self._pending.pop(rel, None)

    def _read(self, path: Path) -> tuple[bytes, str | None]:
        """The file's bytes, read through a descriptor that is checked first (regular, not a link, within the cap)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            return b"", f"{path}: cannot read ({exc.strerror or exc}); check its permissions."
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > self.max_bytes:
                return b"", f"{path}: {info.st_size:,} bytes or not a regular file; not read (cap {self.max_bytes:,} bytes)."
            data = fh.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            return b"", f"{path}: grew beyond the node's {self.max_bytes:,}-byte cap while read; not taken in."
        return data, None
