"""Where built engines and timing caches live on disk, so a console pays the build cost once.

Order: an explicit `cache_dir`, then $SALAD_CACHE_DIR, then $XDG_CACHE_HOME/salad-edge, then
~/.cache/salad-edge. Files are written atomically (temp file, then rename) so that two processes
building the same engine never leave half a file behind.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from salad import fsutil
from salad.errors import SaladError

ENV_VAR = "SALAD_CACHE_DIR"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder (created if needed); an error naming it if it cannot be created."""
    if cache_dir is not None:
        root = Path(cache_dir)
    elif os.environ.get(ENV_VAR):
        root = Path(os.environ[ENV_VAR])
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        root = base / "salad-edge"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SaladError(f"{root}: cannot create the engine cache folder ({exc}). Pass --cache-dir or set ${ENV_VAR}.") from exc
    return root


def slug(text: str) -> str:
    """A file-name-safe version of a GPU or library name: "NVIDIA H100 80GB HBM3" → "NVIDIA-H100-80GB-HBM3"."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-") or "unknown"


def write_atomic(path: Path, data: bytes | bytearray | memoryview) -> None:
    """Write `data` to `path` in the cache (its folder made first) with salad.fsutil.write_atomic: old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fsutil.write_atomic(path, bytes(data))
