"""The bundle manifest (docs/architecture.md §4): the one schema that export writes and every runtime reads.

A bundle is a directory a console can verify and run without the training code. Loading checks the
schema version first, then every field's type and range, that every path stays inside the bundle
and is a listed file, the integrity digest of the decision-making fields, and (by default) the
sha256 of every file the manifest lists, naming any mismatch.

Writers (export, calibrate) commit through `atomic_directory` (a whole new bundle) or a journal
(`commit_journal`: new files staged under temporary names, then one atomic write of a journal that
holds the renames and the complete new manifest). A journal left by a killed writer is rolled
forward by the next writer or reader that can write, so a bundle is always either the old one or
the new one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, TypeGuard

from salad.errors import BundleError
from salad.fsutil import (
    directory_mode,
    exchange_paths,
    fsync_dir,
    sigterm_as_interrupt,
    sweep_stale,
    temp_name,
    write_atomic,
    writer_lock,
)
from salad.preprocess import INTENSITY_MODES, RESIZE_MODES, PreprocessConfig

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
#: An interrupted commit: the renames still to do and the complete new manifest (see commit_journal).
JOURNAL = ".journal.json"
PRECISIONS = ("fp32", "fp16", "int8")
#: Fields that decide a film's label; their digests are recorded by Manifest.write and checked on every read.
PROTECTED_FIELDS = ("threshold", "scores", "k", "preprocessing", "bank", "embedding_dim")
_HEX = frozenset("0123456789abcdef")

#: Default parity tolerances per precision (docs/architecture.md §9). fp16/int8 are set from measurements by calibration.
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
        d = asdict(self)
        d["graphs"] = {k: asdict(v) for k, v in self.graphs.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        known = {
            "toolkit_version", "created", "source", "preprocessing", "embedding_dim", "bank", "k", "scores",
            "threshold", "files", "parity", "calibration", "schema_version", "reference", "integrity",
        }
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["graphs"] = {k: GraphSpec.from_dict(v) for k, v in d["graphs"].items()}
        return cls(**kwargs)

    def field_digests(self) -> dict[str, str]:
        """sha256 of each decision-making field's canonical JSON (what `integrity` records)."""
        d = self.to_dict()
        return {name: _digest(d[name]) for name in PROTECTED_FIELDS}

    def to_json(self) -> str:
        """manifest.json's text, with a fresh integrity digest of the decision-making fields."""
        self.integrity = {"algorithm": "sha256", "fields": self.field_digests()}
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
        if any(t.name == "bank" for t in spec.inputs) and self.bank.get("file"):
            out.append(str(self.bank["file"]))
        return out

    def listed_files(self) -> dict[str, str]:
        """Every file the manifest vouches for → its sha256 (graphs, their external data, other files)."""
        out = dict(self.files)
        for g in self.graphs.values():
            out[g.file] = g.sha256
        return out


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")).hexdigest()


# -- paths ------------------------------------------------------------------------------------------------


def path_problem(name: Any) -> str | None:
    """Why `name` is not a safe bundle-relative path (relative, POSIX, no '..'), or None."""
    if not isinstance(name, str) or not name:
        return f"{name!r} is not a file name"
    if "\\" in name or "\x00" in name:
        return f"{name!r} has a backslash or NUL; expected a relative POSIX path such as 'model.onnx'"
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        return f"{name!r} is an absolute path; expected a path relative to the bundle such as 'model.onnx'"
    if any(part in ("..", ".") for part in name.split("/")) or name.endswith("/") or "//" in name:
        return f"{name!r} leaves or does not name a file of the bundle ('..', '.' or an empty part); expected e.g. 'model.onnx'"
    return None


def confined(root: str | os.PathLike[str], name: str) -> Path:
    """root/name, refusing a name that is not a relative path or whose target (symlinks followed) lies outside root."""
    problem = path_problem(name)
    if problem:
        raise BundleError(f"{Path(root) / MANIFEST}: path {problem}. Re-export the bundle.")
    base = Path(root).resolve()
    path = Path(root) / name
    resolved = path.resolve()
    if resolved != base and base not in resolved.parents:
        raise BundleError(
            f"{path}: resolves to {resolved}, outside the bundle {base} (a symbolic link escapes it); "
            "a bundle's files must be inside it. Replace the link with the file, or re-export."
        )
    return path


