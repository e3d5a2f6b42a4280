"""Exported and calibrated graphs import the default opset once and only the domains their nodes use (issue 27)."""

from __future__ import annotations

import onnx
import pytest
from onnx import helper

from salad.errors import BundleError
from salad.merge import normalise_opsets
from tests.calibration.conftest import Calibrated
from tests.opset_rules import assert_graphs_clean


def test_every_graph_of_a_calibrated_bundle_imports_only_what_it_uses(calibrated: Calibrated) -> None:
    names = assert_graphs_clean(calibrated.path)
    for precision in ("fp16", "int8"):  # the variants are among the graphs checked
        assert {f"encoder.{precision}.onnx", f"model.{precision}.onnx"} <= set(names)
    assert {"encoder.onnx", "scorer.onnx", "model.onnx"} <= set(names)


def _relu_model(*imports: tuple[str, int]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in imports])


def test_normalise_drops_repeats_and_unused_domains() -> None:
    model = normalise_opsets(_relu_model(("", 17), ("com.microsoft", 1), ("ai.onnx", 17), ("ai.onnx.ml", 5)))
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    onnx.checker.check_model(model, full_check=True)


def test_normalise_refuses_two_versions_of_one_domain() -> None:
    with pytest.raises(BundleError, match="versions 17 and 13"):
        normalise_opsets(_relu_model(("", 17), ("ai.onnx", 13)))
