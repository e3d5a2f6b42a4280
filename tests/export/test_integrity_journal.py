"""The commit journal: validated before it is applied, applied only by writers, never by a read command.

Read commands (`salad score`, `inspect`, `parity`) meeting a journal wait for a live writer to finish it;
otherwise they refuse, naming the journal and the call that finishes it, and change nothing at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from salad.errors import BundleError
from salad.manifest import complete_journal, read_manifest
from tests.conftest import SAMPLE_EVAL

SALAD = Path(sys.executable).parent / "salad"
FILM = sorted((SAMPLE_EVAL / "normal").glob("*.jpeg"))[0]
READS = (["score", "{b}", str(FILM)], ["inspect", "{b}"], ["parity", "{b}"])

#: A real writer that commits a new file (notes.txt) through Bundle.edit; argv[2] says what happens at the commit
#: point: "die" (killed right after the journal is written, like kill -9) or "slow" (applies it 5 s later).
_WRITER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import salad.journal as journal
    from salad.bundle import Bundle
    from salad.manifest import sha256_file

    root, mode = Path(sys.argv[1]), sys.argv[2]
    apply = journal._apply

    def at_commit_point(*args):
        if mode == "die":
            os._exit(9)
        time.sleep(5)
        apply(*args)

    journal._apply = at_commit_point
    with Bundle.edit(root) as edit:
        staged = edit.stage("notes.txt", b"a note committed with the journal\\n")
        edit.manifest.files["notes.txt"] = sha256_file(staged)
    """
)


def _state(root: Path) -> dict[str, str]:
    """Every entry in and beside the bundle (hidden ones too) → sha256 of its bytes."""
    out = {}
    for folder in (root, root.parent):
        for p in sorted(folder.iterdir()):
            if p.is_file():
                out[str(p)] = _sha256(p)
            elif p != root:
                out[str(p)] = "dir"
    return out


def _read(command: list[str], root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SALAD), *(a.format(b=root) for a in command)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _killed_writer(bundle: Path, tmp_path: Path) -> Path:
    root = Path(shutil.copytree(bundle, tmp_path / "b"))
    done = subprocess.run([sys.executable, "-c", _WRITER, str(root), "die"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 9, done.stderr
    assert (root / ".journal.json").is_file()
    return root


@pytest.mark.parametrize(
    "damage",
    [
        {"version": 1, "renames": [["model.onnx", "scorer.onnx"]], "manifest": "not a manifest"},  # moves a bundle file
        {"version": 1, "renames": [[".x.pending-1", "manifest.json"]], "manifest": "{}"},  # would overwrite the manifest
        {"version": 1, "renames": [["../outside.pending-1", "outside"]], "manifest": "{}"},
        "[" * 200_000 + "]" * 200_000,  # nested deeper than any reader allows
    ],
    ids=["moves-bundle-files", "onto-manifest", "escapes", "deep"],
)
def test_read_commands_never_apply_a_damaged_journal(bundle: Path, tmp_path: Path, damage: object) -> None:
    root = Path(shutil.copytree(bundle, tmp_path / "b"))
    text = damage if isinstance(damage, str) else json.dumps(damage)
    (root / ".journal.json").write_text(text)
    before = _state(root)
    for command in READS:
        done = _read(command, root)
        assert done.returncode == 1, f"salad {command[0]} exited {done.returncode}:\n{done.stdout[-1000:]}{done.stderr[-1000:]}"
        assert "Traceback" not in done.stderr, done.stderr
        assert f"{root / '.journal.json'}: damaged commit journal" in done.stderr
        assert "Read commands never apply a journal; nothing was changed" in done.stderr and "complete_journal(" in done.stderr
        assert _state(root) == before, f"salad {command[0]} changed the bundle"


def test_a_writer_sets_a_damaged_journal_aside_only_when_the_bundle_verifies(bundle: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(bundle, tmp_path / "b"))
    (root / ".journal.json").write_text(json.dumps({"version": 1, "renames": [["model.onnx", "scorer.onnx"]], "manifest": "x"}))
    with open(root / "encoder.onnx", "ab") as fh:
        fh.write(b"\0")  # the bundle as it stands does not verify either: nothing can be trusted, nothing is changed
    before = _state(root)
    with pytest.raises(BundleError, match=r"(?s)damaged commit journal.*does not verify either.*Nothing was changed"):
        complete_journal(root)
    assert _state(root) == before
    shutil.copyfile(bundle / "encoder.onnx", root / "encoder.onnx")
    assert complete_journal(root) is False  # set aside, nothing applied
    assert not (root / ".journal.json").exists() and (root / ".journal.damaged.json").is_file()
    assert _sha256(root / "model.onnx") == _sha256(bundle / "model.onnx")
    read_manifest(root, verify=True)


def test_a_journal_left_by_a_killed_writer_is_refused_by_readers_and_finished_by_a_writer(bundle: Path, tmp_path: Path) -> None:
    root = _killed_writer(bundle, tmp_path)
    before = _state(root)
    for command in READS:
        done = _read(command, root)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert "a writer was interrupted while committing a change" in done.stderr and "complete_journal(" in done.stderr
        assert _state(root) == before, f"salad {command[0]} applied the journal"
    assert complete_journal(root) is True  # the writer's call: validated, then rolled forward
    manifest = read_manifest(root, verify=True)
    assert (root / "notes.txt").read_text() == "a note committed with the journal\n" and "notes.txt" in manifest.files
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]


def test_a_journal_whose_files_do_not_match_its_manifest_is_not_applied(bundle: Path, tmp_path: Path) -> None:
    root = _killed_writer(bundle, tmp_path)
    (staged,) = root.glob(".notes.txt.pending-*")
    staged.write_text("something else\n")
    assert complete_journal(root) is False, "a journal whose staged file is not the one its manifest lists was applied"
    assert not (root / "notes.txt").exists() and "notes.txt" not in read_manifest(root, verify=True).files


def test_a_reader_waits_for_a_live_writer_to_finish_its_commit(bundle: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(bundle, tmp_path / "b"))
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(root), "slow"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (root / ".journal.json").exists():
            assert writer.poll() is None, writer.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        done = _read(["inspect", "{b}", "--json"], root, SALAD_LOCK_TIMEOUT_S="120")
    finally:
        writer.wait(timeout=120)
    assert writer.returncode == 0
    assert done.returncode == 0, done.stderr
    assert "notes.txt" in json.loads(done.stdout)["files"], "the reader read the bundle before the commit was finished"


def test_a_deeply_nested_manifest_is_a_one_line_error(bundle: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(bundle, tmp_path / "b"))
    for text in ("[" * 200_000 + "]" * 200_000, '{"a":' * 200_000 + "1" + "}" * 200_000):
        (root / "manifest.json").write_text(text)
        done = _read(["score", "{b}", str(FILM)], root)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and f"{root / 'manifest.json'}: JSON nested too deeply" in lines[0], done.stderr
        with pytest.raises(BundleError, match=r"nested too deeply"):
            read_manifest(root, verify=False)
