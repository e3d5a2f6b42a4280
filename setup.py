"""The wheel's packages, found by construction: every folder under each stage folder, installed under its salad.* name.

Everything else about the distribution is in pyproject.toml. This file exists only because setuptools'
declarative discovery (`[tool.setuptools.packages.find]`) cannot install a folder's packages under
another name (train/ → salad.train), and a hand-written list once left subpackages out of the wheel.
Folders without __init__.py (salad/sample, salad/schemas) are found too: they hold package data.
"""

from __future__ import annotations

from setuptools import find_namespace_packages, setup

#: Stage folder (and the CLI layer's) → the name it is installed under (docs/architecture.md §1; `runtime/` is `salad.runtime`, …).
STAGES = {
    "salad": "salad",
    "train": "salad.train",
    "export": "salad.export",
    "calibration": "salad.calibration",
    "runtime": "salad.runtime",
    "serve": "salad.serve",
    "similarity": "salad.similarity",
    "onsite": "salad.onsite",  # the site's side: drift guard, spot check, choosing a bundle (numpy + ONNX Runtime)
    "cli": "salad.cli",  # the CLI layer: the `salad` command and the demo, which import every stage
}


def stage_packages() -> list[str]:
    """Each stage and every folder below it (bytecode caches aside), under its salad.* name."""
    found = []
    for folder, root in STAGES.items():
        found.append(root)
        found += [f"{root}.{sub}" for sub in find_namespace_packages(where=folder, exclude=["__pycache__", "*.__pycache__"])]
    return found


setup(package_dir={root: folder for folder, root in STAGES.items()}, packages=stage_packages())
