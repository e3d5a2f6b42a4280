"""The node's durable lines: one write of a whole line per row (rolled back on failure), repair at start, film identity.

A row is the commit point of a film (docs/architecture.md §11), so a row must be whole or absent: each
line is written with one `write` and fsynced; a short write (a full disk) is cut back to where the line
began before the error is raised, so rows are never glued. At start a torn last line, or a damaged line
left by an older version, is moved to a quarantine file beside the rows and logged; a complete row glued
behind a torn one is kept. A film is identified by its SOP Instance UID and the sha256 of its pixel data,
so a different film under a known UID is told apart from a re-send of the same one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom

from salad.fsutil import write_atomic

#: Hex digits of the pixel sha256 in an inbox or SR file name (64 bits: a clash between two films of one UID is negligible).
KEY_HEX = 16


def pixel_sha256(data: bytes) -> str:
    """sha256 of a DICOM instance's pixel data as encoded (the whole bytes when it has none or cannot be parsed)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), specific_tags=["PixelData"])
        pixels = ds.get("PixelData")
    except Exception:  # a damaged file: its bytes are its identity
        pixels = None
    return hashlib.sha256(pixels if isinstance(pixels, bytes) else data).hexdigest()


def film_key(uid: str, sha: str | None) -> str:
    """The file stem of one film in inbox/ and sr/: `UID_SHA16` (legacy entries are `UID`)."""
    return f"{uid}_{sha[:KEY_HEX]}" if sha else uid


def split_key(stem: str) -> tuple[str, str | None]:
    """`UID_SHA16` → (UID, SHA16); `UID` → (UID, None)."""
    uid, _, sha = stem.partition("_")
    return uid, sha or None


def append_line(fd: int, line: bytes) -> None:
    """Append one whole line to an O_APPEND file and fsync; on any failure the file is cut back to its old end."""
    start = os.fstat(fd).st_size
    try:
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(errno.ENOSPC, f"only {written} of {len(line)} bytes of a row could be written (disk full)")
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
            os.fsync(fd)
        raise


def _salvage(line: bytes) -> tuple[dict[str, Any] | None, bytes]:
    """A damaged line → (a complete row glued behind a torn one, or None; the bytes that are not a row)."""
    start = line.find(b'{"', 1)
    while start > 0:
        with contextlib.suppress(ValueError):
            row = json.loads(line[start:])
            if isinstance(row, dict):
                return row, line[:start]
        start = line.find(b'{"', start + 1)
    return None, line


def repair(path: Path) -> tuple[int, int]:
    """Move torn or damaged lines of a JSONL file to PATH.damaged-NS (kept for a person); return (lines, bytes) moved."""
    if not path.exists():
        return 0, 0
    data = path.read_bytes()
    if not data:
        return 0, 0
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: empty, or a line cut by kill -9 / a full disk of an older version
    kept: list[bytes] = []
    damaged: list[bytes] = []
    for line in lines:
        try:
            json.loads(line)
            kept.append(line)
        except ValueError:
            row, junk = _salvage(line)
            damaged.append(junk)
            if row is not None:
                kept.append(json.dumps(row, allow_nan=False, separators=(", ", ": ")).encode("utf-8"))
    damaged += [tail] if tail else []
    if not damaged:
        return 0, 0
    write_atomic(path.with_name(f"{path.name}.damaged-{time.time_ns()}"), b"\n".join(damaged) + b"\n")
    write_atomic(path, b"".join(line + b"\n" for line in kept))
    return len(damaged), sum(len(d) for d in damaged)


@dataclass
class Ledger:
    """What the rows say: per SOP Instance UID, the pixel sha256s scored (None: a row of an older version)."""

    scored: dict[str, set[str | None]] = field(default_factory=dict)

    def add(self, row: dict[str, Any]) -> None:
        """Count a row: scored rows (no `error`, not `refused`) join the ledger; error rows do not (a re-send is re-scored)."""
        uid = row.get("sop_instance_uid")
        if isinstance(uid, str) and "refused" not in row and "error" not in row:
            sha = row.get("pixel_sha256")
            self.scored.setdefault(uid, set()).add(sha if isinstance(sha, str) else None)

    def has(self, uid: str, sha: str | None) -> bool:
        """True when this film (UID and pixels; a legacy row matches any pixels) already has a scored row."""
        shas = self.scored.get(uid)
        if not shas:
            return False
        return None in shas or sha is None or any(s is not None and s[:KEY_HEX] == sha[:KEY_HEX] for s in shas)

    def collides(self, uid: str, sha: str | None) -> bool:
        """True when the UID already has a scored row for different pixels: a UID collision to report."""
        return bool(self.scored.get(uid)) and not self.has(uid, sha)
