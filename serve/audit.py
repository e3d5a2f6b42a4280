"""The node's audit log, RESULTS/audit.jsonl: one JSON line per association and per instance (who, when, what, status).

Each line is appended whole with one write and fsynced before the peer is answered, so the log never lags
what a sender was told. A line cut off by a crash (kill -9 in the middle of a write) is removed on the first
append after a start, as scores.jsonl's is; every earlier line stays.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger("salad.serve")

#: The audit log's file name in the results folder.
AUDIT = "audit.jsonl"
_lock = threading.Lock()
_repaired: set[Path] = set()


def now_iso() -> str:
    """The current UTC time as the audit lines (and rows) write it."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class AuditLog:
    """Appends records to `folder/audit.jsonl`; safe from every association thread and the scoring worker."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / AUDIT

    def append(self, event: str, **fields: Any) -> bool:
        """One line {"time", "event", **fields}, written with a single write() and fsynced; False (logged) if the disk refused it.

        Never raises: an audit line that cannot be written (a full disk) must not change what a sender is answered.
        """
        return self.append_many([(event, fields)])

    def append_many(self, records: list[tuple[str, dict[str, Any]]]) -> bool:
        """Lines for (event, fields) records with one write() and one fsync (a scored batch's SR lines); False if refused."""
        if not records:
            return True
        at = now_iso()
        text = "".join(json.dumps({"time": at, "event": event, **fields}, allow_nan=False, default=str) + "\n"
                       for event, fields in records)
        with _lock:
            try:
                if self.path not in _repaired:
                    _cut_torn_line(self.path)
                    _repaired.add(self.path)
                _append(self.path, text.encode())
            except OSError as exc:
                log.error("%s: audit line(s) not written (%s): %s", self.path, exc.strerror or exc, text.strip())
                return False
        return True


def _append(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):  # a full disk: cut what got in, so the next line starts on its own
            os.ftruncate(fd, os.fstat(fd).st_size - written)
            raise OSError(28, f"only {written} of {len(data)} bytes were written", str(path))
        os.fsync(fd)
    finally:
        os.close(fd)


def _cut_torn_line(path: Path) -> None:
    """Drop a last line without its newline (a write cut off by a crash); keep every complete line."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    with open(path, "rb+") as fh:
        fh.seek(max(0, size - 1))
        if fh.read(1) == b"\n":
            return
        keep = size
        step = 65536
        while keep > 0:  # scan back to the last newline
            start = max(0, keep - step)
            fh.seek(start)
            chunk = fh.read(keep - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            keep = start
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    log.warning("%s: removed %d byte(s) of an audit line cut off by a crash", path, size - keep)
