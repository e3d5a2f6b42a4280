"""The bundle as one object (docs/architecture.md §4): its root and manifest, every file name, path and default.

Every stage that reads a bundle (export validation, Triton export, calibration, parity, bench, the
Scorer) goes through `Bundle`, so the memory bank, the reference films, the threshold and the quiet
CPU ONNX Runtime session are each read or opened in one place. Files are opened only through
`Manifest.path_of`, so everything read is a file the manifest vouches for with a sha256.
Every change to an existing bundle (calibration, similarity attach) goes through `Bundle.edit`: the
one writer (lock, roll-forward of a left journal, staged files, one journal commit, cleanup).
Needs numpy only; onnxruntime is imported by `session` when asked for one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from salad.drift import STYLE_CALIBRATION_FILE
from salad.errors import BundleError
from salad.fsutil import pid_alive, sigterm_as_interrupt, sweep_stale, writer_lock
from salad.graphbank import bank_digest
from salad.manifest import (
    JOURNAL,
    MANIFEST,
    GraphSpec,
    Manifest,
    commit_journal,
    complete_journal,
    confined,
    is_bundle,
    pending_name,
    read_manifest,
)
from salad.scoring import DEFAULT_SCORE, SCORE_NAMES

__all__ = [
    "BANK_DATA_FILE", "BANK_FILE", "BANK_INPUT", "CHECKPOINT_FILE", "EMBEDDING", "ENCODER_FILE", "IMAGE_INPUT",
    "MANIFEST", "MODEL_FILE", "REFERENCE_FILE", "REFERENCE_KEYS", "SCORER_FILE", "Bundle", "BundleEdit", "Threshold",
    "quiet_session",
]

ENCODER_FILE = "encoder.onnx"
SCORER_FILE = "scorer.onnx"
MODEL_FILE = "model.onnx"
REFERENCE_FILE = "reference.npz"
CHECKPOINT_FILE = "checkpoint.pt"
BANK_FILE = "bank.npy"
#: External data of the bank initializer, shared by scorer.onnx and model.onnx (the bank is stored once).
BANK_DATA_FILE = "bank.data"
#: Graph input names: the preprocessed films, and the bank of a bundle exported with --bank-as-input.
IMAGE_INPUT = "image"
BANK_INPUT = "bank"
EMBEDDING = "embedding"
#: The arrays of reference.npz: preprocessed films, their PyTorch outputs, labels and file names.
REFERENCE_KEYS = ("image", EMBEDDING, *SCORE_NAMES, "label", "path")
#: What the drift checks calibrate on: the validation normals' operating scores and exposures (threshold.validation.drift).
DRIFT_KEYS = ("normal_scores", "normal_exposure")


def quiet_session(
    model: str | os.PathLike[str] | bytes, *, threads: int | None = None, optimize: bool = False,
) -> Any:
    """An ONNX Runtime CPU session that logs errors only: the one way checks and measurements open a graph.

    model: a file or serialised ModelProto bytes. threads: intra-op threads (default ONNX Runtime's
    own choice). optimize: ORT_ENABLE_ALL explicitly (what a console runs; the default level is
    the same, this only states it for timings).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: optimiser notes are not for a check's output
    if optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class Threshold:
    """The decision rule a bundle stores: films whose `score` output exceeds `value` are abnormal."""

    value: float
    score: str


