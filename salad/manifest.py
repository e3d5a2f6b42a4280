"""The bundle manifest (docs/architecture.md §4): the one schema that export writes and every runtime reads.

A bundle is a directory a console can verify and run without the training code. `read_manifest` is
how every reader opens one: it waits for (never applies) a commit journal, then parses and verifies
the manifest (salad/manifest_model.py). The schema's constants and field rules (salad/schema.py), the
typed manifest (salad/manifest_model.py) and the atomic writes (salad/journal.py) are re-exported
here, where callers look.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from salad.errors import BundleError
from salad.journal import (
    atomic_directory,
    check_journal,
    commit_journal,
    complete_journal,
    is_bundle,
    pending_name,
    wait_for_commit,
)
from salad.manifest_model import (
    GraphSpec,
    Manifest,
    TensorSpec,
    current_manifest,
    load_with_bytes,
    parse_manifest,
    sha256_file,
    verify_bundle,
    verify_files,
)
from salad.schema import (
    DEFAULT_TOLERANCES,
    JOURNAL,
    MANIFEST,
    PRECISIONS,
    PROTECTED_FIELDS,
    SCHEMA_VERSION,
    confined,
    manifest_problems,
    path_problem,
)

__all__ = [
    "DEFAULT_TOLERANCES", "JOURNAL", "MANIFEST", "PRECISIONS", "PROTECTED_FIELDS", "SCHEMA_VERSION", "GraphSpec",
    "Manifest", "TensorSpec", "atomic_directory", "check_journal", "commit_journal", "complete_journal", "confined",
    "current_manifest", "is_bundle", "manifest_problems", "parse_manifest", "path_problem", "pending_name", "read_manifest",
    "sha256_file", "verify_files",
]


def read_manifest(
    bundle: str | os.PathLike[str], verify: bool = True, *, graphs: Sequence[tuple[str, str]] | None = None,
) -> Manifest:
    """Read BUNDLE/manifest.json: schema, field types/ranges, paths, integrity digests and (by default) every listed file's sha256.

    graphs: verify only the files these (name, precision) graphs read (e.g. [("model", "fp16")] for a
    console's cold start) instead of every file; the manifest itself is always fully checked. Verifying
    also checks that the bank each scoring graph uses is the manifest's. Read-only: a commit journal is
    waited for while a live writer finishes it, and otherwise refused (salad.journal.wait_for_commit), never applied.
    """
    root = Path(bundle)
    wait_for_commit(root)
    manifest, data = load_with_bytes(root)
    if not verify:
        return manifest
    try:
        verify_bundle(root, manifest, graphs)
    except BundleError:
        # A writer may have committed between our read of manifest.json and the hashes: read once more.
        if not (root / JOURNAL).exists() and (root / MANIFEST).read_bytes() == data:
            raise
        wait_for_commit(root)
        manifest, _ = load_with_bytes(root)
        verify_bundle(root, manifest, graphs)
    return manifest