# -- field validation ----------------------------------------------------------------------------------


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_sha(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and set(v) <= _HEX


def _show(v: Any) -> str:
    return f"{json.dumps(v)[:60]} ({type(v).__name__})"


def manifest_problems(raw: dict[str, Any]) -> list[str]:
    """Every field of a raw manifest.json whose type or range is wrong, and every unsafe or unlisted path."""
    problems: list[str] = []

    def need(where: str, value: Any, ok: bool, expected: str) -> bool:
        if not ok:
            problems.append(f"{where}: {_show(value)}; expected {expected}")
        return ok

    def section(name: str) -> dict[str, Any]:
        value = raw.get(name)
        return value if need(name, value, isinstance(value, dict), "an object") and isinstance(value, dict) else {}

    for name in ("toolkit_version", "created"):
        need(name, raw.get(name), isinstance(raw.get(name), str), "a string")
    dim = raw.get("embedding_dim")
    need("embedding_dim", dim, _is_int(dim) and dim >= 1, "an integer ≥ 1 (e.g. 200)")
    bank = section("bank")
    rows = bank.get("rows")
    need("bank.rows", rows, _is_int(rows) and rows >= 1, "an integer ≥ 1 (the number of normal bank rows)")
    if "dim" in bank:
        need("bank.dim", bank["dim"], bank["dim"] == dim and _is_int(bank["dim"]), f"the embedding_dim {dim!r}")
    need("bank.sha256", bank.get("sha256"), _is_sha(bank.get("sha256")), "64 lowercase hex digits")
    k = raw.get("k")
    if need("k", k, _is_int(k) and k >= 1, "an integer ≥ 1 (neighbours averaged by the score)") and _is_int(k) and _is_int(rows):
        need("k", k, k <= rows, f"≤ bank.rows ({rows})")
    scores = section("scores")
    outputs = scores.get("outputs")
    need("scores.outputs", outputs, isinstance(outputs, list) and bool(outputs) and all(isinstance(o, str) for o in outputs),
         "a non-empty list of output names")
    known = outputs if isinstance(outputs, list) else []
    need("scores.default", scores.get("default"), scores.get("default") in known, f"one of scores.outputs {known}")
    threshold = section("threshold")
    need("threshold.value", threshold.get("value"), _is_num(threshold.get("value")), "a finite number (the score above which a film is abnormal)")
    if "score" in threshold:
        need("threshold.score", threshold["score"], threshold["score"] in known, f"one of scores.outputs {known}")
    pre = section("preprocessing")
    size = pre.get("size")
    need("preprocessing.size", size, _is_int(size) and size >= 32, "an integer ≥ 32 (pixels)")
    if "channels" in pre:
        need("preprocessing.channels", pre["channels"], _is_int(pre["channels"]) and pre["channels"] == 1, "1 (grey films)")
    if "resize_mode" in pre:
        need("preprocessing.resize_mode", pre["resize_mode"], pre["resize_mode"] in RESIZE_MODES, f"one of {list(RESIZE_MODES)}")
    if "intensity_mode" in pre:
        need("preprocessing.intensity_mode", pre["intensity_mode"], pre["intensity_mode"] in INTENSITY_MODES, f"one of {list(INTENSITY_MODES)}")
    files = section("files")
    for name, digest in files.items():
        need(f"files[{name!r}]", digest, _is_sha(digest), "a sha256 (64 lowercase hex digits)")
    paths: list[tuple[str, Any]] = [(f"files key {n!r}", n) for n in files]
    graphs = section("graphs")
    need("graphs", graphs, bool(graphs), "at least the fp32 'model' graph")
    for key, g in graphs.items():
        if not need(f"graphs[{key!r}]", g, isinstance(g, dict), "an object"):
            continue
        paths.append((f"graphs[{key!r}].file", g.get("file")))
        need(f"graphs[{key!r}].sha256", g.get("sha256"), _is_sha(g.get("sha256")), "64 lowercase hex digits")
        need(f"graphs[{key!r}].precision", g.get("precision"), g.get("precision") in PRECISIONS, f"one of {list(PRECISIONS)}")
        opset = g.get("opset")
        need(f"graphs[{key!r}].opset", opset, _is_int(opset) and opset >= 1, "an integer opset (≥ 17)")
        for side in ("inputs", "outputs"):
            tensors = g.get(side)
            ok = isinstance(tensors, list) and all(
                isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("dtype"), str)
                and isinstance(t.get("shape"), list) and all(_is_int(d) or isinstance(d, str) for d in t["shape"])
                for t in tensors
            )
            need(f"graphs[{key!r}].{side}", tensors, ok, "a list of {name: str, dtype: str, shape: [int | axis name]}")
        external = g.get("external_data", [])
        if need(f"graphs[{key!r}].external_data", external, isinstance(external, list), "a list of file names"):
            for e in external:
                paths.append((f"graphs[{key!r}].external_data", e))
                need(f"graphs[{key!r}].external_data", e, e in files, f"a file listed in files {sorted(files)} (with its sha256)")
    reference = raw.get("reference") or {}
    listed_refs: list[tuple[str, Any]] = [("bank.file", bank.get("file")), ("bank.external_data", bank.get("external_data"))]
    if isinstance(reference, dict):
        listed_refs.append(("reference.file", reference.get("file")))
    for where, name in listed_refs:
        if name is None:
            continue
        paths.append((where, name))
        need(where, name, name in files, f"a file listed in files {sorted(files)} (so its sha256 is checked)")
    for where, name in paths:
        problem = path_problem(name)
        if problem:
            problems.append(f"{where}: {problem}")
    parity = raw.get("parity", {})
    if need("parity", parity, isinstance(parity, dict), "an object {precision: {metric: tolerance}}"):
        for p, tol in parity.items():
            need(f"parity[{p!r}]", tol, isinstance(tol, dict) and all(_is_num(v) for v in tol.values()), "{metric: finite number}")
    return problems


