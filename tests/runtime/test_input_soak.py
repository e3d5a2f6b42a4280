"""benchmarks/soak.py's core on a few hundred real films: file descriptors do not grow, the report is complete."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def load_soak() -> ModuleType:
    """benchmarks/ is not a package: load soak.py from its path."""
    spec = importlib.util.spec_from_file_location("salad_soak", REPO / "benchmarks" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_short_soak_keeps_file_descriptors_flat(tiny_bundle: Path, tmp_path: Path) -> None:
    soak = load_soak()
    films = soak.sample_films()
    assert len(films) == 280  # every shipped film, decoded from disk on every pass
    report = soak.soak(tiny_bundle, films, 320, batch=16, every=32, progress=False)
    assert report["n"] == 320 and report["failed"] == 0 and len(report["samples"]) == 11
    assert report["fds"]["max"] == report["fds"]["first"] == report["fds"]["last"], report["samples"]
    assert report["rss_mb"]["first"] > 0 and report["films_per_s"] > 0
    json.dumps(report, allow_nan=False)
    page = soak.to_markdown(report)
    assert "open fds first / last" in page and "RSS slope over the second half" in page
