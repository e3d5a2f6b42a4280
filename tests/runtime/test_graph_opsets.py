"""The exported bundle forms' graphs import the default opset once and only the domains they use (issue 27)."""

from __future__ import annotations

from pathlib import Path

from tests.opset_rules import assert_graphs_clean


def test_exported_graphs_import_only_what_they_use(tiny_bundle: Path, bank_input_bundle: Path, external_bank_bundle: Path) -> None:
    for bundle in (tiny_bundle, bank_input_bundle, external_bank_bundle):
        assert set(assert_graphs_clean(bundle)) == {"encoder.onnx", "scorer.onnx", "model.onnx"}