def _check_integrity(path: Path, raw: dict[str, Any], manifest: Manifest) -> None:
    """The recorded digests of the decision-making fields must match the fields as read."""
    recorded = raw.get("integrity")
    fields = recorded.get("fields") if isinstance(recorded, dict) else None
    fix = ("Re-export the bundle (salad-export RUN --out BUNDLE --force), or change such fields deliberately with "
           "salad.manifest.Manifest.write, which records a new digest.")
    if not isinstance(fields, dict):
        raise BundleError(
            f"{path}: no integrity digest of the decision-making fields {list(PROTECTED_FIELDS)} (written by an older "
            f"salad-edge or edited by hand). {fix}"
        )
    actual = manifest.field_digests()
    changed = [name for name in PROTECTED_FIELDS if fields.get(name) != actual[name]]
    if changed:
        raise BundleError(
            f"{path}: the decision-making field(s) {changed} differ from what was recorded when the manifest was written "
            f"(integrity digest mismatch; protected fields: {list(PROTECTED_FIELDS)}), e.g. an edited threshold. {fix}"
        )


# -- reading ------------------------------------------------------------------------------------------------


def _load(root: Path) -> tuple[Manifest, bytes]:
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{root}: not a bundle (no {MANIFEST}). Create one with `salad-export RUN --out {root}`.")
    data = path.read_bytes()
    try:
        raw = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc}).") from exc
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
    return manifest, data


def read_manifest(
    bundle: str | os.PathLike[str], verify: bool = True, *, graphs: Sequence[tuple[str, str]] | None = None,
) -> Manifest:
    """Read BUNDLE/manifest.json: schema, field types/ranges, paths, integrity digest and (by default) every listed file's sha256.

    graphs: verify only the files these (name, precision) graphs read (e.g. [("model", "fp16")] for a
    console's cold start) instead of every file; the manifest itself is always fully checked.
    A commit journal left by a killed writer is completed first (this needs write access).
    """
    root = Path(bundle)
    if (root / JOURNAL).exists():
        _complete_for_reader(root)
    manifest, data = _load(root)
    if not verify:
        return manifest
    only = None if graphs is None else [f for name, p in graphs for f in manifest.graph_files(name, p)]
    try:
        verify_files(root, manifest, only=only)
    except BundleError:
        # A writer may have committed between our read of manifest.json and the hashes: read once more.
        if not (root / JOURNAL).exists() and (root / MANIFEST).read_bytes() == data:
            raise
        if (root / JOURNAL).exists():
            _complete_for_reader(root)
        manifest, _ = _load(root)
        only = None if graphs is None else [f for name, p in graphs for f in manifest.graph_files(name, p)]
        verify_files(root, manifest, only=only)
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


# -- the commit journal ---------------------------------------------------------------------------------


def pending_name(final: str) -> str:
    """The temporary name (same folder, owner pid) a file is staged under inside the bundle before its commit."""
    p = PurePosixPath(final)
    return str(p.with_name(f".{p.name}.pending-{os.getpid()}"))


