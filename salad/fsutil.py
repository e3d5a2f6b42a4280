"""File-system helpers for the bundle writers: an exclusive writer lock, SIGTERM as Ctrl-C, pid-tagged temporaries.

Standard library only (a console installs salad-edge[runtime] without extra packages).

Lock: `fcntl.flock` on a small lock file rather than the `filelock` package — the consoles are Linux
(macOS for development), flock is released by the kernel when the holder dies (even under
`kill -9`, so there is never a stale lock to break), and it adds no dependency to the runtime
extra. The lock is keyed on the real path (symbolic links resolved), so two writers that name one
bundle or results folder through different aliases exclude each other. The lock file is `.NAME.lock`
beside the real folder (or `FOLDER/.lock` where its parent is not writable) and holds the holder's
pid for the error message. The holder deletes it on release; a waiter that then wins the flock on the
deleted file notices (its inode is no longer the path's) and opens the path again, the standard cure
for the unlink race. A `kill -9` leaves the file, unlocked.

Policy: a second writer waits up to `SALAD_LOCK_TIMEOUT_S` seconds (default 10, so short writers
such as a journal roll-forward simply queue), then fails with a BundleError naming the holder's pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from salad.errors import BundleError, SaladError

#: Seconds a writer waits for another writer's lock before giving up (environment override).
LOCK_TIMEOUT_ENV = "SALAD_LOCK_TIMEOUT_S"
DEFAULT_LOCK_TIMEOUT_S = 10.0
_POLL_S = 0.1

_held: dict[str, tuple[int, int]] = {}  # lock path → (fd, depth): re-entrant within one process
_held_guard = threading.Lock()

#: Hidden temporaries the writers make; group "pid" is the owner. Anything matching with a dead owner is stale.
_TEMP_PATTERNS = (
    re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[^/]*$"),  # atomic_directory's new directory
    re.compile(r"^\.(?P<name>.+)\.old-(?P<pid>\d+)$"),  # atomic_directory's replaced directory (non-Linux path)
    re.compile(r"^\.(?P<name>.+)\.calibrate-(?P<pid>\d+)-[^/]*$"),  # calibration's staging copy
)
_INNER_PATTERNS = (
    re.compile(r"^\.calibrate-(?P<pid>\d+)-[^/]*$"),  # staging inside a bundle whose parent is read-only
    re.compile(r"^\..+\.pending-(?P<pid>\d+)$"),  # a staged file not yet named in a journal
    re.compile(r"^\..+\.tmp-(?P<pid>\d+)-[^/]*$"),  # an atomic file write (manifest.json, the journal)
)


def lock_timeout() -> float:
    """The writer-lock wait in seconds, from SALAD_LOCK_TIMEOUT_S (default 10)."""
    raw = os.environ.get(LOCK_TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_LOCK_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise BundleError(f"{LOCK_TIMEOUT_ENV}={raw!r}: expected a number of seconds (e.g. 10, or 0 to fail at once).") from None
    return max(value, 0.0)


def real_path(target: str | os.PathLike[str]) -> Path:
    """`target` with every symbolic link resolved (as far as it exists): the one name a lock is keyed on."""
    return Path(os.path.realpath(target))


def lock_path(target: Path) -> Path:
    """Where the writer lock of directory `target` lives: `.NAME.lock` beside it, symbolic links resolved."""
    target = real_path(target)
    return target.parent / f".{target.name}.lock"


def _open_lock(target: Path) -> tuple[int, Path]:
    """Open (creating) the lock file of `target`; inside the bundle when its parent is read-only."""
    path = lock_path(target)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644), path
    except OSError as exc:
        inner = real_path(target) / ".lock"
        if exc.errno not in (errno.EACCES, errno.EROFS, errno.EPERM) or not inner.parent.is_dir():
            raise BundleError(f"{path}: cannot create the writer lock ({exc.strerror}); the bundle's folder must be writable.") from exc
        try:
            return os.open(inner, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644), inner
        except OSError as exc2:
            raise BundleError(
                f"{target}: cannot take the writer lock ({path}: {exc.strerror}; {inner}: {exc2.strerror}). "
                "Writers (salad calibrate, salad-export --force) need write access to the bundle."
            ) from exc2


def _holder(path: Path) -> str:
    try:
        pid = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "another process"


@contextlib.contextmanager
def writer_lock(target: str | os.PathLike[str], timeout: float | None = None, what: str = "bundle") -> Iterator[Path]:
    """Hold the exclusive writer lock of `target` (a bundle or a Triton repository) for the block.

    Re-entrant within one process. Waits up to `timeout` (default `lock_timeout()`) seconds, then
    raises a BundleError naming the holder's pid. Keyed on the real path: an alias (symbolic link to
    the folder or to a folder above it) takes the same lock.
    """
    target = real_path(target)
    fd, path = _open_lock(target)
    key = str(path)
    with _held_guard:
        if key in _held:
            os.close(fd)
            held_fd, depth = _held[key]
            _held[key] = (held_fd, depth + 1)
            fd = -1
    if fd >= 0:
        wait = lock_timeout() if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                try:
                    same = os.fstat(fd).st_ino == os.stat(path).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)  # the holder deleted this file as we waited: lock the path's current file
                fd, path = _open_lock(target)
                key = str(path)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise BundleError(
                        f"{target}: another salad writer ({_holder(path)}) is changing this {what} (lock {path}); "
                        f"waited {wait:g} s. Let it finish and run the command again, or set {LOCK_TIMEOUT_ENV} "
                        "to wait longer."
                    ) from None
                time.sleep(_POLL_S)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        with _held_guard:
            _held[key] = (fd, 1)
    try:
        yield path
    finally:
        with _held_guard:
            held_fd, depth = _held[key]
            if depth > 1:
                _held[key] = (held_fd, depth - 1)
            else:
                del _held[key]
                with contextlib.suppress(OSError):
                    os.unlink(path)  # still locked: a waiter on this inode will notice and reopen the path
                os.close(held_fd)  # closing the only descriptor releases the flock


def holds_lock(target: str | os.PathLike[str]) -> bool:
    """True if this process holds the writer lock of `target` (re-entrancy for nested writers)."""
    target = real_path(target)
    return str(lock_path(target)) in _held or str(target / ".lock") in _held


def writer_active(target: str | os.PathLike[str]) -> bool:
    """Whether a live process holds the writer lock of `target`; read-only (creates nothing, changes nothing).

    A reader uses it to wait for a commit in progress instead of reading a half-committed bundle.
    """
    target = real_path(target)
    for path in (lock_path(target), target / ".lock"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing releases a shared lock taken just now
    return False


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt for the block, so the writers' Ctrl-C cleanup also runs when a service stops them.

    Only the main thread can install handlers; elsewhere the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum} (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def temp_name(prefix: str) -> str:
    """`prefix` + the owner pid + a random suffix: a name the sweep can attribute to its process."""
    return f"{prefix}{os.getpid()}-{os.urandom(4).hex()}"


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (a pid reused by another process counts as alive: the safe side)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def sweep_stale(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the hidden temporaries of `target` (beside it and inside it) whose owner process is dead; return them.

    Call with the writer lock held. A `.NAME.old-PID` left with no NAME (a writer killed between its
    two renames) is the previous, complete directory: it is renamed back rather than removed.
    """
    target = real_path(target)
    removed: list[Path] = []
    if target.parent.is_dir():
        for entry in sorted(target.parent.iterdir()):
            for pattern in _TEMP_PATTERNS:
                m = pattern.match(entry.name)
                if m and m.group("name") == target.name and not pid_alive(int(m.group("pid"))):
                    if entry.name.startswith(f".{target.name}.old-") and not target.exists():
                        os.replace(entry, target)
                    else:
                        _remove(entry)
                        removed.append(entry)
                    break
    if target.is_dir():
        for folder in (target, target / "calibration"):
            if not folder.is_dir():
                continue
            for entry in sorted(folder.iterdir()):
                for pattern in _INNER_PATTERNS:
                    m = pattern.match(entry.name)
                    if m and not pid_alive(int(m.group("pid"))):
                        _remove(entry)
                        removed.append(entry)
                        break
    return removed


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def directory_mode() -> int:
    """The mode a plain `mkdir` would give under the current umask (0o755 under umask 022)."""
    return 0o777 & ~_umask()


def file_mode() -> int:
    """The mode a plain `open(..., "w")` would give under the current umask (0o644 under umask 022)."""
    return 0o666 & ~_umask()


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two directory entries in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    return int(renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)) == 0


def write_atomic(path: Path, data: bytes, sync_dir: bool = True) -> None:
    """Write `path` via a pid-tagged temporary, fsync, rename and directory fsync: old or new content, never half.

    `sync_dir=False` leaves the directory fsync to a caller that fsyncs the folder once for a batch of files.
    """
    tmp = path.with_name(temp_name(f".{path.name}.tmp-"))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, file_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if sync_dir:
        fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """fsync a directory so the renames in it survive a power cut (best effort where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def parse_json(data: str | bytes, path: Path, error: type[SaladError] = BundleError, fix: str = "") -> Any:
    """The JSON in `data` (read from `path`); damaged, non-UTF-8 or absurdly nested content is `error` naming the file and the fix."""
    try:
        return json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc}).{' ' + fix if fix else ''}") from exc
    except RecursionError:
        raise error(
            f"{path}: JSON nested too deeply to read (thousands of levels; no salad-edge file nests more than a few); "
            f"the file is damaged or was not written by salad-edge.{' ' + fix if fix else ''}"
        ) from None
