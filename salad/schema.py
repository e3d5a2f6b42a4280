"""The manifest's schema (docs/architecture.md §4): its constants, safe bundle paths, and every field's type and range.

Kept apart from salad/manifest.py (the typed object and its reading) so that the journal and the
reader can both use the rules without importing each other."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, TypeGuard

from salad.errors import BundleError
from salad.manifest_blocks import Bank, Reference, Scores, Threshold, block_problems, show
from salad.precision import PRECISIONS
from salad.preprocess import BORDER_MODES, INTENSITY_MODES, MAX_SIZE, RESIZE_MODES
from salad.verdict import default_tolerances

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
#: The published JSON Schemas of manifest.json and of every command's JSON output (package data).
JSON_SCHEMAS = Path(__file__).parent / "schemas"
#: An interrupted commit: the renames still to do and the complete new manifest (see commit_journal).
JOURNAL = ".journal.json"
#: Fields that decide a film's label; their digests are recorded by Manifest.write and checked on every read.
PROTECTED_FIELDS = ("threshold", "scores", "k", "preprocessing", "bank", "embedding_dim")
#: The integrity entry beside them that covers every file a reader opens: each graph's file, sha256 and
#: external data, and `files` (bank, reference films, similarity estimator, checkpoint) with their sha256.
CHECKSUMS = "checksums"
#: How a scoring graph gets the bank: bound into it as an initializer, or fed as the input "bank" (bank.npy).
BANK_FORMS = ("initializer", "input")
#: The fp32 graphs every bundle has (docs/architecture.md §4).
FP32_GRAPHS = ("encoder", "scorer", "model")
#: manifest.json's top-level fields (the typed salad.manifest_model.Manifest's; tests/export/test_manifest_schema.py).
MANIFEST_FIELDS = (
    "schema_version", "toolkit_version", "created", "source", "preprocessing", "embedding_dim", "bank", "k", "scores",
    "threshold", "graphs", "files", "parity", "calibration", "reference", "integrity",
)
_HEX = frozenset("0123456789abcdef")

#: Default parity tolerances per precision (docs/architecture.md §9), from the metric definitions (salad/verdict.py).
#: Only fp32's: a manifest of a variant always lists its own (calibration writes them).
DEFAULT_TOLERANCES: dict[str, dict[str, float]] = {"fp32": default_tolerances("fp32")}


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of `kind`: "manifest", or a JSON output ("score", "parity", "bench", …)."""
    path = JSON_SCHEMAS / f"{kind}.json"
    if not path.is_file():
        have = sorted(p.stem for p in JSON_SCHEMAS.glob("*.json"))
        raise BundleError(f"no published JSON Schema {kind!r} in {JSON_SCHEMAS}; there are {have}.")
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


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


class _Problems:
    """The problems found in a raw manifest so far, and the one way a rule adds one.

    Starts with the typed blocks' own check (salad/manifest_blocks.py: unknown fields, required fields, JSON
    types); a field it flagged is not reported a second time by the rules for ranges and relations.
    """

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.found: list[str] = []
        for name, block in (("bank", Bank), ("scores", Scores), ("threshold", Threshold), ("reference", Reference)):
            if name in raw or name != "reference":
                self.found += block_problems(block, raw.get(name), name)
        self.flagged = {p.split(":", 1)[0] for p in self.found}

    def need(self, where: str, value: Any, ok: bool, expected: str) -> bool:
        """Record a problem at `where` unless `ok`; returns `ok`."""
        if not ok and where not in self.flagged:
            self.found.append(f"{where}: {show(value)}; expected {expected}")
        return ok

    def section(self, name: str) -> dict[str, Any]:
        """The top-level object `name`, or {} (and a problem) when it is not an object."""
        value = self.raw.get(name)
        return value if self.need(name, value, isinstance(value, dict), "an object") and isinstance(value, dict) else {}


