"""salad.calibration: fp16 and int8 (Q/DQ) variants of a bundle's graphs, measured in AUC against PyTorch.

`calibrate_bundle(bundle, "fp16")` adds encoder.fp16.onnx and model.fp16.onnx; `calibrate_bundle(bundle,
"int8", data=NORMALS)` adds encoder.int8.onnx and model.int8.onnx calibrated on real normal films.
The scoring graph stays float32 in both. Names resolve lazily, so importing salad.calibration.cli
(for the `salad` command) pulls in neither torch, onnx nor onnxruntime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from salad.lazy import lazy_attribute

if TYPE_CHECKING:
    from salad.calibration.calibrate import calibrate_bundle
    from salad.calibration.report import CalibrationReport
    from salad.calibration.sources import CalibrationSource, OrtCalibrationReader
    from salad.calibration.tolerances import VARIANT_TOLERANCES, default_tolerances

__all__ = ["calibrate_bundle", "CalibrationReport", "CalibrationSource", "OrtCalibrationReader", "VARIANT_TOLERANCES",
           "default_tolerances"]

_LAZY = {
    "calibrate_bundle": "salad.calibration.calibrate",
    "CalibrationReport": "salad.calibration.report",
    "CalibrationSource": "salad.calibration.sources",
    "OrtCalibrationReader": "salad.calibration.sources",
    "VARIANT_TOLERANCES": "salad.calibration.tolerances",
    "default_tolerances": "salad.calibration.tolerances",
}


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY, name)
