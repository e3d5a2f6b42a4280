"""The node's results folder: the disk queue (inbox/), the rows (scores.jsonl, also the ledger), sr/ and outbox/.

Everything that must survive `kill -9` is a file written atomically (salad.fsutil.write_atomic) or one
appended, fsynced line. scores.jsonl is the one record of what was processed: an instance whose row is
there is never scored again, and an instance still in inbox/ without a row is scored after a restart.
docs/architecture.md §11 walks through each crash window.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salad.errors import DataError
from salad.fsutil import fsync_dir, pid_alive, temp_name, write_atomic

ROWS = "scores.jsonl"
WATCHED = "watched.jsonl"
INBOX = "inbox"
SR = "sr"
OUTBOX = "outbox"
#: A DICOM UID (PS3.5 §9.1): digits and dots, at most 64 characters. Only such names enter inbox/.
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: write_atomic's temporaries: `.NAME.tmp-PID-RANDOM`; left behind by a process killed mid-write.
_TEMP = re.compile(r"^\..+\.tmp-(?P<pid>\d+)-[0-9a-f]+$")


def is_uid(value: str) -> bool:
    """True for a syntactically valid DICOM UID (safe as a file name)."""
    return len(value) <= 64 and UID_PATTERN.match(value) is not None


@dataclass(frozen=True)
class Queued:
    """One acknowledged instance waiting in inbox/: its SOP Instance UID, file and acceptance time."""

    uid: str
    path: Path
    accepted_ns: int


class Store:
    """RESULTS/: inbox/ (acknowledged, not yet scored), scores.jsonl (rows), sr/ (reports), outbox/ (to forward).

    Opening it recovers from a crash: a half-written last row is cut off, temporaries of dead
    processes are removed, and inbox entries that already have a row are dropped.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.inbox = root / INBOX
        self.sr = root / SR
        self.outbox = root / OUTBOX
        self.rows_path = root / ROWS
        self.watched_path = root / WATCHED
        for folder in (root, self.inbox, self.sr, self.outbox):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        #: SOP Instance UIDs that have a (non-refusal) row: scored or failed, never to be scored again.
        self.processed: set[str] = set()
        self.recovered: dict[str, int] = {"cut_bytes": 0, "temporaries": 0, "already_scored": 0}
        self._recover()
        self._rows_fd = os.open(self.rows_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._watched_fd = -1  # opened on the first watch-folder file

    def close(self) -> None:
        for fd in (self._rows_fd, self._watched_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    # -- recovery --------------------------------------------------------------------------------

    def _recover(self) -> None:
        self.recovered["cut_bytes"] = _cut_partial_tail(self.rows_path)
        _cut_partial_tail(self.watched_path)
        for row in self.rows():
            uid = row.get("sop_instance_uid")
            if isinstance(uid, str) and "refused" not in row:
                self.processed.add(uid)
        for folder in (self.inbox, self.sr, self.outbox):
            for entry in folder.iterdir():
                m = _TEMP.match(entry.name)
                if m and not pid_alive(int(m.group("pid"))):
                    entry.unlink(missing_ok=True)
                    self.recovered["temporaries"] += 1
        for item in self.queued():
            if item.uid in self.processed:  # scored, then killed before its inbox entry was removed
                item.path.unlink(missing_ok=True)
                self.recovered["already_scored"] += 1

    def rows(self) -> Iterator[dict[str, Any]]:
        """The rows of scores.jsonl; a line that is not JSON (other than a cut-off last one) is a DataError."""
        if not self.rows_path.exists():
            return
        with open(self.rows_path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"{self.rows_path}:{number}: not a JSON row ({exc}); the results file was edited or damaged. "
                        "Move it aside (the node starts a new one) and restart."
                    ) from None
                if isinstance(row, dict):
                    yield row

    def watched(self) -> set[tuple[str, int, int]]:
        """(path, size, mtime_ns) of every watch-folder file already taken in."""
        seen: set[tuple[str, int, int]] = set()
        if self.watched_path.exists():
            with open(self.watched_path, encoding="utf-8") as fh:
                for line in fh:
                    with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError):
                        entry = json.loads(line)
                        seen.add((str(entry["path"]), int(entry["size"]), int(entry["mtime_ns"])))
        return seen

    # -- the queue -------------------------------------------------------------------------------

    def inbox_path(self, uid: str) -> Path:
        return self.inbox / f"{uid}.dcm"

    def put(self, uid: str, data: bytes) -> Path:
        """Store one received instance in inbox/ (fsynced, renamed into place): after this it may be acknowledged."""
        path = self.inbox_path(uid)
        write_atomic(path, data)
        return path

    def queued(self) -> list[Queued]:
        """The instances waiting to be scored, oldest first."""
        items = []
        for entry in os.scandir(self.inbox):
            if entry.name.startswith(".") or not entry.name.endswith(".dcm"):
                continue
            try:
                accepted = entry.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            items.append(Queued(entry.name[: -len(".dcm")], Path(entry.path), accepted))
        items.sort(key=lambda q: (q.accepted_ns, q.uid))
        return items

    def done(self, item: Queued) -> None:
        """Remove a scored instance from inbox/ (its row is already on disk)."""
        item.path.unlink(missing_ok=True)

    # -- results ---------------------------------------------------------------------------------

    def append_row(self, row: dict[str, Any], processed: str | None = None) -> None:
        """Append one row to scores.jsonl and fsync it; `processed` (a SOP Instance UID) joins the ledger."""
        line = (json.dumps(row, allow_nan=False, separators=(", ", ": ")) + "\n").encode("utf-8")
        with self._lock:
            _write_all(self._rows_fd, line)
            os.fsync(self._rows_fd)
            if processed is not None:
                self.processed.add(processed)

    def record_watched(self, path: str, size: int, mtime_ns: int, outcome: str) -> None:
        """Note a watch-folder file as taken in (idempotence across restarts)."""
        line = json.dumps({"path": path, "size": size, "mtime_ns": mtime_ns, "outcome": outcome}) + "\n"
        with self._lock:
            if self._watched_fd < 0:
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                self._watched_fd = os.open(self.watched_path, flags, 0o644)
            _write_all(self._watched_fd, line.encode("utf-8"))
            os.fsync(self._watched_fd)

    def sr_path(self, uid: str) -> Path:
        return self.sr / f"{uid}.dcm"

    def queue_for_forwarding(self, sr: Path) -> Path:
        """Hard-link a written SR into outbox/ (atomically, replacing an older copy); a copy where links fail."""
        target = self.outbox / sr.name
        tmp = self.outbox / temp_name(f".{sr.name}.tmp-")
        try:
            os.link(sr, tmp)
        except OSError:
            write_atomic(target, sr.read_bytes())
            return target
        os.replace(tmp, target)
        fsync_dir(self.outbox)
        return target

    def outbox_items(self) -> list[Path]:
        """SRs waiting to be forwarded, oldest first."""
        items = [Path(e.path) for e in os.scandir(self.outbox) if not e.name.startswith(".") and e.name.endswith(".dcm")]
        return sorted(items, key=lambda p: (_mtime_ns(p), p.name))


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _cut_partial_tail(path: Path) -> int:
    """Truncate a JSONL file after its last newline (a line cut by kill -9); return how many bytes were cut."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as fh:
        fh.seek(max(0, size - 65536))
        tail = fh.read()
        if tail.endswith(b"\n"):
            return 0
        keep = size - len(tail) + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
        if keep == 0 and size > 65536:
            raise DataError(f"{path}: the last 64 KiB hold no line break; the file is damaged. Move it aside and restart.")
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    return size - keep
