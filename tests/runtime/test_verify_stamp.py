"""Verification stamps (runtime/verified.py) on real bundles: a settled, unchanged bundle is not hashed again at start-up,
the scores are the same bytes, and any change to a graph's bytes, even with its mtime set back, is still refused."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

import salad
from salad.errors import BundleError
from salad.runtime import Scorer
from salad.runtime.cache import SETTLE_NS, file_state
from salad.runtime.verified import STAMP_FOLDER, open_verified

FILMS = sorted((Path(salad.__file__).parent / "sample" / "eval").rglob("*.jpeg"))[:6]
GRAPHS = [("model", "fp32")]


def settle(bundle: Path) -> None:
    """Wait until every file of `bundle` was last changed SETTLE_NS ago (a copy made by the test is brand new)."""
    newest = max(max(file_state(p)[3:]) for p in bundle.rglob("*") if p.is_file())
    time.sleep(max(0.0, (newest + SETTLE_NS - time.time_ns()) / 1e9) + 0.05)


def scores(bundle: Path, cache: Path) -> bytes:
    with Scorer.from_bundle(bundle, runtime="onnxruntime", max_batch=3, threads=1, cache_dir=cache) as scorer:
        results = scorer.score(FILMS)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    return np.array([[r.score, r.knn_angle, r.label] for r in results], dtype=np.float64).tobytes()


def test_a_settled_bundle_is_stamped_once_and_then_opened_without_hashing_to_the_same_scores(
    bundle_copy: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    settle(bundle_copy)
    assert open_verified(bundle_copy, GRAPHS, cache_dir=cache)[1] == "hashed"
    assert len(list((cache / STAMP_FOLDER).glob("*.stamp"))) == 1
    bundle, how = open_verified(bundle_copy, GRAPHS, cache_dir=cache)
    assert how == "stamped"
    assert bundle.manifest.to_dict() == open_verified(bundle_copy, GRAPHS, use_cache=False)[0].manifest.to_dict()
    assert scores(bundle_copy, tmp_path / "none") == scores(bundle_copy, cache)  # hashed start, then a stamped one


@pytest.mark.parametrize("change", ["flip a byte, mtime set back", "same bytes rewritten", "replaced by a copy"])
def test_a_graph_changed_after_a_stamped_start_is_hashed_again_and_a_tampered_one_refused(
    change: str, bundle_copy: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    settle(bundle_copy)
    scores(bundle_copy, cache)
    assert open_verified(bundle_copy, GRAPHS, cache_dir=cache)[1] == "stamped"
    graph = bundle_copy / "model.onnx"
    before = graph.stat()
    data = bytearray(graph.read_bytes())
    if change == "flip a byte, mtime set back":
        data[len(data) // 2] ^= 0x01
        with open(graph, "r+b") as fh:  # in place: same inode, same size
            fh.write(data)
        os.utime(graph, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert graph.stat().st_mtime_ns == before.st_mtime_ns and graph.stat().st_size == before.st_size
        with pytest.raises(BundleError, match="sha256 mismatch"):
            Scorer.from_bundle(bundle_copy, runtime="onnxruntime", cache_dir=cache)
        return
    if change == "same bytes rewritten":
        graph.write_bytes(bytes(data))
    else:
        copy = graph.with_name("copy.onnx")
        copy.write_bytes(bytes(data))
        os.replace(copy, graph)
    assert open_verified(bundle_copy, GRAPHS, cache_dir=cache)[1] == "hashed"  # the bytes are fine, but were hashed


def test_a_bundle_written_moments_ago_is_verified_but_not_stamped(bundle_copy: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # "moments ago" made a minute, so a loaded machine cannot let the file settle between the two opens
    monkeypatch.setattr(salad.runtime.cache, "SETTLE_NS", 60_000_000_000)
    cache = tmp_path / "cache"
    (bundle_copy / "model.onnx").write_bytes((bundle_copy / "model.onnx").read_bytes())  # changed just now
    assert [open_verified(bundle_copy, GRAPHS, cache_dir=cache)[1] for _ in range(2)] == ["hashed", "hashed"]
    assert not list((cache / STAMP_FOLDER).glob("*.stamp"))


def test_without_the_cache_every_start_hashes_and_nothing_is_written(bundle_copy: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    settle(bundle_copy)
    cache = tmp_path / "cache"
    assert [open_verified(bundle_copy, GRAPHS, cache_dir=cache, use_cache=False)[1] for _ in range(2)] == ["hashed"] * 2
    monkeypatch.setenv("SALAD_NO_CACHE", "1")
    assert [open_verified(bundle_copy, GRAPHS, cache_dir=cache)[1] for _ in range(2)] == ["hashed"] * 2
    assert not cache.exists() or not any(cache.rglob("*.stamp"))
