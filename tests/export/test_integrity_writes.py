"""How bundles and Triton repositories are written: modes a service account can read, what --force may replace,
temporaries after SIGTERM and after writers that died."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from salad.errors import BundleError
from salad.manifest import read_manifest

SALAD_EXPORT = Path(sys.executable).parent / "salad-export"


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _modes(root: Path) -> tuple[set[int], set[int]]:
    dirs = {stat.S_IMODE(root.stat().st_mode)} | {stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_dir()}
    files = {stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}
    return dirs, files


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_bundles_and_triton_repositories_are_readable_by_other_accounts(
    tiny_run: Path, bundle: Path, tmp_path: Path, umask_022: None,
) -> None:
    from salad.export import export_bundle
    from salad.export.triton import export_triton

    out = export_bundle(tiny_run, tmp_path / "b")
    assert _modes(out) == ({0o755}, {0o644})
    repo = export_triton(bundle, tmp_path / "repo")
    assert _modes(repo) == ({0o755}, {0o644})


def test_force_replaces_only_a_bundle(tiny_run: Path, bundle: Path, tmp_path: Path) -> None:
    from salad.export import export_bundle
    from salad.export.triton import export_triton

    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "holiday.jpg").write_bytes(b"not a bundle")
    with pytest.raises(BundleError, match=r"photos: exists and is not a bundle \(no manifest\.json\); --force replaces only a bundle"):
        export_bundle(tiny_run, precious, force=True)
    with pytest.raises(BundleError, match=r"photos: exists and is not a Triton model repository"):
        export_triton(bundle, precious, force=True)
    assert (precious / "holiday.jpg").read_bytes() == b"not a bundle"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # no temporaries, no lock file left
    out = export_bundle(tiny_run, tmp_path / "b")
    assert export_bundle(tiny_run, out, force=True) == out  # a bundle is replaced
    read_manifest(out, verify=True)


def test_the_next_writer_sweeps_temporaries_of_dead_writers(tiny_run: Path, tmp_path: Path) -> None:
    from salad.export import export_bundle

    dead = _dead_pid()
    stale = [tmp_path / f".b.tmp-{dead}-0a1b2c3d", tmp_path / f".b.calibrate-{dead}-0a1b2c3d"]
    for folder in stale:
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"\0" * 1024)
    live = tmp_path / f".b.tmp-{os.getpid()}-0a1b2c3d"  # a writer still running: left alone
    live.mkdir()
    export_bundle(tiny_run, tmp_path / "b")
    assert not any(p.exists() for p in stale)
    assert live.is_dir()


def test_sigterm_during_export_leaves_no_temporary(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    proc = subprocess.Popen([str(SALAD_EXPORT), str(tiny_run), "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".b.tmp-*")):
            assert proc.poll() is None, "export finished before it could be stopped"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)  # how a service manager stops a process
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a temporary directory or lock was left behind"


def test_damaged_json_names_the_file_and_the_fix(bundle: Path, tiny_run: Path, tmp_path: Path) -> None:
    """A truncated manifest.json or run config.json is a one-line typed error naming that file, not a traceback."""
    import shutil

    from salad.errors import SaladError
    from salad.export.bundle import export_bundle

    broken = tmp_path / "bundle"
    shutil.copytree(bundle, broken)
    text = (broken / "manifest.json").read_text()
    (broken / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(BundleError, match=r"manifest\.json: not valid JSON"):
        read_manifest(broken)
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "config.json").write_bytes(b"\xff{")
    with pytest.raises(SaladError, match=r"config\.json: not valid JSON .*The run directory is damaged\."):
        export_bundle(run, tmp_path / "out")