def manifest_problems(raw: dict[str, Any]) -> list[str]:
    """Every field of a raw manifest.json whose type or range is wrong, and every unsafe or unlisted path."""
    check = _Problems(raw)
    _top_level(check)
    bank = _bank_and_k(check)
    _scores_and_threshold(check)
    _preprocessing(check)
    files = check.section("files")
    for name, digest in files.items():
        check.need(f"files[{name!r}]", digest, _is_sha(digest), "a sha256 (64 lowercase hex digits)")
    paths: list[tuple[str, Any]] = [(f"files key {n!r}", n) for n in files]
    paths += _graphs(check, files)
    paths += _listed_files(check, bank, files)
    for where, name in paths:
        problem = path_problem(name)
        if problem:
            check.found.append(f"{where}: {problem}")
    parity = raw.get("parity", {})
    if check.need("parity", parity, isinstance(parity, dict), "an object {precision: {metric: tolerance}}"):
        for p, tol in parity.items():
            check.need(f"parity[{p!r}]", tol, isinstance(tol, dict) and all(_is_num(v) for v in tol.values()), "{metric: finite number}")
    return check.found


def _top_level(check: _Problems) -> None:
    """Only the manifest's fields; the version strings, source, calibration and integrity algorithm."""
    raw, need = check.raw, check.need
    unknown = sorted(set(raw) - set(MANIFEST_FIELDS))
    need("fields", unknown, not unknown, f"only the manifest's fields {list(MANIFEST_FIELDS)} (a rewrite would drop others)")
    for name in ("toolkit_version", "created"):
        need(name, raw.get(name), isinstance(raw.get(name), str), "a string")
    check.section("source")
    if "calibration" in raw:
        need("calibration", raw["calibration"], isinstance(raw["calibration"], dict), "an object")
    integrity = raw.get("integrity")  # its absence and its digests are the reader's integrity check (manifest_model.py)
    if isinstance(integrity, dict):
        need("integrity.algorithm", integrity.get("algorithm"), integrity.get("algorithm") == "sha256", '"sha256"')


def _bank_and_k(check: _Problems) -> dict[str, Any]:
    """embedding_dim, the bank's ranges and K ≤ its rows; returns the bank object."""
    raw, need = check.raw, check.need
    dim = raw.get("embedding_dim")
    need("embedding_dim", dim, _is_int(dim) and dim >= 1, "an integer ≥ 1 (e.g. 200)")
    bank = check.section("bank")
    rows = bank.get("rows")
    need("bank.rows", rows, _is_int(rows) and rows >= 1, "an integer ≥ 1 (the number of normal bank rows)")
    if "dim" in bank:
        need("bank.dim", bank["dim"], bank["dim"] == dim and _is_int(bank["dim"]), f"the embedding_dim {dim!r}")
    need("bank.sha256", bank.get("sha256"), _is_sha(bank.get("sha256")), "64 lowercase hex digits")
    need("bank.form", bank.get("form"), bank.get("form") in BANK_FORMS, f"one of {list(BANK_FORMS)}")
    if "dropped_anomalous" in bank:
        dropped = bank["dropped_anomalous"]
        need("bank.dropped_anomalous", dropped, _is_int(dropped) and dropped >= 0, "an integer ≥ 0 (anomalous rows left out)")
    k = raw.get("k")
    if need("k", k, _is_int(k) and k >= 1, "an integer ≥ 1 (neighbours averaged by the score)") and _is_int(k) and _is_int(rows):
        need("k", k, k <= rows, f"≤ bank.rows ({rows})")
    return bank


