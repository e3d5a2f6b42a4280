"""The opened Bundle is what stages pass (issue 27): one reader of manifest.json, no (root, manifest) pairs."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: The package folders mapped into the salad namespace (tests/test_style.py's ALLOWED_STAGES).
PACKAGES = ("salad", "train", "runtime", "export", "calibration", "serve", "similarity", "onsite", "cli")
#: The stage folders: the core below them (salad/manifest*.py, salad/journal.py) builds the Bundle and cannot take one.
STAGES = tuple(p for p in PACKAGES if p != "salad")
#: Where read_manifest may be called: its definition and Bundle.open.
READERS = {"salad/manifest.py", "salad/bundle.py"}
#: Parameter names that hold a bundle's folder when annotated as a path.
ROOT_NAMES = {"root", "bundle", "path"}


def _sources(folders: tuple[str, ...]) -> list[Path]:
    return sorted(f for folder in folders if (REPO / folder).is_dir() for f in (REPO / folder).rglob("*.py"))


def _calls_outside(names: set[str], allowed: set[str]) -> list[str]:
    """`file:line name(` for every call of one of `names` in the packages, outside the `allowed` files."""
    offenders = []
    for path in _sources(PACKAGES):
        rel = path.relative_to(REPO).as_posix()
        if rel in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
                if name in names:
                    offenders.append(f"{rel}:{node.lineno} {name}(")
    return offenders


def test_read_manifest_is_called_only_by_bundle_open() -> None:
    offenders = _calls_outside({"read_manifest"}, READERS)
    assert not offenders, "read_manifest( outside Bundle.open; use salad.bundle.Bundle.open(...):\n  " + "\n  ".join(offenders)


def test_no_stage_function_takes_a_bundle_folder_and_its_manifest() -> None:
    offenders = []
    for path in _sources(STAGES):
        rel = path.relative_to(REPO).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
            names = {a.arg: ast.unparse(a.annotation) if a.annotation else "" for a in args}
            folders = [n for n in ROOT_NAMES & names.keys() if "Path" in names[n]]
            if "manifest" in names and folders:
                offenders.append(f"{rel}:{node.lineno} {node.name}({', '.join(names)})")
    assert not offenders, "(root, manifest) signatures; take a salad.bundle.Bundle instead:\n  " + "\n  ".join(offenders)


#: The one writer of an existing bundle (Bundle.edit) and the journal below it: the only callers of the commit steps.
WRITERS = {"salad/journal.py", "salad/bundle.py"}
#: The steps of a commit: no stage stages, commits or rolls forward a change on its own.
COMMIT_STEPS = {"commit_journal", "complete_journal", "pending_name", "check_journal"}


def test_only_bundle_edit_commits_a_change_to_a_bundle() -> None:
    offenders = _calls_outside(COMMIT_STEPS, WRITERS)
    assert not offenders, "a bundle change committed outside Bundle.edit; use `with Bundle.edit(root) as edit:`:\n  " + "\n  ".join(
        offenders)
