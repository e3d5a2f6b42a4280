"""salad.runtime: score bundles with PyTorch (reference), ONNX Runtime, OpenVINO or TensorRT: one Runner API.

Importing this package registers the four backends without importing torch, onnx, onnxruntime, openvino
or tensorrt: each backend imports its library when a runner activates, and a missing one raises
BackendUnavailableError naming the extra to install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from salad.lazy import lazy_attribute

# Importing the modules registers the backends.
from . import onnxruntime_runner, openvino_runner, tensorrt_runner, torch_runner, triton_client  # noqa: F401
from .base import (
    RUNNERS,
    BundleGraph,
    Runner,
    available_runners,
    create_runner,
    register_runner,
    runner_class,
    runner_names,
)
from .onnxruntime_runner import OnnxRuntimeRunner
from .openvino_runner import OpenVinoRunner
from .parity import ParityReport, ParityRow, compare
from .scorer import Result, Scorer, Timings
from .tensorrt_runner import TensorRTRunner
from .torch_runner import TorchRunner
from .triton_client import TritonRunner

if TYPE_CHECKING:
    from .bench import BenchReport, run_bench

__all__ = [
    "RUNNERS",
    "BundleGraph",
    "Runner",
    "register_runner",
    "runner_names",
    "runner_class",
    "create_runner",
    "available_runners",
    "Scorer",
    "Result",
    "Timings",
    "compare",
    "ParityReport",
    "ParityRow",
    "TorchRunner",
    "TritonRunner",
    "OnnxRuntimeRunner",
    "OpenVinoRunner",
    "TensorRTRunner",
    "run_bench",
    "BenchReport",
]

#: `salad bench`'s API, loaded when first used (it is not needed to score).
_LAZY = {"run_bench": "salad.runtime.bench", "BenchReport": "salad.runtime.bench"}


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY, name)
