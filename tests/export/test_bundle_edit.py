"""Bundle.edit, the one writer of an existing bundle: commits staged files with the manifest, or leaves nothing behind.

On a real exported bundle: a committed edit verifies; an error, SIGTERM or kill -9 before the commit point
leaves the old bundle byte for byte (the next edit sweeps a killed writer's staged files); an edit that
changes nothing writes nothing.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from salad.bundle import Bundle
from salad.errors import BundleError
from salad.manifest import read_manifest, sha256_file

#: A child that stages a note in an edit, then meets argv[2]: "term" (a service stop: SIGTERM) or "kill" (kill -9).
_STAGE_THEN = textwrap.dedent(
    """
    import os, signal, sys
    from salad.bundle import Bundle

    with Bundle.edit(sys.argv[1]) as edit:
        edit.stage("notes/note.txt", b"staged, never committed\\\\n")
        os.kill(os.getpid(), signal.SIGTERM if sys.argv[2] == "term" else signal.SIGKILL)
    """
)


def _state(root: Path) -> dict[str, str]:
    """Every file and folder in the bundle (hidden ones too) → sha256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def root(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "b"))


def test_an_edit_commits_its_staged_files_and_manifest_in_one_step(root: Path) -> None:
    with Bundle.edit(root) as edit:
        staged = edit.stage("notes/note.txt", b"a committed note\n")
        assert "notes/note.txt" not in read_manifest(root, verify=True).files, "visible before the commit"
        edit.manifest.files["notes/note.txt"] = sha256_file(staged)
    manifest = read_manifest(root, verify=True)
    assert manifest.files["notes/note.txt"] == hashlib.sha256(b"a committed note\n").hexdigest()
    assert (root / "notes" / "note.txt").read_bytes() == b"a committed note\n"
    assert not [p.name for p in root.rglob(".*")], "temporaries left after a commit"


def test_an_error_inside_an_edit_leaves_the_bundle_as_it_was(root: Path) -> None:
    before = _state(root)
    with pytest.raises(RuntimeError, match="half-way"), Bundle.edit(root) as edit:
        edit.manifest.files["notes/note.txt"] = sha256_file(edit.stage("notes/note.txt", b"never committed\n"))
        raise RuntimeError("half-way")
    after = _state(root)
    assert after.pop("notes") == "dir" and after == before  # the staged file is gone; the folder made for it may stay


def test_an_edit_that_changes_nothing_writes_nothing(root: Path) -> None:
    before = _state(root)
    with Bundle.edit(root) as edit:
        assert not edit.changed
    assert _state(root) == before


def test_sigterm_inside_an_edit_removes_the_staged_files(root: Path) -> None:
    before = _state(root)
    done = subprocess.run([sys.executable, "-c", _STAGE_THEN, str(root), "term"], capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "KeyboardInterrupt" in done.stderr, done.stderr[-2000:]
    after = _state(root)
    assert after.pop("notes") == "dir" and after == before
    read_manifest(root, verify=True)


def test_the_next_edit_sweeps_the_staged_files_of_a_killed_one(root: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _STAGE_THEN, str(root), "kill"], capture_output=True, text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    (litter,) = (root / "notes").glob(".note.txt.pending-*")  # a folder sweep_stale alone never looks in
    read_manifest(root, verify=True)  # unlisted staged files do not break the old bundle
    with Bundle.edit(root):
        pass
    assert not litter.exists()


def test_an_edit_of_a_folder_that_is_not_a_bundle_names_it(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"not a bundle \(no manifest.json\)"), Bundle.edit(tmp_path / "missing"):
        pass
    assert list(tmp_path.iterdir()) == [], "a lock file was made beside a folder that is not a bundle"
