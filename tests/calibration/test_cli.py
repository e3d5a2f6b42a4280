"""`salad calibrate`: the click command, its defaults, its errors, and that importing it stays light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from salad.calibration import cli
from salad.calibration.graphs import CALIBRATION_METHODS, MIN_INT8_CHANNELS
from salad.calibration.sources import MIN_IMAGES
from salad.manifest import read_manifest
from tests.calibration.conftest import SAMPLE_EVAL

REPO = Path(__file__).resolve().parents[2]


def test_cli_defaults_are_the_librarys() -> None:
    assert cli.METHODS == CALIBRATION_METHODS and cli.MIN_IMAGES == MIN_IMAGES and cli.MIN_CHANNELS == MIN_INT8_CHANNELS


def test_importing_the_command_loads_no_heavy_library() -> None:
    code = "import sys, salad.calibration.cli; print(sorted({'torch', 'onnx', 'onnxruntime'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_cli_too_few_films_is_a_one_line_error(bundle_copy: Path) -> None:
    result = CliRunner().invoke(cli.calibrate_command, [str(bundle_copy), "--precision", "int8", "--data", str(SAMPLE_EVAL)])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and "found 40 normal film(s)" in result.output and "Traceback" not in result.output


def test_cli_adds_the_fp16_variant(bundle_copy: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.calibrate_command, [str(bundle_copy), "--precision", "fp16", "--report-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"added encoder.fp16.onnx, model.fp16.onnx to {bundle_copy}"
    assert lines[1].startswith("vs PyTorch: label agreement 1.0000, ΔAUC ") and "(on the reference films)" in lines[1]
    assert lines[-1] == f"report: {tmp_path / 'r' / 'fp16.md'}"
    assert read_manifest(bundle_copy).precisions() == ["fp32", "fp16"]


def test_registered_in_the_salad_group() -> None:
    from salad.cli import main

    result = CliRunner().invoke(main, ["calibrate", "--help"])
    assert result.exit_code == 0 and "--max-auc-drop" in result.output


def test_calibrate_usage_errors_exit_2(bundle_copy: Path) -> None:
    unknown = CliRunner().invoke(cli.calibrate_command, [str(bundle_copy), "--precision", "fp32"])
    assert unknown.exit_code == 2 and "'fp32' is not one of 'fp16', 'int8'" in unknown.output
    needs = CliRunner().invoke(cli.calibrate_command, [str(bundle_copy), "--precision", "int8", "--max-auc-drop", "0.01"])
    assert needs.exit_code == 2, needs.output
    assert "--max-auc-drop needs --labelled LABELLED" in needs.output and "Traceback" not in needs.output
