"""The wheel a console installs: every package of every stage folder under its salad.* name, the package data, a licence.

Built here from a copy of the tree with this environment's setuptools (no network, no build isolation);
scripts/check-wheel.sh installs such a wheel into clean environments and runs the console's commands.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: Stage folders and the CLI layer → the names a console imports them by (docs/architecture.md §1).
STAGES = {"salad": "salad", "train": "salad.train", "export": "salad.export", "calibration": "salad.calibration",
          "runtime": "salad.runtime", "serve": "salad.serve", "similarity": "salad.similarity", "onsite": "salad.onsite",
          "cli": "salad.cli"}
#: Package data: what the commands open at run time besides modules (sample films, JSON Schemas, the typing marker).
DATA = ("salad/py.typed", "salad/schemas", "salad/sample")
_JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache", ".pytest_cache")


def _installed_name(path: Path) -> str:
    """Where a file of the tree lies in the wheel: train/x/y.py → salad/train/x/y.py."""
    rel = path.relative_to(REPO)
    return "/".join([*STAGES[rel.parts[0]].split("."), *rel.parts[1:]])


def build_wheel(source: Path, out: Path) -> tuple[Path, str]:
    """The wheel of the project at `source` (built in a copy, so the tree gets no build/ or egg-info), and pip's log."""
    copy = out / "src"
    copy.mkdir(parents=True)
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        if (source / name).is_file():
            shutil.copy2(source / name, copy / name)
    for folder in STAGES:
        shutil.copytree(source / folder, copy / folder, ignore=_JUNK)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out / "dist"), str(copy)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, f"the wheel did not build:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    (wheel,) = (out / "dist").glob("salad_edge-*.whl")
    return wheel, done.stdout + done.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.fail(f"setuptools {setuptools.__version__} < 77 (pyproject.toml's build requirement): run scripts/setup.sh")
    return build_wheel(REPO, tmp_path_factory.mktemp("wheel"))


def test_every_package_of_every_stage_folder_is_in_the_wheel(wheel: tuple[Path, str]) -> None:
    names = set(zipfile.ZipFile(wheel[0]).namelist())
    packages = [d for folder in STAGES for d in [REPO / folder, *(REPO / folder).rglob("*")] if (d / "__init__.py").is_file()]
    assert {"runtime/parity", "runtime/bench", "export/triton", "cli"} <= {str(d.relative_to(REPO)) for d in packages}
    missing = [_installed_name(f) for d in packages for f in sorted(d.glob("*.py")) if _installed_name(f) not in names]
    assert not missing, f"modules of the tree that the wheel lacks (a console install would fail to import them): {missing}"
    loose = [str(f.relative_to(REPO)) for folder in STAGES for f in (REPO / folder).rglob("*.py")
             if "__pycache__" not in f.parts and _installed_name(f) not in names]
    assert not loose, f"modules outside any package (no __init__.py) left out of the wheel: {loose}"


def test_the_package_data_and_the_licence_are_in_the_wheel(wheel: tuple[Path, str]) -> None:
    archive = zipfile.ZipFile(wheel[0])
    names = set(archive.namelist())
    expected = [p for d in DATA for p in ([REPO / d] if (REPO / d).is_file() else sorted((REPO / d).rglob("*"))) if p.is_file()]
    assert len(expected) > 250, f"sample films or schemas not found in the tree: {len(expected)} files"
    missing = [_installed_name(p) for p in expected if _installed_name(p) not in names]
    assert not missing, f"package data the commands open at run time, missing from the wheel: {missing[:10]} ({len(missing)})"
    metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    licence = archive.read(next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))).decode()
    assert licence == (REPO / "LICENSE").read_text() and "Apache License" in licence and "Version 2.0, January 2004" in licence


def test_the_build_gives_no_setuptools_warning(wheel: tuple[Path, str]) -> None:
    warned = [line.strip() for line in wheel[1].splitlines()
              if any(w in line for w in ("Deprecat", "deprecat", "would be ignored", "absent from the `packages`"))]
    assert not warned, "setuptools warned while building the wheel:\n" + "\n".join(warned)
