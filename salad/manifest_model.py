"""The manifest as a typed object (docs/architecture.md §4): its dataclasses, parsing, integrity digests and file checks.

Parsing checks the schema version first, then every field's type and range, that every path stays
inside the bundle and is a listed file, and the integrity digest of the decision-making fields and of
every file's checksum; verifying checks the sha256 of every listed file and that the bank each scoring
graph uses is the manifest's (read by salad/graphbank.py). Below the commit journal (salad/journal.py), which
parses the manifests it carries with this module; readers go through salad/manifest.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from salad.errors import BundleError
from salad.fsutil import (
    parse_json,
    write_atomic,
)
from salad.graphbank import BANK_INPUT, bank_digest, carried_bank
from salad.manifest_blocks import Bank, Reference, Scores, Threshold
from salad.preprocess import PreprocessConfig
from salad.schema import (
    CHECKSUMS,
    DEFAULT_TOLERANCES,
    MANIFEST,
    PRECISIONS,
    PROTECTED_FIELDS,
    SCHEMA_VERSION,
    confined,
    manifest_problems,
)

__all__ = [
    "GraphSpec", "Manifest", "TensorSpec", "current_manifest", "parse_manifest", "sha256_file", "verify_files",
]



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
    bank: Bank
    k: int
    scores: Scores
    threshold: Threshold
    graphs: dict[str, GraphSpec]
    files: dict[str, str]  # other files (reference.npz, checkpoint.pt, bank.npy) → sha256
    parity: dict[str, dict[str, float]]
    calibration: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    #: How reference.npz was chosen (file, images, n_normal/n_abnormal, source, list_sha256 of the file names).
    reference: Reference = field(default_factory=Reference)
    #: {"algorithm": "sha256", "fields": {name: digest}} of PROTECTED_FIELDS, recorded by `write`.
    integrity: dict[str, Any] = field(default_factory=dict)

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
        """The manifest as JSON-ready objects, in the file's key order (the typed blocks through their to_json)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update({name: block.to_json() for name, block in _blocks(self).items()})
        d["graphs"] = {k: asdict(v) for k, v in self.graphs.items()}
        return json.loads(json.dumps(d))  # a deep copy: changing it never changes this manifest

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        known = {
            "toolkit_version", "created", "source", "preprocessing", "embedding_dim", "bank", "k", "scores",
            "threshold", "files", "parity", "calibration", "schema_version", "reference", "integrity",
        }
        kwargs = {k: v for k, v in d.items() if k in known}
        for name, block in BLOCKS.items():
            if name in kwargs:
                kwargs[name] = block.from_json(kwargs[name])
        kwargs["graphs"] = {k: GraphSpec.from_dict(v) for k, v in d["graphs"].items()}
        return cls(**kwargs)

    def field_digests(self) -> dict[str, str]:
        """sha256 of each decision-making field's canonical JSON (what `integrity.fields` records)."""
        d = self.to_dict()
        return {name: _digest(d[name]) for name in PROTECTED_FIELDS}

    def checksum_digests(self) -> dict[str, str]:
        """sha256 of every file entry a reader trusts, by role (what `integrity.checksums` records).

        "graphs['model']": the graph's file, sha256 and external data; "files['bank.npy']": that file's sha256.
        """
        out = {f"graphs[{k!r}]": _digest([g.file, g.sha256, list(g.external_data)]) for k, g in self.graphs.items()}
        out.update({f"files[{name!r}]": _digest([name, digest]) for name, digest in self.files.items()})
        return out

    def to_json(self) -> str:
        """manifest.json's text, with a fresh integrity digest of the decision-making fields."""
        self.integrity = {"algorithm": "sha256", "fields": self.field_digests(), CHECKSUMS: self.checksum_digests()}
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def write(self, bundle: Path) -> None:
        """Write BUNDLE/manifest.json atomically, recording the digest: the one deliberate way to change protected fields."""
        write_atomic(Path(bundle) / MANIFEST, self.to_json().encode("utf-8"))

    def path_of(self, root: str | os.PathLike[str], name: str) -> Path:
        """root/name for a file this manifest lists with a sha256, confined to the bundle; a BundleError otherwise.

        Readers open bundle files only through this, so every file read is one that verification covers.
        """
        listed = self.listed_files()
        if name not in listed:
            raise BundleError(
                f"{Path(root) / MANIFEST}: {name!r} is not one of the files the manifest lists with a sha256 "
                f"({sorted(listed)}); refusing to read an unverified file. Re-export the bundle."
            )
        return confined(root, name)

    def graph_files(self, name: str, precision: str = "fp32") -> list[str]:
        """The files that running graph `name` at `precision` reads: its ONNX file, external data, and bank.npy if it takes the bank."""
        spec = self.graph(name, precision)
        out = [spec.file, *spec.external_data]
        if any(t.name == BANK_INPUT for t in spec.inputs) and self.bank.file:
            out.append(self.bank.file)
        return out

    def listed_files(self) -> dict[str, str]:
        """Every file the manifest vouches for → its sha256 (graphs, their external data, other files)."""
        out = dict(self.files)
        for g in self.graphs.values():
            out[g.file] = g.sha256
        return out


