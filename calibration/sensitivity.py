"""Per-layer quantisation error of an int8 encoder, with ONNX Runtime's qdq_loss_debug helpers.

For every quantized layer: the signal-to-quantisation-noise ratio (SQNR, dB) of its weights, of its
input activation across its own Q/DQ pair (the noise this layer's quantiser injects), and of its
output against the float encoder (the noise accumulated up to here). Layers are ranked by the noise
they inject themselves, NSR = 10^(-SQNR_weight/10) + 10^(-SQNR_input/10): the accuracy-bounded
mode keeps the top of that ranking in float first.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .graphs import QUANTIZED_OPS, Layer
from .sources import BATCH, CalibrationSource, OrtCalibrationReader

#: Films the error analysis runs on (all intermediate tensors of both encoders are held in memory).
ANALYSIS_IMAGES = 16


@dataclass
class LayerError:
    """One weighted layer of the encoder and its quantisation error (None where it stayed float)."""

    name: str
    op_type: str
    channels_in: int
    channels_out: int
    quantized: bool
    weight_sqnr_db: float | None = None
    input_sqnr_db: float | None = None
    output_sqnr_db: float | None = None
    reason_float: str | None = None  # why the layer stayed float

    @property
    def noise(self) -> float:
        """Noise-to-signal power this layer's own quantisers inject (0 for float layers)."""
        return sum(10 ** (-s / 10) for s in (self.weight_sqnr_db, self.input_sqnr_db) if s is not None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("weight_sqnr_db", "input_sqnr_db", "output_sqnr_db"):
            if d[k] is not None:
                d[k] = round(float(d[k]), 2) if math.isfinite(d[k]) else None
        d["noise"] = self.noise
        return d


def layer_errors(
    float_encoder: Path, qdq_encoder: Path, layers: list[Layer], source: CalibrationSource, float_reasons: dict[str, str],
) -> list[LayerError]:
    """Measure every weighted layer's quantisation error on the first ANALYSIS_IMAGES calibration films."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        compute_weight_error,
        create_activation_matching,
        create_weight_matching,
        modify_model_output_intermediate_tensors,
    )

    subset = CalibrationSource(source.paths[:ANALYSIS_IMAGES], source.images[:ANALYSIS_IMAGES], source.source, source.found)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="salad-layer-errors-") as tmp:
            aug_f, aug_q = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx"
            modify_model_output_intermediate_tensors(str(float_encoder), str(aug_f), op_types_for_saving=list(QUANTIZED_OPS))
            modify_model_output_intermediate_tensors(
                str(qdq_encoder), str(aug_q), op_types_for_saving=[*QUANTIZED_OPS, "QuantizeLinear", "DequantizeLinear"]
            )
            float_acts = collect_activations(str(aug_f), OrtCalibrationReader(subset, batch=BATCH))
            qdq_acts = collect_activations(str(aug_q), OrtCalibrationReader(subset, batch=BATCH))
            activation = compute_activation_error(create_activation_matching(qdq_acts, float_acts))
            weights = compute_weight_error(create_weight_matching(str(float_encoder), str(qdq_encoder)))
    finally:
        root.setLevel(level)
    nodes = {n.name: n for n in onnx.load(str(float_encoder), load_external_data=False).graph.node}
    out = []
    for layer in layers:
        node = nodes.get(layer.name)
        err = LayerError(layer.name, layer.op_type, layer.channels_in, layer.channels_out, layer.name not in float_reasons,
                         reason_float=float_reasons.get(layer.name))
        if node is not None and err.quantized:
            err.weight_sqnr_db = weights.get(node.input[1])
            err.input_sqnr_db = activation.get(node.input[0], {}).get("qdq_err")
            err.output_sqnr_db = _output_sqnr(node.output[0], activation, float_acts, qdq_acts)
        out.append(err)
    return out


def _output_sqnr(name: str, activation: dict[str, dict[str, float]], float_acts: dict[str, Any], qdq_acts: dict[str, Any]) -> float | None:
    """SQNR of a layer's output against the float encoder (after its output Q/DQ when it has one)."""
    if "xmodel_err" in activation.get(name, {}):
        return activation[name]["xmodel_err"]
    if name in float_acts and name in qdq_acts:
        a = np.concatenate(float_acts[name]).ravel().astype(np.float64)
        b = np.concatenate(qdq_acts[name]).ravel().astype(np.float64)
        eps = float(np.finfo(np.float32).eps)
        return 20 * math.log10(max(float(np.linalg.norm(a)), eps) / max(float(np.linalg.norm(a - b)), eps))
    return None


def rank_by_noise(errors: list[LayerError]) -> list[LayerError]:
    """Quantized layers, noisiest first (ties: earlier layer first)."""
    quantized = [e for e in errors if e.quantized]
    order = {e.name: i for i, e in enumerate(errors)}
    return sorted(quantized, key=lambda e: (-e.noise, order[e.name]))
