"""Atomic bundle writes (docs/architecture.md §4): whole directories, and the commit journal for in-place updates.

Writers (export, calibrate) commit through `atomic_directory` (a whole new bundle) or a journal
(`commit_journal`: new files staged under temporary names, then one atomic write of a journal that
holds the renames and the complete new manifest). A journal left by a killed writer is validated,
then rolled forward by the next writer, so a bundle is always either the old one or the new one.
Readers never apply a journal: they wait for a live writer to finish, otherwise they refuse, naming
the journal and the call that finishes (or, if it is damaged, sets aside) the commit."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from salad.errors import BundleError
from salad.fsutil import (
    directory_mode,
    exchange_paths,
    fsync_dir,
    lock_timeout,
    parse_json,
    sigterm_as_interrupt,
    sweep_stale,
    temp_name,
    write_atomic,
    writer_active,
    writer_lock,
)
from salad.manifest_model import Manifest, current_manifest, parse_manifest, sha256_file
from salad.schema import JOURNAL, MANIFEST, confined, path_problem

log = logging.getLogger(__name__)

#: Where a writer moves a damaged journal when the bundle as it stands verifies (kept for a person to look at).
DAMAGED_JOURNAL = ".journal.damaged.json"
_PENDING = re.compile(r"\.(?P<name>.+)\.pending-\d+")


# -- the commit journal ---------------------------------------------------------------------------------


def pending_name(final: str) -> str:
    """The temporary name (same folder, owner pid) a file is staged under inside the bundle before its commit."""
    p = PurePosixPath(final)
    return str(p.with_name(f".{p.name}.pending-{os.getpid()}"))


def finish_command(root: Path) -> str:
    """The call that finishes an interrupted commit of `root` (or sets a damaged journal aside): what messages tell a person to run."""
    return f"python -c \"from salad.manifest import complete_journal; complete_journal({str(root)!r})\""


def commit_journal(root: Path, renames: Sequence[tuple[str, str]], manifest: Manifest) -> None:
    """Commit staged files and a new manifest as one atomic step; call with the writer lock held.

    Every `src` must already be inside the bundle (a pending name, not listed by the current
    manifest, so the bundle verifies as before). Writing the journal — the renames plus the
    complete new manifest text — with one atomic rename is the commit point: before it the old
    bundle is intact, after it `complete_journal` rolls forward (idempotently: a rename whose
    source is gone and whose target exists is done) to the new manifest, whichever writer runs it.
    """
    for src, dst in renames:
        for name in (src, dst):
            problem = path_problem(name)
            if problem:
                raise BundleError(f"journal path {problem}")
    body = {"version": 1, "pid": os.getpid(), "renames": [list(r) for r in renames], "manifest": manifest.to_json()}
    write_atomic(root / JOURNAL, (json.dumps(body, indent=1) + "\n").encode("utf-8"))
    with writer_lock(root):
        _apply(root, *check_journal(root, hashes=False))  # written just now by this process: its structure is checked


def check_journal(root: Path, *, hashes: bool = True) -> tuple[list[tuple[str, str]], str]:
    """BUNDLE/.journal.json's renames and new manifest text, validated before anything is applied; changes nothing.

    Checked: the JSON and its shape; every rename moves a staged `.NAME.pending-PID` file to NAME in the
    same folder, inside the bundle, never onto manifest.json or the journal; the new manifest passes
    every check a manifest.json must (schema, fields, paths, integrity digest); each rename's file is
    where a roll-forward expects it; and (`hashes`) every file the new manifest lists will have its
    sha256 once the renames are done. A BundleError naming the journal and the damage otherwise.
    """
    journal = root / JOURNAL

    def damaged(why: str) -> BundleError:
        return BundleError(f"{journal}: damaged commit journal: {why.rstrip('.')}. It was not applied.")

    try:
        body: Any = parse_json(journal.read_bytes(), journal)
    except (BundleError, OSError) as exc:
        raise damaged(str(exc)) from None
    if not isinstance(body, dict) or body.get("version") != 1:
        raise damaged(f"expected an object with version 1, found {type(body).__name__}")
    raw, text = body.get("renames"), body.get("manifest")
    if not isinstance(raw, list) or not all(isinstance(r, list) and len(r) == 2 and all(isinstance(n, str) for n in r) for r in raw):
        raise damaged("'renames' is not a list of [staged name, final name] pairs")
    if not isinstance(text, str):
        raise damaged("'manifest' is not the text of a manifest")
    renames = [(str(src), str(dst)) for src, dst in raw]
    finals: set[str] = set()
    for src, dst in renames:
        problem = path_problem(src) or path_problem(dst)
        if problem:
            raise damaged(f"rename {src!r} → {dst!r}: {problem}")
        s, d = PurePosixPath(src), PurePosixPath(dst)
        m = _PENDING.fullmatch(s.name)
        if s.parent != d.parent or m is None or m.group("name") != d.name or dst in (MANIFEST, JOURNAL) or dst in finals:
            raise damaged(f"rename {src!r} → {dst!r} is not a staged file moved to its own final name (.NAME.pending-PID → NAME)")
        finals.add(dst)
    try:
        manifest = parse_manifest(text.encode("utf-8", "surrogatepass"), journal)
    except BundleError as exc:
        raise damaged(f"its new manifest is not valid: {exc}") from None
    located = {}
    for src, dst in renames:
        try:
            source, target = confined(root, src), confined(root, dst)
        except BundleError as exc:
            raise damaged(str(exc)) from None
        if not source.is_file() and not target.is_file():
            raise damaged(f"neither the staged {source.name} nor {target} exists")
        located[dst] = source if source.is_file() else target
    if hashes:
        for name, digest in sorted(manifest.listed_files().items()):
            try:
                path = located.get(name) or confined(root, name)
            except BundleError as exc:
                raise damaged(str(exc)) from None
            if not path.is_file() or sha256_file(path) != digest:
                raise damaged(f"{path} would not have the sha256 its new manifest lists for {name}")
    return renames, text


def _apply(root: Path, renames: Sequence[tuple[str, str]], text: str) -> None:
    """The roll-forward of a validated journal: the renames, then manifest.json, then the journal goes."""
    for src, dst in renames:
        source, target = confined(root, src), confined(root, dst)
        if source.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
    write_atomic(root / MANIFEST, text.encode("utf-8"))
    (root / JOURNAL).unlink()
    fsync_dir(root)


def complete_journal(root: str | os.PathLike[str]) -> bool:
    """A writer's first step: validate and roll forward an interrupted commit of BUNDLE; True if one was applied.

    A damaged journal is never applied: when the bundle as it stands verifies it is moved aside to
    DAMAGED_JOURNAL (with a warning) and the bundle stays as it is; otherwise this is a BundleError
    and nothing changes.
    """
    root = Path(root)
    with writer_lock(root):
        if not (root / JOURNAL).exists():
            return False
        try:
            checked = check_journal(root)
        except BundleError as damage:
            _set_aside(root, damage)
            return False
        _apply(root, *checked)
        return True


def _set_aside(root: Path, damage: BundleError) -> None:
    try:
        current_manifest(root, verify=True)
    except BundleError as exc:
        raise BundleError(
            f"{damage} The bundle as it stands does not verify either ({exc}), so neither its old nor its new state can be "
            "trusted. Nothing was changed: restore the bundle from a copy or re-export it."
        ) from None
    os.replace(root / JOURNAL, root / DAMAGED_JOURNAL)
    fsync_dir(root)
    log.warning("%s The bundle as it stands verifies and is kept; the journal was moved to %s.", damage, root / DAMAGED_JOURNAL)


def wait_for_commit(root: Path, timeout: float | None = None) -> None:
    """For readers: return once BUNDLE has no journal, waiting while a live writer finishes one; never applies it.

    A journal with no live writer (one was killed, or the file is damaged) is a BundleError naming the
    journal, whether it is valid or damaged, and the call that finishes it.
    """
    journal = root / JOURNAL
    deadline = time.monotonic() + (lock_timeout() if timeout is None else timeout)
    while journal.exists() and writer_active(root) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not journal.exists():
        return
    finish = (
        f"Finish it as a user who may write to the bundle with {finish_command(root)} (any writer, e.g. "
        "`salad calibrate`, does this first): it rolls a valid journal forward, or sets a damaged one aside if the "
        "bundle as it stands verifies."
    )
    try:
        check_journal(root, hashes=False)
    except BundleError as exc:
        raise BundleError(f"{exc} Read commands never apply a journal; nothing was changed. {finish}") from None
    raise BundleError(
        f"{root}: a writer was interrupted while committing a change ({journal} is present and no writer holds the "
        f"bundle's lock). Read commands never apply a journal; nothing was changed. {finish}"
    )


# -- whole-directory writes ---------------------------------------------------------------------------------


def is_bundle(path: Path) -> bool:
    """A directory `--force` may replace as a bundle: it has a manifest.json."""
    return (path / MANIFEST).is_file()


@contextmanager
def atomic_directory(
    target: Path, force: bool = False, *, replaceable: Callable[[Path], bool] = is_bundle, what: str = "bundle",
) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `target`, on error (or Ctrl-C/SIGTERM) it is removed.

    The directory therefore appears whole or not at all, even if validation fails half-way. Holds the
    writer lock of `target` throughout, first removes temporaries of dead writers, and with `force`
    replaces only an empty directory or one `replaceable` recognises (a bundle: manifest.json), never
    any other directory. The new directory gets the umask's normal mode (0o755 under umask 022).
    On Linux the old and new directories are swapped in one renameat2(RENAME_EXCHANGE).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with sigterm_as_interrupt(), writer_lock(target, what=what):
        sweep_stale(target)
        if target.exists() or target.is_symlink():
            if not force:
                raise BundleError(f"{target}: already exists. Pass --force to replace it, or choose another --out.")
            if target.is_symlink() or not target.is_dir() or (any(target.iterdir()) and not replaceable(target)):
                raise BundleError(
                    f"{target}: exists and is not a {what} (no {MANIFEST if replaceable is is_bundle else 'marker of one'}); "
                    f"--force replaces only a {what}, never another file or folder. Choose another --out, or remove it yourself."
                )
        tmp = target.parent / temp_name(f".{target.name}.tmp-")
        tmp.mkdir()
        os.chmod(tmp, directory_mode())
        try:
            yield tmp
            if target.exists():
                if exchange_paths(tmp, target):
                    fsync_dir(target.parent)
                    shutil.rmtree(tmp, ignore_errors=True)  # now the old directory
                else:
                    old = target.with_name(f".{target.name}.old-{os.getpid()}")
                    os.replace(target, old)
                    os.replace(tmp, target)
                    shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
            fsync_dir(target.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
