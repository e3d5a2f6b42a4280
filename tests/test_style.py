"""House style is checked with the tests, so a clean CI run means a ruff-clean tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.fail("ruff is missing: run scripts/setup.sh (the dev extra installs it)")
    done = subprocess.run([ruff, "check", "--output-format", "concise", str(REPO)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


#: docs/architecture.md §1: which stages each package may import (the core imports none). The CLI and the demo
#: are the core's entry points and may reach every stage; the torch reference runner imports
#: salad.train lazily, inside its activation.
ALLOWED_STAGES = {
    "salad": set(),
    "train": set(),
    "runtime": {"similarity"},  # `salad score --drift` only, imported lazily inside the command
    "export": {"train"},
    "calibration": {"runtime"},
    "similarity": set(),
}
ENTRY_POINTS = {"salad/cli.py", "salad/demo.py", "runtime/torch_runner.py"}


def _stage_imports(path: Path, package: str) -> set[str]:
    """The salad.<stage> packages a file imports, absolute or relative, at the top or inside a function."""
    import ast

    here = ["salad"] + ([] if package == "salad" else [package]) + list(path.relative_to(REPO / package).parent.parts)
    stages = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom):
            base = ".".join(here[: len(here) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "salad" and len(parts) > 1 and parts[1] in ALLOWED_STAGES:
                stages.add(parts[1])
    return stages


def test_imports_follow_the_design_tree() -> None:
    wrong = []
    for package, allowed in ALLOWED_STAGES.items():
        for path in sorted((REPO / package).rglob("*.py")):
            rel = str(path.relative_to(REPO))
            if rel in ENTRY_POINTS:
                continue
            extra = _stage_imports(path, package) - allowed - {package}
            if extra:
                wrong.append(f"{rel} imports salad.{', salad.'.join(sorted(extra))}")
    assert not wrong, "imports outside the tree of docs/architecture.md §1:\n" + "\n".join(wrong)
