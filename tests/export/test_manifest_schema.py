"""The published JSON Schema of manifest.json and the Python checks agree (issue 27): same bad manifests, same verdicts.

Each case edits one field of a real bundle's manifest. The Python side is the reader itself (parse_manifest), with the
integrity digest recomputed for the edited manifest, so only the field's own rule decides; the JSON Schema side is
salad/schemas/manifest.json. Integers are checked as Python's json reads them (200.0 is a float, refused by both):
JSON Schema's "integer" alone would accept 200.0, a value salad refuses.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import pytest

from salad.errors import BundleError
from salad.manifest import GraphSpec, Manifest, TensorSpec, parse_manifest
from salad.manifest_blocks import Bank, Block, DriftCalibration, Reference, Scores, Threshold, Validation, kinds
from salad.precision import PRECISIONS
from salad.preprocess import BORDER_MODES, INTENSITY_MODES, MAX_SIZE, RESIZE_MODES, PreprocessConfig
from salad.schema import BANK_FORMS, MANIFEST_FIELDS, json_schema

Edit = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Edit:
    """Set (or, with value DROP, remove) the field at a dotted path such as "graphs.model.file"."""
    *parents, last = path.split(".")

    def edit(raw: dict[str, Any]) -> None:
        node = raw
        for part in parents:
            node = node[part]
        if value is DROP:
            node.pop(last)
        else:
            node[last] = copy.deepcopy(value)

    return edit


DROP = object()
TENSOR = {"name": "image", "dtype": "float32", "shape": ["batch", 1, 64, 64]}

#: One bad value per rule of a single field: a type, a bound, an enum, a required field, a path.
BAD: dict[str, Edit] = {
    # from tests/export/test_integrity_manifest.py
    "threshold.value bool": _set("threshold.value", True),
    "k string": _set("k", "abc"),
    "preprocessing.size string": _set("preprocessing.size", "64"),
    "bank.rows negative": _set("bank.rows", -1),
    "embedding_dim float": _set("embedding_dim", 200.0),
    "graph file leaves the bundle": _set("graphs.model.file", "../x.onnx"),
    "graph file absolute": _set("graphs.model.file", "/tmp/x.onnx"),
    "external data leaves the bundle": _set("graphs.scorer.external_data", ["../secret.txt"]),
    # the top level
    "schema_version 2": _set("schema_version", 2),
    "schema_version missing": _set("schema_version", DROP),
    "toolkit_version number": _set("toolkit_version", 5),
    "toolkit_version missing": _set("toolkit_version", DROP),
    "created missing": _set("created", DROP),
    "source string": _set("source", "x"),
    "source missing": _set("source", DROP),
    "calibration string": _set("calibration", "x"),
    "reference string": _set("reference", "x"),
    "reference.file absolute": _set("reference.file", "/etc/passwd"),
    "parity missing": _set("parity", DROP),
    "parity string": _set("parity", "x"),
    "parity precision not an object": _set("parity.fp32", 5),
    "parity tolerance string": _set("parity.fp32", {"max_abs_score_diff": "small"}),
    "an unknown field": _set("extra", 1),
    "integrity missing": _set("integrity", DROP),
    "integrity.algorithm md5": _set("integrity.algorithm", "md5"),
    # preprocessing
    "preprocessing missing": _set("preprocessing", DROP),
    "preprocessing string": _set("preprocessing", "x"),
    "preprocessing.size missing": _set("preprocessing.size", DROP),
    "preprocessing.size 31": _set("preprocessing.size", 31),
    "preprocessing.size 1": _set("preprocessing.size", 1),
    "preprocessing.size above the largest": _set("preprocessing.size", MAX_SIZE + 1),
    "preprocessing.size bool": _set("preprocessing.size", True),
    "preprocessing.channels 3": _set("preprocessing.channels", 3),
    "preprocessing.resize_mode unknown": _set("preprocessing.resize_mode", "crop"),
    "preprocessing.intensity_mode unknown": _set("preprocessing.intensity_mode", "gamma"),
    "preprocessing.border unknown": _set("preprocessing.border", "cut"),
    "preprocessing.dicom number": _set("preprocessing.dicom", 5),
    "preprocessing.crop below 0.5": _set("preprocessing.crop", 0.4),
    "preprocessing.crop above 1": _set("preprocessing.crop", 1.1),
    "preprocessing.crop string": _set("preprocessing.crop", "1"),
    # embedding, bank, k
    "embedding_dim 0": _set("embedding_dim", 0),
    "embedding_dim missing": _set("embedding_dim", DROP),
    "bank missing": _set("bank", DROP),
    "bank.rows 0": _set("bank.rows", 0),
    "bank.rows fraction": _set("bank.rows", 1.5),
    "bank.rows missing": _set("bank.rows", DROP),
    "bank.dim string": _set("bank.dim", "200"),
    "bank.sha256 short": _set("bank.sha256", "abc"),
    "bank.sha256 missing": _set("bank.sha256", DROP),
    "bank.form unknown": _set("bank.form", "file"),
    "bank.form missing": _set("bank.form", DROP),
    "bank.file leaves the bundle": _set("bank.file", "../bank.npy"),
    "k 0": _set("k", 0),
    "k bool": _set("k", True),
    "k missing": _set("k", DROP),
    # scores and threshold
    "scores missing": _set("scores", DROP),
    "scores.outputs empty": _set("scores.outputs", []),
    "scores.outputs string": _set("scores.outputs", "score"),
    "scores.outputs numbers": _set("scores.outputs", [1]),
    "scores.default missing": _set("scores.default", DROP),
    "scores.definitions number": _set("scores.definitions", 5),
    "scores.definitions of numbers": _set("scores.definitions", {"score": 1}),
    "threshold missing": _set("threshold", DROP),
    "threshold.value missing": _set("threshold.value", DROP),
    "threshold.value string": _set("threshold.value", "0.5"),
    "threshold.score number": _set("threshold.score", 5),
    # graphs
    "graphs missing": _set("graphs", DROP),
    "graphs empty": _set("graphs", {}),
    "graphs without the encoder": _set("graphs.encoder", DROP),
    "graph not an object": _set("graphs.model", "model.onnx"),
    "graph file missing": _set("graphs.model.file", DROP),
    "graph file number": _set("graphs.model.file", 5),
    "graph file empty part": _set("graphs.model.file", "a//model.onnx"),
    "graph file dot part": _set("graphs.model.file", "./model.onnx"),
    "graph file drive": _set("graphs.model.file", "C:model.onnx"),
    "graph file backslash": _set("graphs.model.file", "sub\\model.onnx"),
    "graph file folder": _set("graphs.model.file", "sub/"),
    "graph sha256 upper case": _set("graphs.model.sha256", "A" * 64),
    "graph precision unknown": _set("graphs.model.precision", "fp8"),
    "graph opset 0": _set("graphs.model.opset", 0),
    "graph opset string": _set("graphs.model.opset", "17"),
    "graph inputs empty": _set("graphs.model.inputs", []),
    "graph inputs missing": _set("graphs.model.inputs", DROP),
    "graph outputs missing": _set("graphs.model.outputs", DROP),
    "graph tensor with an unknown key": _set("graphs.model.inputs", [{**TENSOR, "layout": "NCHW"}]),
    "graph tensor without a dtype": _set("graphs.model.inputs", [{"name": "image", "shape": [1]}]),
    "graph tensor with a fractional dim": _set("graphs.model.inputs", [{**TENSOR, "shape": [1.5]}]),
    "graph external_data string": _set("graphs.model.external_data", "bank.data"),
    "graph details string": _set("graphs.model.details", "x"),
    # the typed blocks' other fields (salad/manifest_blocks.py): unknown keys, JSON types, item types
    "bank with an unknown field": _set("bank.rows_total", 200),
    "bank.dtype number": _set("bank.dtype", 32),
    "bank.dropped_anomalous negative": _set("bank.dropped_anomalous", -1),
    "bank.dropped_anomalous string": _set("bank.dropped_anomalous", "0"),
    "bank.initializer number": _set("bank.initializer", 5),
    "scores with an unknown field": _set("scores.extra", 1),
    "scores.range string": _set("scores.range", "0..1"),
    "scores.range of strings": _set("scores.range", ["0", "1"]),
    "scores.norm_eps string": _set("scores.norm_eps", "1e-8"),
    "threshold with an unknown field": _set("threshold.margin", 0.1),
    "threshold.rule number": _set("threshold.rule", 5),
    "threshold.operating_point string": _set("threshold.operating_point", "specificity:0.95"),
    "threshold.operating_point of strings": _set("threshold.operating_point", {"specificity": "0.95"}),
    "threshold.achieved of strings": _set("threshold.achieved", {"specificity": "high"}),
    "threshold.validation string": _set("threshold.validation", "val_scores.npz"),
    "threshold.validation with an unknown field": _set("threshold.validation.films", 80),
    "threshold.validation.n_normal fraction": _set("threshold.validation.n_normal", 40.5),
    "threshold.validation.source number": _set("threshold.validation.source", 1),
    "threshold.validation.drift list": _set("threshold.validation.drift", [0.1]),
    "threshold.validation.drift with an unknown field": _set("threshold.validation.drift.normal_style", [0.1]),
    "threshold.validation.drift.normal_scores of strings": _set("threshold.validation.drift.normal_scores", ["0.1"]),
    "threshold.validation.drift.normal_exposure number": _set("threshold.validation.drift.normal_exposure", 0.3),
    "threshold.validation.drift.unreadable_films string": _set("threshold.validation.drift.unreadable_films", "0"),
    "reference with an unknown field": _set("reference.films", 32),
    "reference.images string": _set("reference.images", "32"),
    "reference.keys of numbers": _set("reference.keys", [1, 2]),
    "reference.n_normal bool": _set("reference.n_normal", True),
    "reference.source number": _set("reference.source", 5),
    "reference.list_sha256 number": _set("reference.list_sha256", 5),
    "reference.batch_sizes fractional": _set("reference.batch_sizes", [1, 1.5]),
    # files
    "files string": _set("files", "x"),
    "files sha256 short": lambda raw: raw["files"].__setitem__("reference.npz", "abc"),
    "files name leaves the bundle": lambda raw: raw["files"].__setitem__("../x.npz", "0" * 64),
}

#: Values at the edges of every bound and each member of every enum, and the optional fields left out: both accept.
GOOD: dict[str, Edit] = {
    **{f"resize_mode {m}": _set("preprocessing.resize_mode", m) for m in RESIZE_MODES},
    **{f"intensity_mode {m}": _set("preprocessing.intensity_mode", m) for m in INTENSITY_MODES},
    **{f"border {m}": _set("preprocessing.border", m) for m in BORDER_MODES},
    **{f"graph precision {p}": _set("graphs.model.precision", p) for p in PRECISIONS},
    **{f"bank.form {f}": _set("bank.form", f) for f in BANK_FORMS},
    "preprocessing.size 32": _set("preprocessing.size", 32),
    "preprocessing.size largest": _set("preprocessing.size", MAX_SIZE),
    "preprocessing.crop 0.5": _set("preprocessing.crop", 0.5),
    "preprocessing.crop 1": _set("preprocessing.crop", 1),
    "preprocessing with the size only": _set("preprocessing", {"size": 64}),
    "graph file in a folder": _set("graphs.model.file", "graphs/model.onnx"),
    "graph file named with dots": _set("graphs.model.file", "model..v2.onnx"),
    "bank.dim left out": _set("bank.dim", DROP),
    "threshold.score left out": _set("threshold.score", DROP),
    "scores.definitions left out": _set("scores.definitions", DROP),
    "calibration left out": _set("calibration", DROP),
    "graph details left out": _set("graphs.model.details", DROP),
    "graph external_data left out": _set("graphs.encoder.external_data", DROP),
    "bank.initializer null": _set("bank.initializer", None),
    "bank.dtype left out": _set("bank.dtype", DROP),
    "threshold.achieved sensitivity null": _set("threshold.achieved", {"specificity": 1.0, "sensitivity": None}),
    "threshold.validation left out": _set("threshold.validation", DROP),
    "threshold.validation.drift left out": _set("threshold.validation.drift", DROP),
    "threshold.rule left out": _set("threshold.rule", DROP),
    "scores.range left out": _set("scores.range", DROP),
    "reference empty": _set("reference", {}),
    "reference left out": _set("reference", DROP),
}

#: Rules between two fields, which JSON Schema cannot state: salad refuses these, the schema accepts them (its title says so).
RELATIONS: dict[str, Edit] = {
    "k above bank.rows": _set("k", 10_000),
    "bank.dim not embedding_dim": _set("bank.dim", 199),
    "scores.default not an output": _set("scores.default", "other"),
    "threshold.score not an output": _set("threshold.score", "other"),
    "reference.file not listed in files": _set("reference.file", "other.npz"),
    "bank.external_data not listed in files": _set("bank.external_data", "bank.data"),
}


def _schema_refusals(raw: dict[str, Any]) -> list[str]:
    import jsonschema

    base = jsonschema.Draft202012Validator
    strict = base.TYPE_CHECKER.redefine("integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool))
    validator = jsonschema.validators.extend(base, type_checker=strict)(json_schema("manifest"))
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(raw)]


def _python_refusal(raw: dict[str, Any]) -> str | None:
    """The reader's refusal of `raw` (its integrity digest recomputed, unless the case removed it), or None."""
    stamped = copy.deepcopy(raw)
    if isinstance(stamped.get("integrity"), dict):
        try:
            manifest = Manifest.from_dict(stamped)
            stamped["integrity"]["fields"] = manifest.field_digests()
            stamped["integrity"]["checksums"] = manifest.checksum_digests()
        except (KeyError, TypeError, ValueError, AttributeError):
            pass  # the manifest cannot even be built: the reader refuses it on its own
    try:
        parse_manifest(json.dumps(stamped).encode("utf-8"), Path("manifest.json"))
    except BundleError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="module")