#: The manifest's typed blocks (salad/manifest_blocks.py) by field name.
BLOCKS: dict[str, type[Bank | Scores | Threshold | Reference]] = {
    "bank": Bank, "scores": Scores, "threshold": Threshold, "reference": Reference,
}


def _blocks(manifest: Manifest) -> dict[str, Bank | Scores | Threshold | Reference]:
    return {name: getattr(manifest, name) for name in BLOCKS}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")).hexdigest()


def _check_integrity(path: Path, raw: dict[str, Any], manifest: Manifest) -> None:
    """The recorded digests of the decision-making fields and of every file entry must match the manifest as read."""
    recorded = raw.get("integrity")
    fields = recorded.get("fields") if isinstance(recorded, dict) else None
    fix = ("Re-export the bundle (salad-export RUN --out BUNDLE --force), or change such fields deliberately with "
           "salad.manifest.Manifest.write, which records a new digest.")
    if not isinstance(fields, dict):
        raise BundleError(
            f"{path}: no integrity digest of the decision-making fields {list(PROTECTED_FIELDS)} (written by an older "
            f"salad-edge or edited by hand). {fix}"
        )
    checksums = recorded.get(CHECKSUMS) if isinstance(recorded, dict) else None
    if not isinstance(checksums, dict):
        raise BundleError(
            f"{path}: no integrity digest of the files' checksums (written by an older salad-edge, or edited by hand). {fix}"
        )
    now = manifest.checksum_digests()
    edited = sorted(k for k in checksums.keys() | now.keys() if checksums.get(k) != now.get(k))
    if edited:
        files = {f"graphs[{k!r}]": g.file for k, g in manifest.graphs.items()}
        named = [f"{k} ({files[k]})" if k in files else k for k in edited]
        raise BundleError(
            f"{path}: the checksum entries {', '.join(named)} differ from what was recorded when the manifest was written (integrity "
            f"digest mismatch): a file's sha256 or name was edited, e.g. after the file was swapped. {fix}"
        )
    actual = {name: _digest(raw.get(name)) for name in PROTECTED_FIELDS}  # of the file as read: what the digest was taken of
    changed = [name for name in PROTECTED_FIELDS if fields.get(name) != actual[name]]
    if changed:
        raise BundleError(
            f"{path}: the decision-making field(s) {changed} differ from what was recorded when the manifest was written "
            f"(integrity digest mismatch; protected fields: {list(PROTECTED_FIELDS)}), e.g. an edited threshold. {fix}"
        )


# -- reading ------------------------------------------------------------------------------------------------


def parse_manifest(data: bytes, path: Path) -> Manifest:
    """A manifest's text (read from `path`: manifest.json, or a commit journal's new manifest), fully checked.

    Schema version, every field's type and range, paths, and the integrity digest; files are not read.
    """
    raw = parse_json(data, path)
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{path}: bundle schema version {version!r}, this salad-edge reads version {SCHEMA_VERSION}. "
            "Re-export the bundle with this toolkit version (salad-export RUN --out BUNDLE)."
        )
    problems = manifest_problems(raw)
    if problems:
        raise BundleError(
            f"{path}: {len(problems)} field(s) have the wrong type or range:\n  " + "\n  ".join(problems)
            + "\nRe-export the bundle (salad-export RUN --out BUNDLE --force); do not edit manifest.json by hand."
        )
    try:
        manifest = Manifest.from_dict(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path}: manifest is missing or has malformed field {exc}.") from exc
    _check_integrity(path, raw, manifest)
    return manifest