class Bundle:
    """A bundle directory and its manifest: graph paths, bank, reference films, threshold, tolerances, sessions."""

    def __init__(self, root: str | os.PathLike[str], manifest: Manifest) -> None:
        self.root = Path(root)
        self.manifest = manifest

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], verify: bool = True, *, graphs: Sequence[tuple[str, str]] | None = None,
    ) -> Bundle:
        """Read and check BUNDLE/manifest.json (salad.manifest.read_manifest: schema, fields, digests, sha256s)."""
        return cls(path, read_manifest(path, verify=verify, graphs=graphs))

    @classmethod
    @contextmanager
    def edit(cls, path: str | os.PathLike[str]) -> Iterator[BundleEdit]:
        """The one way to change an existing bundle: `with Bundle.edit(root) as edit: edit.stage(...); edit.manifest...`.

        Holds the bundle's writer lock (real path) for the block with SIGTERM as Ctrl-C, first rolls
        forward a journal a killed writer left and sweeps dead writers' temporaries, then yields a
        `BundleEdit` on the verified bundle. Leaving the block normally commits what changed (staged
        files and the manifest) as one journal, unless `edit.commit()` already did; an error, Ctrl-C or
        SIGTERM before the commit point removes the staged files and leaves the bundle as it was.
        """
        root = Path(path)
        if not is_bundle(root):
            cls.open(root)  # the "not a bundle" error, before a lock file is made beside it
        with sigterm_as_interrupt(), writer_lock(root):
            complete_journal(root)  # a commit a killed writer left half-done is finished first
            sweep_stale(root.resolve())  # staging copies and pending files of dead writers
            _sweep_pending(root)
            edit = BundleEdit(cls.open(root, verify=True))
            try:
                yield edit
                if edit.changed:
                    edit.commit()
            except BaseException:
                edit.discard()
                raise

    def __repr__(self) -> str:
        return f"Bundle({str(self.root)!r})"

    # -- graphs ------------------------------------------------------------------------------------------

    def graph(self, name: str = "model", precision: str = "fp32") -> GraphSpec:
        """The spec of graph `name` at `precision`; a BundleError listing the bundle's graphs if absent."""
        return self.manifest.graph(name, precision)

    def graph_path(self, name: str = "model", precision: str = "fp32") -> Path:
        """The graph's ONNX file, confined to the bundle and listed with a sha256."""
        return self.manifest.path_of(self.root, self.graph(name, precision).file)

    def takes_bank(self, name: str = "model", precision: str = "fp32") -> bool:
        """Whether the graph takes the memory bank as input (a bundle exported with --bank-as-input)."""
        return any(t.name == BANK_INPUT for t in self.graph(name, precision).inputs)

    def static_feed(self, name: str = "model", precision: str = "fp32") -> dict[str, np.ndarray]:
        """Inputs other than the films that the graph needs: {"bank": rows} for a bank-as-input graph, else {}."""
        return {BANK_INPUT: self.load_bank()} if self.takes_bank(name, precision) else {}

    def precisions(self) -> list[str]:
        return self.manifest.precisions()

    def tolerances(self, precision: str) -> dict[str, float]:
        return self.manifest.tolerances(precision)

    def session(self, name: str = "model", precision: str = "fp32", *, threads: int | None = None) -> Any:
        """A quiet ONNX Runtime CPU session on the graph (see `quiet_session`)."""
        return quiet_session(self.graph_path(name, precision), threads=threads)

    # -- files ---------------------------------------------------------------------------------------------

    @property
    def bank_path(self) -> Path:
        return self.manifest.path_of(self.root, self.manifest.bank.file or BANK_FILE)

    @cached_property
    def _bank(self) -> np.ndarray:
        path = self.bank_path
        if not path.is_file():
            raise BundleError(f"{path}: missing; the graph takes the bank as an input. Re-copy or re-export the bundle.")
        try:
            bank = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BundleError(f"{path}: cannot read the memory bank the graph takes as input ({exc}).") from exc
        bank = np.ascontiguousarray(bank, dtype=np.float32)
        expected = self.manifest.bank.sha256
        if bank_digest(bank) != expected or bank.shape != (self.manifest.bank.rows, self.manifest.embedding_dim):
            raise BundleError(
                f"{path}: holds a memory bank of shape {list(bank.shape)} with sha256 {bank_digest(bank)[:12]}…; the manifest's bank "
                f"is {self.manifest.bank.rows} × {self.manifest.embedding_dim} with sha256 {expected[:12]}…. "
                "The bank file was swapped or edited; re-copy or re-export the bundle."
            )
        return bank

    def load_bank(self) -> np.ndarray:
        """bank.npy of a bank-as-input bundle as contiguous float32 [N, D] (read once, never unpickled; do not modify)."""
        return self._bank

    @property
    def reference_path(self) -> Path:
        return self.manifest.path_of(self.root, self.manifest.reference.file or REFERENCE_FILE)

    def load_reference(self, keys: Sequence[str] = REFERENCE_KEYS) -> dict[str, np.ndarray]:
        """reference.npz's arrays `keys` (films, PyTorch outputs, labels, names), never unpickling.

        A missing file or array is a BundleError naming it. "image" comes back contiguous float32.
        """
        path = self.reference_path
        if not path.is_file():
            raise BundleError(f"{path}: missing; the bundle's reference films are needed here. Re-copy or re-export the bundle.")
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [k for k in keys if k not in data.files]
                if missing:
                    raise BundleError(f"{path}: has no array(s) {missing}; expected {list(keys)}. Re-export the bundle.")
                arrays = {k: data[k] for k in keys}
        except (OSError, ValueError) as exc:
            raise BundleError(f"{path}: cannot read the reference films ({exc}).") from exc
        if "image" in arrays:
            arrays["image"] = np.ascontiguousarray(arrays["image"], dtype=np.float32)
        return arrays

    @property
    def has_checkpoint(self) -> bool:
        """Whether the bundle carries a verified checkpoint.pt (not a --slim bundle): the torch reference needs it."""
        return CHECKPOINT_FILE in self.manifest.files and (self.root / CHECKPOINT_FILE).is_file()

    @property
    def checkpoint_path(self) -> Path:
        return self.manifest.path_of(self.root, CHECKPOINT_FILE)

    # -- decisions -------------------------------------------------------------------------------------------

    @property
    def threshold(self) -> Threshold:
        """The stored threshold and the score it applies to; a BundleError if either is unusable."""
        block = self.manifest.threshold
        value = block.value
        score = block.score or DEFAULT_SCORE
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise BundleError(
                f"{self.root}: manifest threshold {block.to_json()!r} has no numeric 'value'; re-export the bundle."
            )
        if score not in SCORE_NAMES:
            raise BundleError(f"{self.root}: manifest threshold is for score {score!r}; expected one of {list(SCORE_NAMES)}.")
        return Threshold(float(value), str(score))

    def drift_calibration(self, key: str) -> np.ndarray | None:
        """Validation normals' values a drift check calibrates on ("normal_scores", "normal_exposure"), or None if not stored."""
        validation = self.manifest.threshold.validation
        drift = validation.drift if validation is not None else None
        values = getattr(drift, key) if drift is not None and key in DRIFT_KEYS else None
        if values is None:
            return None
        v = np.asarray(values, dtype=np.float64)
        if v.ndim != 1 or not np.isfinite(v).all():
            raise BundleError(f"{self.root}: manifest threshold.validation.drift.{key} is not a list of finite numbers; "
                              "re-export the bundle.")
        return v

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    # -- inspection ------------------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What `salad inspect` shows: graphs, precisions, threshold, bank, tolerances, calibration (JSON-ready)."""
        m = self.manifest
        graphs = {}
        for key, spec in m.graphs.items():
            path = self.root / spec.file
            graphs[key] = {
                "file": spec.file, "precision": spec.precision, "opset": spec.opset,
                "bytes": path.stat().st_size if path.is_file() else None,
                "inputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in spec.inputs],
                "outputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in spec.outputs],
                "external_data": list(spec.external_data),
            }
        bank = {k: v for k, v in m.bank.to_json().items() if k in ("rows", "dim", "form", "file", "sha256", "dropped_anomalous")}
        threshold = {k: v for k, v in m.threshold.to_json().items() if k in ("value", "score", "operating_point", "achieved")}
        return {
            "schema": "salad-inspect/1", "bundle": str(self.root), "schema_version": m.schema_version,
            "toolkit_version": m.toolkit_version, "created": m.created, "preprocessing": dict(m.preprocessing),
            "embedding_dim": m.embedding_dim, "k": m.k, "scores": m.scores.to_json(), "threshold": threshold,
            "bank": bank, "precisions": m.precisions(), "graphs": graphs,
            "tolerances": {p: m.tolerances(p) for p in m.precisions()},
            "calibration": dict(m.calibration), "reference": m.reference.to_json(),
            "files": sorted(m.listed_files()), "drift": self.drift_checks(),
        }

    def drift_checks(self) -> dict[str, Any]:
        """What `salad score --drift` can run here: calibration films per check (None: not stored), style attached or not."""
        counts = {key: (None if (v := self.drift_calibration(key)) is None else len(v)) for key in DRIFT_KEYS}
        return {"score_films": counts["normal_scores"], "exposure_films": counts["normal_exposure"],
                "style_attached": STYLE_CALIBRATION_FILE in self.manifest.files}