def raw(bundle: Path) -> dict[str, Any]:
    """A real bundle's manifest.json, which both sides accept."""
    data: dict[str, Any] = json.loads((bundle / "manifest.json").read_text())
    data["reference"].setdefault("file", "reference.npz")
    assert _python_refusal(data) is None and _schema_refusals(data) == []
    return data


def _edited(raw: dict[str, Any], edit: Edit) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    edit(out)
    return out


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_field_is_refused_by_both_the_reader_and_the_schema(raw: dict[str, Any], case: str) -> None:
    bad = _edited(raw, BAD[case])
    python, schema = _python_refusal(bad), _schema_refusals(bad)
    assert python is not None, f"{case}: the JSON Schema refuses ({schema}) what salad accepts"
    assert schema, f"{case}: salad refuses ({python}) what the JSON Schema accepts"


@pytest.mark.parametrize("case", sorted(GOOD))
def test_a_good_value_is_accepted_by_both(raw: dict[str, Any], case: str) -> None:
    good = _edited(raw, GOOD[case])
    assert _python_refusal(good) is None and _schema_refusals(good) == []


@pytest.mark.parametrize("case", sorted(RELATIONS))
def test_relations_between_fields_are_salad_s_alone(raw: dict[str, Any], case: str) -> None:
    bad = _edited(raw, RELATIONS[case])
    assert _python_refusal(bad) is not None and _schema_refusals(bad) == []


