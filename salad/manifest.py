"""The bundle manifest (DESIGN §3): the one schema that export writes and every runtime reads.

A bundle is a directory a console can verify and run without the training code. Loading checks the
schema version first, then the sha256 of every file the manifest lists, and names any mismatch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from salad.errors import BundleError
from salad.preprocess import PreprocessConfig

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")

#: Default parity tolerances per precision (DESIGN §6). fp16/int8 are set from measurements by calibration.
DEFAULT_TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {
        "max_abs_score_diff": 1e-5,
        "p99_abs_score_diff": 1e-5,
        "max_abs_knn_angle_diff": 1e-5,
        "embedding_cosine_min": 0.99999,
        "label_agreement": 1.0,
        "spearman": 0.9999,
        "delta_auc": 1e-4,
        "delta_auprc": 1e-4,
    },
}


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Streaming sha256 of a file (banks can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class TensorSpec:
    """One graph input or output: name, numpy dtype name, shape with "batch" for the dynamic axis."""

    name: str
    dtype: str
    shape: list[int | str]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(name=d["name"], dtype=d["dtype"], shape=list(d["shape"]))


@dataclass
class GraphSpec:
    """One ONNX file of the bundle and its contract."""

    file: str
    sha256: str
    precision: str
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    external_data: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # e.g. calibration method, layers left in float

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphSpec:
        return cls(
            file=d["file"], sha256=d["sha256"], precision=d["precision"], opset=int(d["opset"]),
            inputs=[TensorSpec.from_dict(t) for t in d["inputs"]],
            outputs=[TensorSpec.from_dict(t) for t in d["outputs"]],
            external_data=list(d.get("external_data", [])), details=dict(d.get("details", {})),
        )


@dataclass
class Manifest:
    """manifest.json as a typed object; `graphs` is keyed "model", "encoder", "scorer", "model.fp16", …"""

    toolkit_version: str
    created: str
    source: dict[str, Any]
    preprocessing: dict[str, Any]
    embedding_dim: int
    bank: dict[str, Any]
    k: int
    scores: dict[str, Any]
    threshold: dict[str, Any]
    graphs: dict[str, GraphSpec]
    files: dict[str, str]  # other files (reference.npz, checkpoint.pt, bank.npy) → sha256
    parity: dict[str, dict[str, float]]
    calibration: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    #: How reference.npz was chosen (file, images, n_normal/n_abnormal, source, list_sha256 of the file names).
    reference: dict[str, Any] = field(default_factory=dict)

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.preprocessing)

    def graph_key(self, name: str, precision: str = "fp32") -> str:
        return name if precision == "fp32" else f"{name}.{precision}"

    def graph(self, name: str, precision: str = "fp32") -> GraphSpec:
        """The spec of graph `name` at `precision`, or a BundleError listing what the bundle has."""
        key = self.graph_key(name, precision)
        if key not in self.graphs:
            have = sorted(self.graphs)
            hint = f" Add it with `salad calibrate BUNDLE --precision {precision}`." if precision != "fp32" else ""
            raise BundleError(f"bundle has no {name!r} graph at precision {precision!r} (has {have}).{hint}")
        return self.graphs[key]

    def precisions(self) -> list[str]:
        return [p for p in PRECISIONS if self.graph_key("model", p) in self.graphs]

    def tolerances(self, precision: str) -> dict[str, float]:
        return dict(self.parity.get(precision) or DEFAULT_TOLERANCES.get(precision) or DEFAULT_TOLERANCES["fp32"])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["graphs"] = {k: asdict(v) for k, v in self.graphs.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        known = {
            "toolkit_version", "created", "source", "preprocessing", "embedding_dim", "bank", "k", "scores",
            "threshold", "files", "parity", "calibration", "schema_version", "reference",
        }
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["graphs"] = {k: GraphSpec.from_dict(v) for k, v in d["graphs"].items()}
        return cls(**kwargs)

    def write(self, bundle: Path) -> None:
        (bundle / MANIFEST).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    def listed_files(self) -> dict[str, str]:
        """Every file the manifest vouches for → its sha256 (graphs, their external data, other files)."""
        out = dict(self.files)
        for g in self.graphs.values():
            out[g.file] = g.sha256
        return out


def read_manifest(bundle: str | os.PathLike[str], verify: bool = True) -> Manifest:
    """Read BUNDLE/manifest.json, check the schema version and (by default) every listed file's sha256."""
    root = Path(bundle)
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{root}: not a bundle (no {MANIFEST}). Create one with `salad-export RUN --out {root}`.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc}).") from exc
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{path}: bundle schema version {version!r}, this salad-edge reads version {SCHEMA_VERSION}. "
            "Re-export the bundle with this toolkit version (salad-export RUN --out BUNDLE)."
        )
    try:
        manifest = Manifest.from_dict(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path}: manifest is missing or has malformed field {exc}.") from exc
    if verify:
        verify_files(root, manifest)
    return manifest


def verify_files(root: Path, manifest: Manifest) -> None:
    """Check every listed file exists and matches its sha256; report all problems at once."""
    problems = []
    for name, digest in sorted(manifest.listed_files().items()):
        f = root / name
        if not f.is_file():
            problems.append(f"{f}: missing")
            continue
        actual = sha256_file(f)
        if actual != digest:
            problems.append(f"{f}: sha256 mismatch (manifest {digest[:12]}…, file {actual[:12]}…); the file was modified or corrupted")
    if problems:
        raise BundleError("bundle failed verification:\n  " + "\n  ".join(problems) + "\nRe-export or re-copy the bundle.")


@contextmanager
def atomic_directory(target: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `target`, on error it is removed.

    The bundle therefore appears whole or not at all, even if validation fails half-way.
    """
    target = Path(target)
    if target.exists() and not force:
        raise BundleError(f"{target}: already exists. Pass --force to replace it, or choose another --out.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
