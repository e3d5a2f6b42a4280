"""Every JSON a command writes carries its schema name and validates against the published JSON Schema."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from salad.cli import main
from salad.schema import JSON_SCHEMAS, json_schema
from tests.conftest import check_json_schema
from tests.runtime.conftest import SAMPLE_EVAL, SAMPLE_TRAIN

FILMS = sorted((SAMPLE_EVAL / "normal").iterdir())[:3]


def check(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    return check_json_schema(kind, payload)


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout  # the JSON; progress and per-epoch lines go to stderr


def test_every_published_schema_is_a_valid_draft_2020_12_schema() -> None:
    kinds = sorted(p.stem for p in JSON_SCHEMAS.glob("*.json"))
    assert {"manifest", "score", "parity", "bench", "evaluation", "inspect", "calibration", "validation", "train",
            "similarity-ranking", "bundle-choice"} <= set(kinds)
    for kind in kinds:
        schema = json_schema(kind)
        jsonschema.Draft202012Validator.check_schema(schema)
        if kind != "manifest":  # the manifest has its own schema_version
            assert schema["properties"]["schema"] == {"const": schema["$id"]} and schema["$id"].startswith("salad-")


def test_score_inspect_validate_and_the_manifest(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.json"
    result = CliRunner().invoke(main, ["score", str(tiny_bundle), *map(str, FILMS), str(tmp_path / "missing.png"),
                                       "--json", str(out)])
    assert result.exit_code == 1  # one film could not be scored: its error row is part of the schema too
    scores = check("score", json.loads(out.read_text()))
    assert scores["schema"] == "salad-score/1" and [("error" in r) for r in scores["results"]] == [False] * 3 + [True]
    assert check("inspect", json.loads(run("inspect", str(tiny_bundle), "--json")))["schema"] == "salad-inspect/1"
    check("validation", json.loads(run("validate", str(tiny_bundle), "--json", "-")))
    check("manifest", json.loads((tiny_bundle / "manifest.json").read_text()))


def test_parity_keeps_one_shape_for_one_row_or_many(tiny_bundle: Path) -> None:
    one = check("parity", json.loads(run("parity", str(tiny_bundle), "--json", "-")))
    two = check("parity", json.loads(run("parity", str(tiny_bundle), "--runtime", "onnxruntime", "--runtime", "torch",
                                         "--precision", "fp32", "--json", "-")))
    assert one.keys() == two.keys() and one["schema"] == "salad-parity/1"
    assert (len(one["rows"]), len(two["rows"])) == (1, 2) and one["rows"][0].keys() == two["rows"][0].keys()
    flat = {**one, **one["rows"][0]}  # the shape before salad-parity/1: one row's metrics at the top level
    del flat["rows"]
    with pytest.raises(AssertionError, match="'rows' is a required property"):
        check("parity", flat)


def test_a_failed_validation_writes_its_structured_failures(tiny_bundle: Path, tmp_path: Path) -> None:
    from salad.manifest import read_manifest

    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "tight"))
    manifest = read_manifest(bundle, verify=False)
    manifest.parity["fp32"] = {**manifest.parity["fp32"], "max_abs_score_diff": 1e-12, "max_abs_knn_angle_diff": 1e-12}
    manifest.write(bundle)
    out = tmp_path / "validation.json"
    result = CliRunner().invoke(main, ["validate", str(bundle), "--json", str(out)])
    assert result.exit_code == 3, result.output  # the checks ran and failed
    report = check("validation", json.loads(out.read_text()))
    assert report["valid"] is False and report["failures"]
    assert {f["check"] for f in report["failures"]} == {"parity"} and all(f["message"] for f in report["failures"])


def test_evaluate_train_summary_and_calibration_report(
    tiny_run: Path, calibrated_bundle: Callable[[str], Path], tmp_path: Path
) -> None:
    out = tmp_path / "eval.json"
    run("evaluate", str(tiny_run), "--labelled", str(SAMPLE_EVAL), "--json", str(out))
    assert check("evaluation", json.loads(out.read_text()))["schema"] == "salad-evaluation/1"
    fp16 = calibrated_bundle("fp16")
    assert check("calibration", json.loads((fp16 / "calibration" / "fp16.json").read_text()))["accepted"] is True
    trained = run("train", "--data", str(SAMPLE_TRAIN), "--out", str(tmp_path / "run"), "--size", "64", "--width",
                  "0.125", "--pretrain-epochs", "1", "--rounds", "0", "--batch-size", "16", "--k", "5", "--threads", "1",
                  "--no-bank-refresh")
    assert check("train", json.loads(trained.strip().splitlines()[-1]))["epochs"] == 1
