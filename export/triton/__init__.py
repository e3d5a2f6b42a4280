"""A bundle → a Triton Inference Server model repository (see repository.py for the layout and the checks).

Modules: config (model configs through Triton's protobuf), graphs (the served graphs and the chain
check), repository (export_triton and the repository's README).
"""

from __future__ import annotations

from .config import (
    ENSEMBLE_PLATFORM,
    ONNX_PLATFORM,
    TRITON_DTYPES,
    config_text,
    ensemble_config,
    onnx_model_config,
    triton_dtype,
    triton_tensor,
)
from .repository import export_triton, is_triton_repository

__all__ = [
    "ENSEMBLE_PLATFORM", "ONNX_PLATFORM", "TRITON_DTYPES", "config_text", "ensemble_config", "export_triton",
    "is_triton_repository", "onnx_model_config", "triton_dtype", "triton_tensor",
]
