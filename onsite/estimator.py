"""The similarity estimator directory: an ONNX graph image → 2-D latent point, its preprocessing, EQC and known points.

Runs under the `[runtime]` install (numpy, OpenCV, ONNX Runtime; no torch, no onnx). Written by
`salad similarity fit` (similarity/fit.py) with `salad.manifest.atomic_directory`; loading checks the
schema and the sha256 of every file it reads (docs/similarity.md §3).
"""

from __future__ import annotations

import math
import os
import zipfile
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
    for key in ("graph", "points"):
        entry = info[key]
        if not (isinstance(entry, dict) and isinstance(entry.get("file"), str) and entry["file"]
                and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64):
            raise BundleError(f"{path}: {key} is {short(entry)}; expected {{\"file\": NAME, \"sha256\": 64 hex digits}}. {DAMAGED}")
    dim = info["latent_dim"]
    if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 64:
        raise BundleError(f"{path}: latent_dim is {short(dim)}; expected a whole number from 1 to 64 (2 for ASAP). {DAMAGED}")
    if not isinstance(info["datasets"], dict) or not info["datasets"] or not all(isinstance(k, str) for k in info["datasets"]):
        raise BundleError(f"{path}: datasets is {short(info['datasets'])}; expected {{name: {{films, source}}}}. {DAMAGED}")
    eqc = info.get("eqc")
    if eqc is not None and (not isinstance(eqc, int | float) or isinstance(eqc, bool) or not math.isfinite(eqc)):
        raise BundleError(f"{path}: eqc is {short(eqc)}; expected a finite number. {DAMAGED}")
    preprocessing_of(info["preprocessing"], path)
    return info


#: The fix for every damaged estimator file.
DAMAGED = "The estimator is damaged: re-copy it or re-run `salad similarity fit`."


def short(value: Any) -> str:
    """A value for a message: its repr, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def preprocessing_of(data: Any, path: Path) -> PreprocessConfig:
    """The PreprocessConfig a file records; a BundleError naming the file when it is not one (wrong type, range, field)."""
    if not isinstance(data, dict):
        raise BundleError(f"{path}: preprocessing is {short(data)}; expected an object of preprocessing settings. {DAMAGED}")
    try:
        return PreprocessConfig.from_dict(data)
    except (DataError, TypeError, ValueError) as exc:
        raise BundleError(f"{path}: preprocessing {short(data)} is not usable ({exc}). {DAMAGED}") from None


def verified(root: Path, entry: dict[str, Any], what: str) -> Path:
    """The file an estimator entry {file, sha256} names, inside root and matching its sha256; a BundleError otherwise."""
    try:
        path = confined(root, str(entry.get("file")))
    except BundleError:
        raise BundleError(f"{root / INFO}: the {what}'s file {entry.get('file')!r} is not a file name inside the estimator. "
                          f"{DAMAGED}") from None
    if not path.is_file():
        raise BundleError(f"{path}: the estimator's {what} is missing. Re-run `salad similarity fit` or re-copy the estimator.")
    actual = sha256_file(path)
    if actual != entry.get("sha256"):
        raise BundleError(
            f"{path}: sha256 mismatch for the estimator's {what} (recorded {str(entry.get('sha256'))[:12]}…, file "
            f"{actual[:12]}…); it was modified or corrupted. Re-copy the estimator or re-run `salad similarity fit`."
        )
    return path


def load_points(path: Path, dim: int | None = None, names: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """An .npz of named (n, dim) finite float32 point arrays (no pickles); a BundleError naming the file otherwise.

    names: arrays the file must hold. dim: the latent dimension every array must have (any when None).
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            raw = {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise BundleError(f"{path}: not a readable .npz of latent points ({type(exc).__name__}: {exc}). {DAMAGED}") from None
    missing = [n for n in names if n not in raw]
    if missing or not raw:
        want = list(names) or "at least one collection"
        raise BundleError(f"{path}: holds {sorted(raw) or 'no arrays'}; expected points for {want}. {DAMAGED}")
    points = {}
    for name, arr in raw.items():
        if arr.dtype.kind not in "fiu" or arr.ndim != 2 or arr.shape[0] == 0 or (dim is not None and arr.shape[1] != dim):
            want = f"(n, {dim})" if dim is not None else "(n, d)"
            raise BundleError(f"{path}: points {name!r} are {arr.dtype} of shape {arr.shape}; expected real numbers of shape {want}, "
                              f"n ≥ 1. {DAMAGED}")
        values = arr.astype(np.float32)
        if not np.isfinite(values).all():
            raise BundleError(f"{path}: points {name!r} hold {int((~np.isfinite(values)).sum())} non-finite value(s). {DAMAGED}")
        points[name] = values
    return points


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
        try:
            self.session = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ONNX Runtime raises its own types (InvalidProtobuf, Fail, …) for a damaged graph
            raise BundleError(f"{graph}: ONNX Runtime cannot load the estimator graph ({' '.join(str(exc).split())[:300]}). "
                              f"{DAMAGED}") from None
        self.graph = graph
        self.preprocessing = preprocessing
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        s = preprocessing.size
        fixed = [d for d in inputs.get(INPUT, [])[1:] if isinstance(d, int)]
        if INPUT not in inputs or OUTPUT not in [o.name for o in self.session.get_outputs()] or fixed and fixed != [1, s, s]:
            raise BundleError(f"{graph}: the estimator graph takes {inputs} and gives {[o.name for o in self.session.get_outputs()]}; "
                              f"expected input {INPUT!r} [n, 1, {s}, {s}] (its preprocessing size) and output {OUTPUT!r}. {DAMAGED}")

    def embed(self, films: np.ndarray) -> np.ndarray:
        """(n, 1, S, S) preprocessed float32 films → (n, d) float32 points."""
        films = np.ascontiguousarray(films, dtype=np.float32)
        try:
            out = [self.session.run([OUTPUT], {INPUT: films[i : i + BATCH]})[0] for i in range(0, len(films), BATCH)]
        except Exception as exc:  # ONNX Runtime's own error types: the graph does not take what its preprocessing makes
            raise BundleError(f"{self.graph}: the estimator graph failed on films of shape {films.shape[1:]} "
                              f"({' '.join(str(exc).split())[:300]}). {DAMAGED}") from None
        if any(np.ndim(z) != 2 or len(z) != len(films[i * BATCH : (i + 1) * BATCH]) for i, z in enumerate(out)):
            raise BundleError(f"{self.graph}: the estimator graph returned {[np.shape(z) for z in out]}; expected (n, d) points. {DAMAGED}")
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
        points = load_points(verified(root, info["points"], "known datasets' points"), info["latent_dim"], list(info["datasets"]))
        return cls(root, info, points, graph)

    @property
    def sha256(self) -> str:
        """The identity of the estimator: its graph's sha256 (what a bundle records at attach)."""
        return str(self.info["graph"]["sha256"])

    @property
    def preprocessing(self) -> PreprocessConfig:
        return preprocessing_of(self.info["preprocessing"], self.root / INFO)

    def latent(self, threads: int | None = None) -> Latent:
        """An ONNX Runtime session of this estimator."""
        return Latent(self.graph, self.preprocessing, threads=threads)