def _names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def test_every_typed_field_is_in_the_schema_and_back() -> None:
    schema = json_schema("manifest")
    props = schema["properties"]
    graph = props["graphs"]["additionalProperties"]
    tensor = graph["properties"]["inputs"]["items"]
    for cls, block in ((Manifest, schema), (GraphSpec, graph), (TensorSpec, tensor), (PreprocessConfig, props["preprocessing"])):
        assert _names(cls) == set(block["properties"]), f"{cls.__name__} and the JSON Schema name different fields"
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        assert required <= set(block.get("required", [])), f"{cls.__name__}: fields without a default the schema leaves optional"
    assert set(MANIFEST_FIELDS) == _names(Manifest)
    assert graph["properties"]["outputs"]["items"] == tensor


#: Every typed block and where the JSON Schema describes it.
BLOCKS: dict[type[Block], tuple[str, ...]] = {
    Bank: ("bank",), Scores: ("scores",), Threshold: ("threshold",), Validation: ("threshold", "validation"),
    DriftCalibration: ("threshold", "validation", "drift"), Reference: ("reference",),
}
#: JSON Schema's names for the typed blocks' JSON kinds.
JSON_TYPES: dict[Any, str] = {bool: "boolean", int: "integer", float: "number", str: "string", tuple: "array", dict: "object"}