def _scores_and_threshold(check: _Problems) -> None:
    """The score outputs, the default and the threshold's score among them, and a finite threshold value."""
    need = check.need
    scores = check.section("scores")
    outputs = scores.get("outputs")
    need("scores.outputs", outputs, isinstance(outputs, list) and bool(outputs) and all(isinstance(o, str) for o in outputs),
         "a non-empty list of output names")
    known = outputs if isinstance(outputs, list) else []
    need("scores.default", scores.get("default"), scores.get("default") in known, f"one of scores.outputs {known}")
    if "definitions" in scores:
        definitions = scores["definitions"]
        need("scores.definitions", definitions, isinstance(definitions, dict) and all(isinstance(v, str) for v in definitions.values()),
             "an object {score name: definition text}")
    threshold = check.section("threshold")
    need("threshold.value", threshold.get("value"), _is_num(threshold.get("value")),
         "a finite number (the score above which a film is abnormal)")
    if "score" in threshold:
        need("threshold.score", threshold["score"], threshold["score"] in known, f"one of scores.outputs {known}")


def _preprocessing(check: _Problems) -> None:
    """The film size within its bounds and every named mode one the preprocessing knows."""
    need = check.need
    pre = check.section("preprocessing")
    size = pre.get("size")
    need("preprocessing.size", size, _is_int(size) and 32 <= size <= MAX_SIZE, f"an integer ≥ 32 and ≤ {MAX_SIZE} (pixels)")
    if "channels" in pre:
        need("preprocessing.channels", pre["channels"], _is_int(pre["channels"]) and pre["channels"] == 1, "1 (grey films)")
    for name, modes in (("resize_mode", RESIZE_MODES), ("intensity_mode", INTENSITY_MODES), ("border", BORDER_MODES)):
        if name in pre:
            need(f"preprocessing.{name}", pre[name], pre[name] in modes, f"one of {list(modes)}")
    if "dicom" in pre:
        need("preprocessing.dicom", pre["dicom"], isinstance(pre["dicom"], str), "a string")
    if "crop" in pre:
        crop = pre["crop"]
        need("preprocessing.crop", crop, _is_num(crop) and 0.5 <= crop <= 1.0, "a number in [0.5, 1] (the kept central fraction)")


def _graphs(check: _Problems, files: dict[str, Any]) -> list[tuple[str, Any]]:
    """The fp32 graphs present and each graph's fields; returns the paths the graphs name (checked by the caller)."""
    need = check.need
    paths: list[tuple[str, Any]] = []
    graphs = check.section("graphs")
    missing = [g for g in FP32_GRAPHS if g not in graphs]
    need("graphs", sorted(graphs), not missing, f"the fp32 graphs {list(FP32_GRAPHS)} (missing {missing})")
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
            ok = isinstance(tensors, list) and bool(tensors) and all(
                isinstance(t, dict) and set(t) == {"name", "dtype", "shape"} and isinstance(t.get("name"), str)
                and isinstance(t.get("dtype"), str)
                and isinstance(t.get("shape"), list) and all(_is_int(d) or isinstance(d, str) for d in t["shape"])
                for t in tensors
            )
            need(f"graphs[{key!r}].{side}", tensors, ok, "a non-empty list of {name: str, dtype: str, shape: [int | axis name]}")
        if "details" in g:
            need(f"graphs[{key!r}].details", g["details"], isinstance(g["details"], dict), "an object")
        external = g.get("external_data", [])
        if need(f"graphs[{key!r}].external_data", external, isinstance(external, list), "a list of file names"):
            for e in external:
                paths.append((f"graphs[{key!r}].external_data", e))
                need(f"graphs[{key!r}].external_data", e, e in files, f"a file listed in files {sorted(files)} (with its sha256)")
    return paths


def _listed_files(check: _Problems, bank: dict[str, Any], files: dict[str, Any]) -> list[tuple[str, Any]]:
    """The bank's file and external data and the reference films must be listed in files; returns their paths."""
    paths: list[tuple[str, Any]] = []
    reference = check.raw.get("reference") or {}
    listed_refs: list[tuple[str, Any]] = [("bank.file", bank.get("file")), ("bank.external_data", bank.get("external_data"))]
    if isinstance(reference, dict):
        listed_refs.append(("reference.file", reference.get("file")))
    for where, name in listed_refs:
        if name is None:
            continue
        paths.append((where, name))
        check.need(where, name, name in files, f"a file listed in files {sorted(files)} (so its sha256 is checked)")
    return paths
