"""Verification stamps: a bundle whose files have not changed since they last verified is not hashed again at start-up.

`open_verified` reads and fully checks the manifest every time (schema, fields, integrity digests). The sha256 of
the graph files (30–90 MB) and the bank inside them are checked as `Bundle.open` does, unless a stamp in
salad.runtime.cache's folder says that this exact manifest already verified with these exact files: each file's
(device, inode, size, mtime_ns, ctime_ns). Any write to a file's bytes changes its mtime and ctime (ctime cannot be
set back by `touch`), and a rename or copy changes the inode, so a changed file misses the stamp and is hashed.
A file whose status changed less than cache.SETTLE_NS (2 s) before it was looked at is never stamped: a second write inside
the same timestamp tick could otherwise leave its status as it was (git's "racy" files). Like every cache
entry, a stamp guards against accidents, not against someone who can write the cache folder; a console that does
not trust it sets $SALAD_NO_CACHE=1 (every start hashes) or a root-owned $SALAD_CACHE_DIR.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from salad import __version__
from salad.bundle import Bundle
from salad.errors import BundleError
from salad.journal import wait_for_commit
from salad.manifest import MANIFEST, confined
from salad.manifest_model import load_with_bytes, verified_files

from .cache import CacheEntryError, cache_key, file_state, prune, read_entry, settled, start_cache_folder, write_entry

#: The cache folder (under salad.runtime.cache's root) of the verification stamps.
STAMP_FOLDER = "verified"
#: Stamps kept (they are a few hundred bytes each); older ones go when a new one is written.
KEEP_STAMPS = 64

log = logging.getLogger(__name__)


def stamp_parts(root: Path, manifest_bytes: bytes, graphs: Sequence[tuple[str, str]] | None,
                states: dict[str, list[int]]) -> dict[str, Any]:
    """Everything the verification's outcome depends on: the checking code, the manifest's bytes, the files' states."""
    return {"salad": __version__, "root": str(root.resolve()), "graphs": None if graphs is None else [list(g) for g in graphs],
            "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(), "files": states}


def _states(root: Path, names: Sequence[str]) -> dict[str, list[int]] | None:
    """Each file's state, or None if one is missing or outside the bundle (the full check then says which)."""
    try:
        return {name: file_state(confined(root, name)) for name in names}
    except (OSError, BundleError):  # a missing file, a path leaving the bundle: not stamped, and the full check says why
        return None


def open_verified(path: str | os.PathLike[str], graphs: Sequence[tuple[str, str]] | None,
                  cache_dir: str | os.PathLike[str] | None = None, use_cache: bool = True) -> tuple[Bundle, str]:
    """The bundle, verified as `Bundle.open(path, verify=True, graphs=graphs)` does, and how: "hashed" or "stamped".

    A stamp is written after a full check only if no file changed while it was hashed and all had settled.
    """
    root = Path(path)
    folder = start_cache_folder(STAMP_FOLDER, cache_dir, use_cache)
    if folder is None:
        return Bundle.open(root, verify=True, graphs=graphs), "hashed"
    wait_for_commit(root)
    manifest, data = load_with_bytes(root)  # the manifest itself is always fully checked
    names = verified_files(manifest, graphs)  # the files the full check hashes, by its own list
    looked = time.time_ns()  # before the files are looked at: what had settled by then cannot change unseen
    states = _states(root, names)
    if states is not None:
        parts = stamp_parts(root, data, graphs, states)
        stamp = folder / f"{cache_key(parts)[:32]}.stamp"
        if _stamped(stamp, parts):
            return Bundle(root, manifest), "stamped"
    bundle = Bundle.open(root, verify=True, graphs=graphs)  # the full check (with its own retry across a commit)
    if states is not None and _unchanged(root, data, names, states, looked):
        _write_stamp(folder, stamp, parts)
    return bundle, "hashed"


def _stamped(stamp: Path, parts: dict[str, Any]) -> bool:
    """Whether `stamp` holds exactly `parts` (a damaged stamp is removed and counts as none)."""
    try:
        payload = read_entry(stamp)
    except CacheEntryError as exc:
        log.warning("%s Hashing the bundle instead.", exc)
        with contextlib.suppress(OSError):  # a read-only cache: the stamp stays and is refused again next time
            stamp.unlink(missing_ok=True)
        return False
    return payload is not None and payload == _canonical(parts)


def _unchanged(root: Path, data: bytes, names: Sequence[str], states: dict[str, list[int]], looked: int) -> bool:
    """Whether the manifest and every file are as they were before hashing, each settled by `looked` (cache.settled)."""
    try:
        same = (root / MANIFEST).read_bytes() == data and _states(root, names) == states
    except OSError:
        return False
    return same and all(settled(s, looked) for s in states.values())


def _write_stamp(folder: Path, stamp: Path, parts: dict[str, Any]) -> None:
    """Record that the bundle verified in these files' states; a cache that cannot take it only costs the next hash."""
    try:
        write_entry(stamp, _canonical(parts), parts)
        prune(folder, KEEP_STAMPS)
    except OSError as exc:
        log.warning("%s: verification stamp not written (%s); the next start hashes the bundle again.", stamp, exc)


def _canonical(parts: dict[str, Any]) -> bytes:
    """The stamp's content: its parts as sorted JSON, so equal parts give equal bytes."""
    return json.dumps(parts, sort_keys=True).encode()