def _block_schema(path: tuple[str, ...]) -> dict[str, Any]:
    node: dict[str, Any] = json_schema("manifest")
    for part in path:
        node = node["properties"][part]
    return node


def _types(prop: dict[str, Any]) -> set[str]:
    """The JSON types a schema property admits ($ref, anyOf, type, enum and const followed)."""
    if "$ref" in prop:
        return _types(json_schema("manifest")["$defs"][prop["$ref"].rsplit("/", 1)[-1]])
    if "anyOf" in prop:
        return set().union(*(_types(p) for p in prop["anyOf"]))
    if "type" in prop:
        return {prop["type"]} if isinstance(prop["type"], str) else set(prop["type"])
    values = prop.get("enum", [prop["const"]] if "const" in prop else [])
    names = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}
    return {names[type(v)] for v in values}


@pytest.mark.parametrize("block", list(BLOCKS), ids=lambda b: b.__name__)
def test_the_json_schema_and_the_typed_blocks_agree_on_every_field(block: type[Block]) -> None:
    """Same field names, required-ness, JSON types, nullability and item types; unknown fields refused by both."""
    schema = _block_schema(BLOCKS[block])
    typed = kinds(block)
    assert set(typed) == set(schema["properties"]), f"{block.__name__} and the JSON Schema name different fields"
    assert {n for n, k in typed.items() if k.required} == set(schema.get("required", [])), f"{block.__name__}: required fields differ"
    assert schema.get("additionalProperties") is False, f"{block.__name__}: the schema admits fields the typed block drops"
    for name, k in typed.items():
        prop, where = schema["properties"][name], f"{block.__name__}.{name}"
        expected = "object" if isinstance(k.kind, type) and issubclass(k.kind, Block) else JSON_TYPES[k.kind]
        admitted = _types(prop)
        assert admitted - {"null"} == {expected} or (expected == "number" and admitted - {"null"} == {"number", "integer"}), (
            f"{where}: typed as {expected}, the JSON Schema admits {sorted(admitted)}")
        assert ("null" in admitted) == k.nullable, f"{where}: nullable {k.nullable}, the JSON Schema admits {sorted(admitted)}"
        if k.item is not None:
            items = prop["items"] if k.kind is tuple else prop["additionalProperties"]
            item_kind, item_null = k.item
            assert _types(items) == {JSON_TYPES[item_kind]} | ({"null"} if item_null else set()), f"{where}: item types differ"
        if isinstance(k.kind, type) and issubclass(k.kind, Block):
            assert BLOCKS[k.kind] == (*BLOCKS[block], name), f"{where}: nested block {k.kind.__name__} is not checked here"


