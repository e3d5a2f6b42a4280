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
