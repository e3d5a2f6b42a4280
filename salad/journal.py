"""Atomic bundle writes (docs/architecture.md §4): whole directories, and the commit journal for in-place updates.

Writers (export, calibrate) commit through `atomic_directory` (a whole new bundle) or a journal
(`commit_journal`: new files staged under temporary names, then one atomic write of a journal that
holds the renames and the complete new manifest). A journal left by a killed writer is rolled
forward by the next writer or reader that can write, so a bundle is always either the old one or
the new one."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from salad.errors import BundleError
from salad.fsutil import (
    directory_mode,
    exchange_paths,
    fsync_dir,
    sigterm_as_interrupt,
    sweep_stale,
    temp_name,
    write_atomic,
    writer_lock,
)
from salad.schema import JOURNAL, MANIFEST, confined, path_problem

if TYPE_CHECKING:
    from salad.manifest import Manifest



# -- the commit journal ---------------------------------------------------------------------------------


def pending_name(final: str) -> str:
    """The temporary name (same folder, owner pid) a file is staged under inside the bundle before its commit."""
    p = PurePosixPath(final)
    return str(p.with_name(f".{p.name}.pending-{os.getpid()}"))


def commit_journal(root: Path, renames: Sequence[tuple[str, str]], manifest: Manifest) -> None:
    """Commit staged files and a new manifest as one atomic step; call with the writer lock held.

    Every `src` must already be inside the bundle (a pending name, not listed by the current
    manifest, so the bundle verifies as before). Writing the journal — the renames plus the
    complete new manifest text — with one atomic rename is the commit point: before it the old
    bundle is intact, after it `complete_journal` rolls forward (idempotently: a rename whose
    source is gone and whose target exists is done) to the new manifest, whoever runs it.
    """
    for src, dst in renames:
        for name in (src, dst):
            problem = path_problem(name)
            if problem:
                raise BundleError(f"journal path {problem}")
    body = {"version": 1, "pid": os.getpid(), "renames": [list(r) for r in renames], "manifest": manifest.to_json()}
    write_atomic(root / JOURNAL, (json.dumps(body, indent=1) + "\n").encode("utf-8"))
    complete_journal(root)


def complete_journal(root: str | os.PathLike[str]) -> bool:
    """Roll an interrupted commit of BUNDLE forward (renames, then manifest.json, then the journal goes); True if there was one."""
    root = Path(root)
    with writer_lock(root):
        journal = root / JOURNAL
        if not journal.exists():
            return False
        try:
            body = json.loads(journal.read_text(encoding="utf-8"))
            renames = [(str(a), str(b)) for a, b in body["renames"]]
            text = str(body["manifest"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"{journal}: unreadable commit journal ({exc}); restore the bundle from a copy or re-export it.") from exc
        for src, dst in renames:
            source, target = confined(root, src), confined(root, dst)
            if source.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
            elif not target.exists():
                raise BundleError(
                    f"{journal}: cannot complete the interrupted commit: neither {source} nor {target} exists. Re-export the bundle."
                )
        write_atomic(root / MANIFEST, text.encode("utf-8"))
        journal.unlink()
        fsync_dir(root)
        return True


def complete_for_reader(root: Path) -> None:
    try:
        complete_journal(root)
    except (BundleError, OSError) as exc:
        raise BundleError(
            f"{root}: a writer was interrupted while committing a change ({root / JOURNAL} is present) and this process "
            f"cannot complete it ({exc}). Run a writer on the bundle as a user who may write to it — any `salad calibrate` "
            f"or `python -c \"from salad.manifest import complete_journal; complete_journal('{root}')\"` — which finishes the commit."
        ) from exc


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