def test_every_block_of_the_manifest_is_typed() -> None:
    """The Manifest's block fields are the typed blocks, each of which this file compares with the schema."""
    hints = {f.name: f.type for f in fields(Manifest)}
    for name in ("bank", "scores", "threshold", "reference"):
        assert hints[name] in {b.__name__ for b in BLOCKS}, f"Manifest.{name} is {hints[name]}, not a typed block"


def test_a_manifest_read_and_written_again_is_byte_identical(bundle: Path, input_bundle: Path) -> None:
    for root in (bundle, input_bundle):
        data = (root / "manifest.json").read_bytes()
        manifest = parse_manifest(data, root / "manifest.json")
        assert isinstance(manifest.threshold, Threshold) and isinstance(manifest.bank, Bank)
        assert manifest.to_json().encode("utf-8") == data, f"{root}: the typed manifest does not write the bytes it was read from"


@pytest.mark.parametrize("case", sorted(GOOD))
def test_a_good_manifest_round_trips_through_the_typed_blocks(raw: dict[str, Any], case: str) -> None:
    good = _edited(raw, GOOD[case])
    again = Manifest.from_dict(copy.deepcopy(good)).to_dict()
    for name in ("bank", "scores", "threshold", "reference"):
        if name in good:
            assert again[name] == good[name], f"{case}: {name} changed on a round trip"
