"""One writer lock per real path: two writers that reach one bundle through different names exclude each other."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from salad.manifest import read_manifest

SALAD = Path(sys.executable).parent / "salad"

#: A real writer in its own process: holds the bundle's lock (through the name it is given) until killed.
_HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from salad.fsutil import writer_lock

    with writer_lock(sys.argv[1]):
        Path(sys.argv[2]).write_text("held")
        time.sleep(600)
    """
)


def _hold(path: Path, flag: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(path), str(flag)], text=True, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the lock holder did not start"
        time.sleep(0.02)
    return proc


@pytest.fixture
def names(bundle: Path, tmp_path: Path) -> Iterator[dict[str, Path]]:
    """One real bundle and two aliases of it: through a symlinked parent folder, and a symlink to the bundle itself."""
    real = tmp_path / "real"
    real.mkdir()
    shutil.copytree(bundle, real / "bundle")
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    (tmp_path / "link").symlink_to(real / "bundle", target_is_directory=True)
    yield {"real": real / "bundle", "parent-alias": tmp_path / "alias" / "bundle", "bundle-link": tmp_path / "link"}


@pytest.mark.parametrize(("held_as", "written_as"), [("real", "parent-alias"), ("bundle-link", "real"), ("parent-alias", "bundle-link")])
def test_a_writer_through_an_alias_is_refused_while_another_holds_the_bundle(
    names: dict[str, Path], tmp_path: Path, held_as: str, written_as: str,
) -> None:
    before = {p.name: p.read_bytes() for p in names["real"].iterdir()}
    holder = _hold(names[held_as], tmp_path / "flag")
    try:
        done = subprocess.run(
            [str(SALAD), "calibrate", str(names[written_as]), "--precision", "fp16"], capture_output=True, text=True,
            timeout=600, env={**os.environ, "SALAD_LOCK_TIMEOUT_S": "0"},
        )
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 1, f"a second writer ran through {written_as} while {held_as} held the bundle:\n{done.stderr[-2000:]}"
    assert f"another salad writer (pid {holder.pid}) is changing this bundle" in done.stderr
    assert "Traceback" not in done.stderr
    assert {p.name: p.read_bytes() for p in names["real"].iterdir()} == before, "the refused writer changed the bundle"
    assert not list(tmp_path.rglob(".bundle.calibrate-*")), "the refused writer staged a copy"
    read_manifest(names["real"], verify=True)


def test_one_lock_file_for_every_name_of_a_folder(names: dict[str, Path]) -> None:
    from salad.fsutil import lock_path

    assert {lock_path(p) for p in names.values()} == {names["real"].parent.resolve() / ".bundle.lock"}
