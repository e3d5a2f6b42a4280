"""The node's results folder: the disk queue (inbox/), the rows (scores.jsonl, also the ledger), sr/ and outbox/.

Everything that must survive `kill -9` is a file written atomically (salad.fsutil.write_atomic) or one
appended, fsynced whole line (serve.ledger.append_line); a batch's SRs and rows share their fsyncs.
scores.jsonl is the one record of what was scored: a film (SOP Instance UID and pixel sha256) with a scored
row is never scored again, and one still in inbox/ without a row is scored after a restart.
docs/architecture.md §11 walks through each crash window.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salad.errors import DataError
from salad.fsutil import fsync_dir, pid_alive, temp_name, write_atomic

from .ledger import Ledger, append_line, film_key, repair, split_key

log = logging.getLogger("salad.serve")

ROWS = "scores.jsonl"
WATCHED = "watched.jsonl"
FORWARDED = "forward.jsonl"
INBOX = "inbox"
SR = "sr"
OUTBOX = "outbox"
#: Scored films whose SR could not be written: their header waits here until an SR is made (at the next start).
NO_SR = "nosr"
#: SRs the destination refused too often, each beside a .reason.json: kept for a person, never silently dropped.
DEAD_LETTER = "deadletter"
#: A DICOM UID (PS3.5 §9.1): digits and dots, at most 64 characters. Only such names enter inbox/.
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: write_atomic's temporaries: `.NAME.tmp-PID-RANDOM`; left behind by a process killed mid-write.
_TEMP = re.compile(r"^\..+\.tmp-(?P<pid>\d+)-[0-9a-f]+$")


def is_uid(value: str) -> bool:
    """True for a syntactically valid DICOM UID (safe as a file name)."""
    return len(value) <= 64 and UID_PATTERN.match(value) is not None


@dataclass(frozen=True)
class Queued:
    """One acknowledged film waiting in inbox/: SOP Instance UID, pixel sha256 prefix (None: legacy), file, acceptance time."""

    uid: str
    sha: str | None
    path: Path
    accepted_ns: int

    @property
    def key(self) -> str:
        return film_key(self.uid, self.sha)


class Store:
    """RESULTS/: inbox/ (acknowledged, not yet scored), scores.jsonl (rows), sr/ (reports), outbox/ (to forward).

    Opening it recovers from a crash: torn or damaged rows are moved to a quarantine file, temporaries
    of dead processes are removed, and inbox entries that already have a scored row are dropped.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.inbox = root / INBOX
        self.sr = root / SR
        self.outbox = root / OUTBOX
        self.no_sr = root / NO_SR
        self.dead_letter = root / DEAD_LETTER
        self.rows_path = root / ROWS
        self.watched_path = root / WATCHED
        self.forwarded_path = root / FORWARDED
        for folder in (root, self.inbox, self.sr, self.outbox, self.no_sr, self.dead_letter):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.ledger = Ledger()
        self.recovered: dict[str, int] = {"cut_bytes": 0, "damaged_lines": 0, "temporaries": 0, "already_scored": 0}
        self._recover()
        self._fds: dict[Path, int] = {}
        self._rows_fd = self._fd(self.rows_path)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds.clear()

    def _fd(self, path: Path) -> int:
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        return self._fds[path]

    @property
    def processed(self) -> set[str]:
        """SOP Instance UIDs that have a scored row."""
        return set(self.ledger.scored)

    # -- recovery --------------------------------------------------------------------------------

    def _recover(self) -> None:
        lines, cut = repair(self.rows_path)
        self.recovered["damaged_lines"], self.recovered["cut_bytes"] = lines, cut
        repair(self.watched_path)
        repair(self.forwarded_path)
        for row in self.rows():
            self.ledger.add(row)
        for folder in (self.inbox, self.sr, self.outbox, self.no_sr, self.dead_letter):
            for entry in folder.iterdir():
                m = _TEMP.match(entry.name)
                if m and not pid_alive(int(m.group("pid"))):
                    entry.unlink(missing_ok=True)
                    self.recovered["temporaries"] += 1
        for item in self.queued():
            if self.ledger.has(item.uid, item.sha):  # scored, then killed before its inbox entry was removed
                item.path.unlink(missing_ok=True)
                self.recovered["already_scored"] += 1

    def rows(self) -> Iterator[dict[str, Any]]:
        """The rows of scores.jsonl; a line that is not JSON is a DataError (repair() ran at open)."""
        if not self.rows_path.exists():
            return
        with open(self.rows_path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"{self.rows_path}:{number}: not a JSON row ({exc}); the results file was edited while the node ran. "
                        "Restart the node: it moves damaged lines to scores.jsonl.damaged-*."
                    ) from None
                if isinstance(row, dict):
                    yield row

    def watched(self) -> set[tuple[str, int, int]]:
        """(path, size, mtime_ns) of every watch-folder file already taken in."""
        seen: set[tuple[str, int, int]] = set()
        if self.watched_path.exists():
            with open(self.watched_path, encoding="utf-8") as fh:
                for line in fh:
                    with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError, ValueError):
                        entry = json.loads(line)
                        seen.add((str(entry["path"]), int(entry["size"]), int(entry["mtime_ns"])))
        return seen

    # -- the queue -------------------------------------------------------------------------------

    def inbox_path(self, key: str) -> Path:
        return self.inbox / f"{key}.dcm"

    def put(self, key: str, data: bytes) -> Path:
        """Store one received film in inbox/ (fsynced, renamed into place): after this it may be acknowledged."""
        path = self.inbox_path(key)
        write_atomic(path, data)
        return path

    def queued(self) -> list[Queued]:
        """The films waiting to be scored, oldest first."""
        items = []
        for entry in os.scandir(self.inbox):
            if entry.name.startswith(".") or not entry.name.endswith(".dcm"):
                continue
            try:
                accepted = entry.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            uid, sha = split_key(entry.name[: -len(".dcm")])
            items.append(Queued(uid, sha, Path(entry.path), accepted))
        items.sort(key=lambda q: (q.accepted_ns, q.uid))
        return items

    def done(self, item: Queued) -> None:
        """Remove a scored film from inbox/ (its row is already on disk)."""
        item.path.unlink(missing_ok=True)

    def keep_for_sr(self, item: Queued) -> None:
        """A scored film whose SR failed: move it from inbox/ to nosr/, where the next start makes its SR."""
        try:
            os.replace(item.path, self.no_sr / item.path.name)
        except OSError as exc:  # its row exists, so a restart drops it from inbox/ anyway; say that no SR will come
            log.error("%s could not be kept for its SR (%s); its row has no SR", item.path, exc.strerror or exc)
            self.done(item)
            return
        fsync_dir(self.no_sr)

    def waiting_for_sr(self) -> list[Path]:
        return sorted(p for p in self.no_sr.glob("*.dcm") if not p.name.startswith("."))

    # -- results ---------------------------------------------------------------------------------

    def append_row(self, row: dict[str, Any]) -> None:
        """Append one row to scores.jsonl as one whole, fsynced line; an OSError (disk full) leaves no part of it."""
        self.append_rows([row])

    def append_rows(self, rows: list[dict[str, Any]]) -> None:
        """Append rows to scores.jsonl with one write and one fsync (a batch's group commit): all whole, or none on OSError."""
        data = b"".join((json.dumps(row, allow_nan=False, separators=(", ", ": ")) + "\n").encode("utf-8") for row in rows)
        with self._lock:
            append_line(self._rows_fd, data)
            for row in rows:
                self.ledger.add(row)

    def record_watched(self, path: str, size: int, mtime_ns: int, outcome: str) -> None:
        """Note a watch-folder file as taken in (idempotence across restarts)."""
        line = json.dumps({"path": path, "size": size, "mtime_ns": mtime_ns, "outcome": outcome}) + "\n"
        with self._lock:
            append_line(self._fd(self.watched_path), line.encode("utf-8"))

    def record_forward(self, entry: dict[str, Any]) -> None:
        """One forwarding attempt that failed, or a dead-lettering, in forward.jsonl (the retry count survives restarts)."""
        with self._lock:
            append_line(self._fd(self.forwarded_path), (json.dumps(entry) + "\n").encode("utf-8"))

    def forward_failures(self) -> dict[str, int]:
        """SR file name → failed attempts so far (from forward.jsonl)."""
        counts: dict[str, int] = {}
        if self.forwarded_path.exists():
            with open(self.forwarded_path, encoding="utf-8") as fh:
                for line in fh:
                    with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError):
                        entry = json.loads(line)
                        if entry.get("event") == "failed":
                            counts[str(entry["sr"])] = counts.get(str(entry["sr"]), 0) + 1
        return counts

    def sr_path(self, key: str) -> Path:
        return self.sr / f"{key}.dcm"

    def write_srs(self, reports: list[tuple[str, bytes]], sync_folder: bool = True) -> list[Path | OSError]:
        """Write sr/KEY.dcm for each (key, bytes): each file fsynced and renamed into place, then sr/ fsynced once
        (by the caller, with `sync_folder=False`, before anything that names the SRs is committed).

        Per report its path, or the OSError that kept it from disk (a full disk): the others are still written.
        """
        done: list[Path | OSError] = []
        for key, data in reports:
            path = self.sr_path(key)
            try:
                write_atomic(path, data, sync_dir=False)  # sr/ is fsynced once for the batch
            except OSError as exc:
                done.append(exc)
                continue
            done.append(path)
        if sync_folder and any(isinstance(d, Path) for d in done):
            fsync_dir(self.sr)
        return done

    def queue_for_forwarding(self, srs: list[Path]) -> None:
        """Hard-link written SRs into outbox/ (atomically, replacing older copies), then fsync outbox/ once; a copy where links fail."""
        linked = False
        for sr in srs:
            target = self.outbox / sr.name
            tmp = self.outbox / temp_name(f".{sr.name}.tmp-")
            try:
                os.link(sr, tmp)
            except OSError:
                write_atomic(target, sr.read_bytes())
                continue
            os.replace(tmp, target)
            linked = True
        if linked:
            fsync_dir(self.outbox)

    def outbox_items(self) -> list[Path]:
        """SRs waiting to be forwarded, oldest first."""
        items = [Path(e.path) for e in os.scandir(self.outbox) if not e.name.startswith(".") and e.name.endswith(".dcm")]
        return sorted(items, key=lambda p: (_mtime_ns(p), p.name))

    def bury(self, sr: Path, reason: dict[str, Any]) -> Path:
        """Move an SR the destination keeps refusing from outbox/ to deadletter/, with its reason beside it."""
        target = self.dead_letter / sr.name
        write_atomic(self.dead_letter / f"{sr.stem}.reason.json", (json.dumps(reason, indent=2) + "\n").encode("utf-8"))
        os.replace(sr, target)
        fsync_dir(self.dead_letter)
        fsync_dir(self.outbox)
        return target


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0