def load_with_bytes(root: Path) -> tuple[Manifest, bytes]:
    """BUNDLE/manifest.json parsed and checked, with the bytes it was parsed from (to notice a concurrent commit)."""
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{root}: not a bundle (no {MANIFEST}). Create one with `salad-export RUN --out {root}`.")
    data = path.read_bytes()
    return parse_manifest(data, path), data


def check_banks(root: Path, manifest: Manifest, keys: list[str]) -> None:
    """Refuse a scoring graph among `keys` whose bank (initializer, or the bank.npy it is fed) is not the manifest's.

    Call after the files' sha256 were verified. Encoders carry no bank and are skipped.
    """
    bank = manifest.bank
    expected, rows, dim = bank.sha256, bank.rows, manifest.embedding_dim
    fix = "The graph or bank file was swapped or edited; re-copy or re-export the bundle."
    for key in keys:
        spec = manifest.graphs[key]
        if not any(t.name in manifest.scores.outputs for t in spec.outputs):
            continue
        if any(t.name == BANK_INPUT for t in spec.inputs):
            path = manifest.path_of(root, str(bank.file))
            try:
                values = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise BundleError(f"{path}: cannot read the memory bank ({exc}). {fix}") from exc
            where, shape = f"{path} (the bank {spec.file} is fed)", tuple(values.shape)
        else:
            path = manifest.path_of(root, spec.file)
            values = carried_bank(path, bank.initializer or "bank_t", root).T  # a view: [N, D]
            stored = f", stored in {bank.external_data}" if bank.external_data else ""
            where, shape = f"{path} (its bank initializer{stored})", tuple(values.shape)
        digest = bank_digest(values)
        if shape != (rows, dim) or digest != expected:
            raise BundleError(
                f"{where}: holds a memory bank of shape {list(shape)} with sha256 {digest[:12]}…; the manifest's "
                f"bank is {rows} × {dim} with sha256 {str(expected)[:12]}…. {fix}"
            )


def verified_files(manifest: Manifest, graphs: Sequence[tuple[str, str]] | None) -> list[str]:
    """The files verify_bundle hashes: every listed file, or those the (name, precision) `graphs` run on."""
    if graphs is None:
        return sorted(manifest.listed_files())
    return sorted({f for name, p in graphs for f in manifest.graph_files(name, p)})


def verify_bundle(root: Path, manifest: Manifest, graphs: Sequence[tuple[str, str]] | None) -> None:
    """The listed files' sha256 (all, or those `graphs` read), then the bank each of those scoring graphs uses."""
    verify_files(root, manifest, only=verified_files(manifest, graphs))
    keys = sorted(manifest.graphs) if graphs is None else [manifest.graph_key(name, p) for name, p in graphs]
    check_banks(root, manifest, keys)


def current_manifest(bundle: str | os.PathLike[str], verify: bool = True) -> Manifest:
    """manifest.json as it stands, ignoring any commit journal: for a writer that holds the bundle's lock."""
    root = Path(bundle)
    manifest, _ = load_with_bytes(root)
    if verify:
        verify_bundle(root, manifest, None)
    return manifest


def verify_files(root: Path, manifest: Manifest, only: Iterable[str] | None = None) -> None:
    """Check every listed file (or the listed files named in `only`) exists inside the bundle and matches its sha256; report all at once."""
    root = Path(root)
    listed = manifest.listed_files()
    names = sorted(listed) if only is None else sorted(set(only))
    problems = []
    for name in names:
        if name not in listed:
            problems.append(f"{root / name}: not listed in the manifest with a sha256")
            continue
        digest = listed[name]
        try:
            f = confined(root, name)
        except BundleError as exc:
            problems.append(str(exc))
            continue
        if not f.is_file():
            problems.append(f"{f}: missing")
            continue
        actual = sha256_file(f)
        if actual != digest:
            problems.append(f"{f}: sha256 mismatch (manifest {digest[:12]}…, file {actual[:12]}…); the file was modified or corrupted")
    if problems:
        raise BundleError("bundle failed verification:\n  " + "\n  ".join(problems) + "\nRe-export or re-copy the bundle.")
