"""Adding a runtime, a score or a precision is one file plus one registration each (issue #27, acceptance 2).

A temporary module registers a dummy of each; the CLI's choices and parity's table show them without
any other change. A grep-style test keeps score names out of the code as literals: code names a score
through salad.scoring's constants and registry.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import click
import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]

PLUGIN = '''
"""A plug-in: one runtime, one score and one precision, each one class or entry with one registration."""

from salad.calibration.builders import Fp16Builder, register_builder
from salad.runtime.base import register_runner
from salad.runtime.onnxruntime_runner import OnnxRuntimeRunner
from salad.scoring import KNN_ANGLE, ScoreDef, register_score


@register_runner("ort-plugin", extra="runtime", devices=("cpu",))
class PluginRunner(OnnxRuntimeRunner):
    """ONNX Runtime under another name: the shape of a third-party backend."""


# knn_angle in degrees: its tolerances are knn_angle's (salad/scoring.py) × 180
register_score(ScoreDef("knn_degrees", "mean of the K smallest arccos(z·m_j), in degrees",
                        tolerances={"max": {"fp32": 1.8e-3, "fp16": 0.18, "int8": 5.4}},
                        derive=lambda outputs: outputs[KNN_ANGLE] * 180.0))


@register_builder("fp16-plugin", tolerances_like="fp16")
class PluginFp16Builder(Fp16Builder):
    """The float16 cast under another precision name."""

    precision = "fp16-plugin"
'''


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[ModuleType]:
    """Import the plug-in from a temporary folder; withdraw its registrations afterwards."""
    from salad.calibration.builders import BUILDERS
    from salad.precision import PRECISIONS
    from salad.runtime import RUNNERS
    from salad.scoring import SCORES

    (tmp_path / "salad_plugin_demo.py").write_text(PLUGIN)
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module("salad_plugin_demo")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("salad_plugin_demo", None)
        for registry, name in ((RUNNERS, "ort-plugin"), (SCORES, "knn_degrees"), (BUILDERS, "fp16-plugin"),
                               (PRECISIONS, "fp16-plugin")):
            if name in registry:
                registry.unregister(name)


def _choices(command: click.Command, param: str) -> list[str]:
    option = next(p for p in command.params if p.name == param)
    assert isinstance(option.type, click.Choice)
    return list(option.type.choices)


def test_a_plugin_runtime_score_and_precision_reach_the_cli_and_parity(plugin: ModuleType, bundle_copy: Path) -> None:
    from salad.calibration import calibrate_bundle
    from salad.calibration.cli import calibrate_command
    from salad.cli import main
    from salad.runtime import compare
    from salad.runtime.cli import parity_command

    train = main.get_command(click.Context(main), "train")
    assert train is not None and "knn_degrees" in _choices(train, "score")
    assert "ort-plugin" in _choices(parity_command, "runtimes") and "fp16-plugin" in _choices(parity_command, "precisions")
    assert "fp16-plugin" in _choices(calibrate_command, "precision")
    assert "fp16-plugin" in CliRunner().invoke(calibrate_command, ["--help"]).output
    assert "ort-plugin" in CliRunner().invoke(parity_command, ["--help"]).output

    report = calibrate_bundle(bundle_copy, "fp16-plugin", latency_runs=1)
    assert report.accepted, report.failures
    assert report.tolerances["label_agreement"] == 0.995  # borrowed from fp16 (tolerances_like)
    assert report.tolerances["max_abs_knn_degrees_diff"] == 0.18  # the plug-in score's own default

    parity = compare(bundle_copy, ["onnxruntime", "ort-plugin"], ["fp32", "fp16-plugin"])
    assert [r.name for r in parity.rows] == [
        "onnxruntime/fp32", "onnxruntime/fp16-plugin", "ort-plugin/fp32", "ort-plugin/fp16-plugin"]
    assert parity.passed, parity.failures
    table = parity.format_table()
    header = table.splitlines()[0]
    assert "max |Δknn_degrees|" in header and "ort-plugin" in table and "fp16-plugin" in table
    # the derived score is measured on every row: 180 × the |Δknn_angle| of the same films
    for row in parity.rows:
        degrees, angle = row.metrics["max_abs_knn_degrees_diff"], row.metrics["max_abs_knn_angle_diff"]
        assert degrees is not None and angle is not None and degrees == pytest.approx(180.0 * angle, rel=1e-6, abs=1e-12)
    same = CliRunner().invoke(parity_command, [str(bundle_copy), "--runtime", "ort-plugin", "--precision", "fp16-plugin"])
    assert same.exit_code == 0, same.output
    assert "ort-plugin" in same.output and "max |Δknn_degrees|" in same.output


#: Where a score's name may be spelled out: the score registry itself. Tests and docs may spell it too.
SCORE_REGISTRY = REPO / "salad" / "scoring.py"
PACKAGES = ("salad", "train", "export", "calibration", "runtime", "serve", "similarity", "onsite", "cli")


def test_no_score_name_is_spelled_as_a_literal_outside_the_score_registry() -> None:
    """Code names a score through salad.scoring (SCORE, KNN_ANGLE, SCORES), so renaming or adding one is one place.

    "score" alone is left out: it is also the command's name and a JSON field of every result.
    """
    from salad.scoring import SCORE, SCORES

    names = set(SCORES.names()) - {SCORE}
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if path == SCORE_REGISTRY:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and node.value in names:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert not found, "score names spelled as literals (use salad.scoring's constants):\n" + "\n".join(found)
