"""Where built engines, optimised models and compiled-model blobs live on disk, so a console pays each cost once.

Order: an explicit `cache_dir`, then $SALAD_CACHE_DIR, then $XDG_CACHE_HOME/salad-edge, then
~/.cache/salad-edge. Files are written atomically (temp file, then rename) so that two processes
building the same engine never leave half a file behind. The start-up caches (ONNX Runtime's
optimised model, OpenVINO's compiled blobs) are optional: $SALAD_NO_CACHE=1 or `use_cache=False`
turns them off, and a cache folder that cannot be created only costs speed (a warning), never a score.
The bundle itself is never written to: its files and their digests stay as exported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from salad import fsutil
from salad.errors import SaladError

log = logging.getLogger(__name__)

ENV_VAR = "SALAD_CACHE_DIR"
#: Set to 1 to start every runtime from the bundle's own graphs: no start-up cache is read or written.
DISABLE_ENV = "SALAD_NO_CACHE"
#: First line of a self-checking cache entry; the second is its JSON header (payload CRC-32, size, key).
ENTRY_MAGIC = b"salad-cache-entry/1\n"


class CacheEntryError(SaladError):
    """A cache entry that is truncated, altered or of another format: ignored and rebuilt."""


def crc32(data: bytes | memoryview) -> str:
    """CRC-32 as 8 hex digits: catches torn writes and flipped bits at twice sha256's speed (an 89 MB graph is
    read at a start unless its seal vouches for it by its status: seal_ok). Like every file in the user's cache it
    guards against accidents, not against someone who can write the folder: a console that does not trust it sets
    $SALAD_NO_CACHE=1 or a root-owned $SALAD_CACHE_DIR."""
    return f"{zlib.crc32(data):08x}"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder (created if needed); an error naming it if it cannot be created."""
    if cache_dir is not None:
        root = Path(cache_dir)
    elif os.environ.get(ENV_VAR):
        root = Path(os.environ[ENV_VAR])
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        root = base / "salad-edge"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SaladError(f"{root}: cannot create the engine cache folder ({exc}). Pass --cache-dir or set ${ENV_VAR}.") from exc
    return root


def start_cache_disabled() -> bool:
    """Whether $SALAD_NO_CACHE turns the start-up caches off ("", "0", "false" and "no" leave them on)."""
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def start_cache_folder(name: str, cache_dir: str | os.PathLike[str] | None = None, use_cache: bool = True) -> Path | None:
    """`cache_root(cache_dir)/name`, created; None when the start-up caches are off or the folder cannot be made."""
    if not use_cache or start_cache_disabled():
        return None
    try:
        folder = cache_root(cache_dir) / name
        folder.mkdir(parents=True, exist_ok=True)
    except (OSError, SaladError) as exc:
        log.warning("start-up cache off: %s (set $%s or pass cache_dir to relocate it)", exc, ENV_VAR)
        return None
    return folder


def cache_key(parts: Mapping[str, Any]) -> str:
    """The sha256 of `parts` as canonical JSON: every fact that changes what is cached changes the key."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def cpu_fingerprint() -> str:
    """The CPU model and a digest of its instruction-set flags: optimised layouts depend on both (AVX2 vs AVX-512)."""
    from salad.machine import cpu_model_and_flags

    model, flags = cpu_model_and_flags()
    return f"{model} / flags {hashlib.sha256(' '.join(sorted(flags)).encode()).hexdigest()[:16]}"


def slug(text: str) -> str:
    """A file-name-safe version of a GPU or library name: "NVIDIA H100 80GB HBM3" → "NVIDIA-H100-80GB-HBM3"."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-") or "unknown"