class BundleEdit:
    """One change to a bundle, made inside `Bundle.edit`: files staged under pending names and the new manifest.

    `bundle` is the bundle as it stood when the lock was taken (after `commit`, as committed); `manifest`
    is a private copy of its manifest to change (or replace). Nothing the bundle lists changes until
    `commit`, so a reader meanwhile sees the old bundle whole.
    """

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.manifest = Manifest.from_dict(json.loads(json.dumps(bundle.manifest.to_dict())))
        self.renames: list[tuple[str, str]] = []
        self.committed = False

    @property
    def root(self) -> Path:
        return self.bundle.root

    @property
    def changed(self) -> bool:
        """Whether there is anything to commit: staged files, or a manifest that differs from the bundle's."""
        return not self.committed and (bool(self.renames) or self.manifest.to_dict() != self.bundle.manifest.to_dict())

    def stage(self, final: str, content: bytes | os.PathLike[str]) -> Path:
        """Put `content` (bytes to write, or a file to move in) under the pending name of bundle file `final`; its path.

        The caller lists `final` in `manifest` (with the staged file's sha256); `commit` renames it into place.
        """
        if self.committed:
            raise BundleError(f"{self.root}: this edit was already committed; open another Bundle.edit for a further change.")
        pending = pending_name(final)
        target = confined(self.root, pending)
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            with open(target, "wb") as fh:
                fh.write(content)
                fh.flush()
                os.fsync(fh.fileno())
        else:
            os.replace(content, target)
        self.renames.append((pending, final))
        return target

    def commit(self) -> Bundle:
        """Commit the staged files and `manifest` in one journal (salad.journal.commit_journal); the bundle re-verified."""
        if self.committed:
            raise BundleError(f"{self.root}: this edit was already committed.")
        commit_journal(self.root, self.renames, self.manifest)
        self.committed = True
        self.bundle = Bundle.open(self.root, verify=True)
        return self.bundle

    def discard(self) -> None:
        """Remove the staged files of an edit that did not reach its commit point (no journal written)."""
        if self.committed or (self.root / JOURNAL).exists():
            return  # committed, or past the commit point: the journal's roll-forward needs them
        for pending, _ in self.renames:
            (self.root / pending).unlink(missing_ok=True)
        self.renames.clear()


def _sweep_pending(root: Path) -> None:
    """Remove staged `.NAME.pending-PID` files of dead writers in every folder of the bundle (sweep_stale looks two deep)."""
    for folder, _, names in os.walk(root):
        for name in names:
            if name.startswith(".") and ".pending-" in name:
                pid = name.rsplit("-", 1)[-1]
                if pid.isdigit() and not pid_alive(int(pid)):
                    (Path(folder) / name).unlink(missing_ok=True)
