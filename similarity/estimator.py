"""The similarity estimator directory: an ONNX graph image → 2-D latent point, its preprocessing, EQC and known points.

Runs under the `[runtime]` install (numpy, OpenCV, ONNX Runtime; no torch, no onnx). Written by
`salad similarity fit` (similarity/fit.py) with `salad.manifest.atomic_directory`; loading checks the
schema and the sha256 of every file it reads (docs/similarity.md §3).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from salad.errors import BackendUnavailableError, BundleError, DataError
from salad.fsutil import parse_json
from salad.imageio import read_image
from salad.manifest import confined, sha256_file
from salad.preprocess import PreprocessConfig, preprocess
from salad.progress import progress

SCHEMA = "salad-similarity-estimator/1"
INFO = "estimator.json"
GRAPH = "estimator.onnx"
POINTS = "points.npz"
INPUT = "image"
OUTPUT = "z"
#: Films per ONNX Runtime call.
BATCH = 256


def is_estimator(path: Path) -> bool:
    """A directory `--force` may replace as an estimator: it has estimator.json."""
    return (Path(path) / INFO).is_file()


def read_info(root: str | os.PathLike[str]) -> dict[str, Any]:
    """root/estimator.json, checked for the schema and the fields a reader needs."""
    path = Path(root) / INFO
    if not path.is_file():
        raise BundleError(f"{root}: not a similarity estimator (no {INFO}). Create one with `salad similarity fit`.")
    info = parse_json(path.read_bytes(), path, BundleError, "Re-run `salad similarity fit`.")
    if not isinstance(info, dict) or info.get("schema") != SCHEMA:
        got = info.get("schema") if isinstance(info, dict) else None
        raise BundleError(f"{path}: schema {got!r}; this salad-edge reads {SCHEMA!r}. Re-run `salad similarity fit`.")
    for key in ("preprocessing", "graph", "points", "datasets", "latent_dim"):
        if key not in info:
            raise BundleError(f"{path}: missing field {key!r}; the estimator is damaged. Re-run `salad similarity fit`.")
    return info


def verified(root: Path, entry: dict[str, Any], what: str) -> Path:
    """The file an estimator entry {file, sha256} names, inside root and matching its sha256; a BundleError otherwise."""
    path = confined(root, str(entry.get("file")))
    if not path.is_file():
        raise BundleError(f"{path}: the estimator's {what} is missing. Re-run `salad similarity fit` or re-copy the estimator.")
    actual = sha256_file(path)
    if actual != entry.get("sha256"):
        raise BundleError(
            f"{path}: sha256 mismatch for the estimator's {what} (recorded {str(entry.get('sha256'))[:12]}…, file "
            f"{actual[:12]}…); it was modified or corrupted. Re-copy the estimator or re-run `salad similarity fit`."
        )
    return path


def load_points(path: Path) -> dict[str, np.ndarray]:
    """An .npz of named (n, 2) float32 point arrays (no pickles)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: np.asarray(data[k], dtype=np.float32) for k in data.files}


class Latent:
    """An ONNX Runtime session of an estimator graph: preprocessed films → latent points."""

    def __init__(self, graph: Path, preprocessing: PreprocessConfig, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError(
                "onnxruntime is not installed; the similarity estimator runs on it. Install `pip install 'salad-edge[runtime]'`."
            ) from exc
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
        self.preprocessing = preprocessing

    def embed(self, films: np.ndarray) -> np.ndarray:
        """(n, 1, S, S) preprocessed float32 films → (n, d) float32 points."""
        films = np.ascontiguousarray(films, dtype=np.float32)
        out = [self.session.run([OUTPUT], {INPUT: films[i : i + BATCH]})[0] for i in range(0, len(films), BATCH)]
        z = np.concatenate(out).astype(np.float32) if out else np.zeros((0, 2), np.float32)
        if not np.isfinite(z).all():
            raise DataError(f"the estimator returned non-finite latent points for {int((~np.isfinite(z)).any(1).sum())} film(s).")
        return z

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Display-ready grey films (H×W in [0, 1]) → points."""
        if not images:
            return np.zeros((0, 2), np.float32)
        return self.embed(np.stack([preprocess(img, self.preprocessing) for img in images]))

    def embed_files(self, paths: Sequence[Path], desc: str = "embedding films") -> np.ndarray:
        """Films on disk → points; a DataError naming the file if one cannot be read."""
        films = [preprocess(read_image(p), self.preprocessing) for p in progress(paths, desc=desc, unit="img")]
        if not films:
            return np.zeros((0, 2), np.float32)
        return self.embed(np.stack(films))


@dataclass
class Estimator:
    """A loaded, verified estimator directory."""

    root: Path
    info: dict[str, Any]
    points: dict[str, np.ndarray]
    graph: Path

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> Estimator:
        """Read and verify an estimator directory (schema, sha256 of the graph and the points)."""
        root = Path(root)
        info = read_info(root)
        graph = verified(root, info["graph"], "graph")
        points = load_points(verified(root, info["points"], "known datasets' points"))
        return cls(root, info, points, graph)

    @property
    def sha256(self) -> str:
        """The identity of the estimator: its graph's sha256 (what a bundle records at attach)."""
        return str(self.info["graph"]["sha256"])

    @property
    def preprocessing(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.info["preprocessing"])

    def latent(self, threads: int | None = None) -> Latent:
        """An ONNX Runtime session of this estimator."""
        return Latent(self.graph, self.preprocessing, threads=threads)