def write_atomic(path: Path, data: bytes | bytearray | memoryview) -> None:
    """Write `data` to `path` in the cache (its folder made first) with salad.fsutil.write_atomic: old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fsutil.write_atomic(path, bytes(data))


def write_entry(path: Path, payload: bytes, key: Mapping[str, Any]) -> None:
    """One self-checking file: magic, a JSON header (payload CRC-32 and size, the key's parts), the payload; atomic."""
    header = {"crc32": crc32(payload), "size": len(payload), "key": dict(key)}
    write_atomic(path, ENTRY_MAGIC + json.dumps(header, sort_keys=True, default=str).encode() + b"\n" + payload)


def read_entry(path: Path) -> bytes | None:
    """The payload of the entry at `path`, None if there is none; CacheEntryError if it does not check out."""
    try:
        with path.open("rb") as fh:
            magic, line, payload = fh.readline(), fh.readline(), fh.read()  # the payload in one read, not copied again
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CacheEntryError(f"{path}: unreadable cache entry ({exc}).") from exc
    if magic != ENTRY_MAGIC:
        raise CacheEntryError(f"{path}: not a salad cache entry (no {ENTRY_MAGIC.strip().decode()!r} line).")
    try:
        header = json.loads(line)
        expected, size = str(header["crc32"]), int(header["size"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CacheEntryError(f"{path}: cache entry header unreadable ({exc}).") from exc
    if len(payload) != size or crc32(payload) != expected:
        raise CacheEntryError(
            f"{path}: cache entry holds {len(payload)} bytes that do not match its CRC-32 {expected} ({size} bytes)."
        )
    return payload


#: Suffix of the CRC-32 seal written beside a cached file (OpenVINO's compiled blobs, ONNX Runtime's optimised models).
SEAL_SUFFIX = ".crc32"
#: A file left alone this long (ns) before it was looked at can be vouched for by its status: far above any file
#: system's timestamp tick, so a later write cannot leave its mtime and ctime as they were (git's "racy" files).
SETTLE_NS = 2_000_000_000


def _file_crc32(path: Path, sync: bool = False) -> str:
    """The file's CRC-32, read in 1 MiB pieces into one buffer: no copy of a 90 MB file in memory, and faster.

    `sync`: fsync the file first, so a seal written after it never vouches for bytes still only in the page cache.
    """
    value = 0
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        if sync:
            os.fsync(fh.fileno())
        while size := fh.readinto(buffer):
            value = zlib.crc32(view[:size], value)
    return f"{value:08x}"


def file_state(path: Path) -> list[int]:
    """What any write to the file's bytes changes: device, inode, size, mtime and ctime in ns (ctime cannot be set back)."""
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def settled(state: list[int], looked_ns: int) -> bool:
    """Whether a file in `state` had been left alone SETTLE_NS when it was looked at (`looked_ns`, wall clock)."""
    return looked_ns - max(state[3], state[4]) >= SETTLE_NS


def _state_text(state: list[int]) -> str:
    """A file's status as the seal's second line records it."""
    return "-".join(str(v) for v in state)


def seal_of(path: Path) -> Path:
    """Where `path`'s CRC-32 seal lives: beside it, the same name plus SEAL_SUFFIX."""
    return path.with_name(path.name + SEAL_SUFFIX)


def _write_seal(path: Path) -> None:
    """Seal `path` with its CRC-32, the file fsynced first so the seal never vouches for bytes not yet on disk."""
    write_atomic(seal_of(path), _file_crc32(path, sync=True).encode("ascii"))


def seal_ok(path: Path) -> bool:
    """Whether `path` matches its CRC-32 seal.

    The seal's second line, when present, is the file's status when its CRC-32 last checked out on a settled file:
    if the status is still that, the file was not written since and is not read again. Otherwise the file is read and
    its CRC-32 compared, and a match on a settled file adds the status line, so later starts need not read it.
    """
    seal = seal_of(path)
    looked = time.time_ns()
    try:
        lines = seal.read_text(encoding="ascii").split()
        state = file_state(path)
        if len(lines) == 2 and lines[1] == _state_text(state):
            return True
        ok = bool(lines) and lines[0] == _file_crc32(path) and file_state(path) == state
    except (OSError, ValueError):
        return False
    if ok and lines[1:] != [_state_text(state)] and settled(state, looked):  # no status yet, or a stale one
        try:
            write_atomic(seal, f"{lines[0]}\n{_state_text(state)}\n".encode("ascii"))
        except OSError as exc:  # a read-only cache still works: the next start reads the file again
            log.debug("%s: status not recorded (%s)", seal, exc)
    return ok


def install_sealed(tmp: Path, path: Path) -> None:
    """Seal every file of the finished folder `tmp` (a CRC-32 beside each) and rename it to `path` in one step.

    If another process installed `path` first, its folder stays and `tmp` is left to the caller to remove.
    """
    for file in sorted(p for p in tmp.iterdir() if p.is_file() and not p.name.endswith(SEAL_SUFFIX)):
        _write_seal(file)
    try:
        os.rename(tmp, path)
    except OSError:
        if not path.is_dir():
            raise
        return
    fsutil.fsync_dir(path.parent)


def check_seals(folder: Path, pattern: str) -> tuple[dict[str, int], list[str]]:
    """Files matching `pattern` whose seal matches (name → mtime), and the names removed for lacking one or not matching.

    A library that writes its own cache files (not atomically, with no checksum) may leave a half-written or altered
    file; removing it makes the library build it again rather than load it.
    """
    kept: dict[str, int] = {}
    removed: list[str] = []
    for path in sorted(folder.glob(pattern)):
        if path.name.endswith(SEAL_SUFFIX):
            continue
        seal = seal_of(path)
        try:
            ok = seal_ok(path)
            mtime = path.stat().st_mtime_ns
        except OSError:
            ok, mtime = False, 0
        if ok:
            kept[path.name] = mtime
            continue
        log.warning("%s: cached file without a matching CRC-32 seal (half-written or altered); removed, it is built again.", path)
        try:
            for stale in (path, seal):
                stale.unlink(missing_ok=True)
        except OSError as exc:  # a read-only cache: the runtime builds its own copy in memory and cannot save it
            log.warning("%s: cannot remove it (%s).", path, exc)
        removed.append(path.name)
    return kept, removed


def seal_new(folder: Path, pattern: str, before: dict[str, int], removed: list[str]) -> str:
    """Seal the files matching `pattern` that are new or changed since `before`; how the start used the cache.

    "loaded" (sealed files there, none added), "written" (a first file), "rebuilt" (a file replaced, or one removed by
    check_seals and built again) or "off" (nothing there).
    """
    after = {p.name: p.stat().st_mtime_ns for p in folder.glob(pattern)}
    fresh = [name for name, mtime in after.items() if before.get(name) != mtime]
    for name in fresh:
        try:
            _write_seal(folder / name)
        except OSError as exc:
            log.warning("%s: cannot seal this cached file (%s); the next start builds it again.", folder / name, exc)
    if any(name in before for name in fresh) or (fresh and removed):
        return "rebuilt"
    return "written" if fresh else "loaded" if after else "off"


#: Entries (optimised models, per-graph blob folders) a start-up cache keeps; older ones go when a new one is written.
KEEP_ENTRIES = 16


def prune(folder: Path, keep: int = KEEP_ENTRIES) -> list[str]:
    """Remove all but the `keep` most recently written entries of `folder` (files or folders; a file's seal goes with
    it), and the temporaries of dead writers (a start killed while saving: `.NAME.tmp-PID-…`, salad.fsutil.sweep_stale)."""
    fsutil.sweep_stale(folder)
    entries = [p for p in folder.iterdir() if not p.name.startswith(".") and not p.name.endswith(SEAL_SUFFIX)]
    if len(entries) <= keep:
        return []
    entries.sort(key=lambda p: p.stat().st_mtime_ns, reverse=True)
    removed = []
    for old in entries[keep:]:
        try:
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
                seal_of(old).unlink(missing_ok=True)
            removed.append(old.name)
        except OSError as exc:  # another process removed or holds it: it goes next time
            log.debug("%s: not pruned (%s)", old, exc)
    return removed