def commit_journal(root: Path, renames: Sequence[tuple[str, str]], manifest: Manifest) -> None:
    """Commit staged files and a new manifest as one atomic step; call with the writer lock held.

    Every `src` must already be inside the bundle (a pending name, not listed by the current
    manifest, so the bundle verifies as before). Writing the journal — the renames plus the
    complete new manifest text — with one atomic rename is the commit point: before it the old
    bundle is intact, after it `complete_journal` rolls forward (idempotently: a rename whose
    source is gone and whose target exists is done) to the new manifest, whoever runs it.
    """
    for src, dst in renames:
        for name in (src, dst):
            problem = path_problem(name)
            if problem:
                raise BundleError(f"journal path {problem}")
    body = {"version": 1, "pid": os.getpid(), "renames": [list(r) for r in renames], "manifest": manifest.to_json()}
    write_atomic(root / JOURNAL, (json.dumps(body, indent=1) + "\n").encode("utf-8"))
    complete_journal(root)


def complete_journal(root: str | os.PathLike[str]) -> bool:
    """Roll an interrupted commit of BUNDLE forward (renames, then manifest.json, then the journal goes); True if there was one."""
    root = Path(root)
    with writer_lock(root):
        journal = root / JOURNAL
        if not journal.exists():
            return False
        try:
            body = json.loads(journal.read_text(encoding="utf-8"))
            renames = [(str(a), str(b)) for a, b in body["renames"]]
            text = str(body["manifest"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"{journal}: unreadable commit journal ({exc}); restore the bundle from a copy or re-export it.") from exc
        for src, dst in renames:
            source, target = confined(root, src), confined(root, dst)
            if source.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
            elif not target.exists():
                raise BundleError(f"{journal}: cannot complete the interrupted commit: neither {source} nor {target} exists. Re-export the bundle.")
        write_atomic(root / MANIFEST, text.encode("utf-8"))
        journal.unlink()
        fsync_dir(root)
        return True


def _complete_for_reader(root: Path) -> None:
    try:
        complete_journal(root)
    except (BundleError, OSError) as exc:
        raise BundleError(
            f"{root}: a writer was interrupted while committing a change ({root / JOURNAL} is present) and this process "
            f"cannot complete it ({exc}). Run a writer on the bundle as a user who may write to it — any `salad calibrate` "
            f"or `python -c \"from salad.manifest import complete_journal; complete_journal('{root}')\"` — which finishes the commit."
        ) from exc


# -- whole-directory writes ---------------------------------------------------------------------------------


def is_bundle(path: Path) -> bool:
    """A directory `--force` may replace as a bundle: it has a manifest.json."""
    return (path / MANIFEST).is_file()


@contextmanager
def atomic_directory(
    target: Path, force: bool = False, *, replaceable: Callable[[Path], bool] = is_bundle, what: str = "bundle",
) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `target`, on error (or Ctrl-C/SIGTERM) it is removed.

    The directory therefore appears whole or not at all, even if validation fails half-way. Holds the
    writer lock of `target` throughout, first removes temporaries of dead writers, and with `force`
    replaces only an empty directory or one `replaceable` recognises (a bundle: manifest.json), never
    any other directory. The new directory gets the umask's normal mode (0o755 under umask 022).
    On Linux the old and new directories are swapped in one renameat2(RENAME_EXCHANGE).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with sigterm_as_interrupt(), writer_lock(target, what=what):
        sweep_stale(target)
        if target.exists() or target.is_symlink():
            if not force:
                raise BundleError(f"{target}: already exists. Pass --force to replace it, or choose another --out.")
            if target.is_symlink() or not target.is_dir() or (any(target.iterdir()) and not replaceable(target)):
                raise BundleError(
                    f"{target}: exists and is not a {what} (no {MANIFEST if replaceable is is_bundle else 'marker of one'}); "
                    f"--force replaces only a {what}, never another file or folder. Choose another --out, or remove it yourself."
                )
        tmp = target.parent / temp_name(f".{target.name}.tmp-")
        tmp.mkdir()
        os.chmod(tmp, directory_mode())
        try:
            yield tmp
            if target.exists():
                if exchange_paths(tmp, target):
                    fsync_dir(target.parent)
                    shutil.rmtree(tmp, ignore_errors=True)  # now the old directory
                else:
                    old = target.with_name(f".{target.name}.old-{os.getpid()}")
                    os.replace(target, old)
                    os.replace(tmp, target)
                    shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
            fsync_dir(target.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
