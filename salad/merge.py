"""How a bundle's end-to-end graph is made from its encoder and scorer graphs (docs/architecture.md §4).

One merge for export (fp32) and calibration (fp16/int8 variants), so every model*.onnx has the same
names and outputs. onnx is imported when a merge runs: the core itself does not need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import salad
from salad.scoring import SCORE_NAMES

if TYPE_CHECKING:
    import onnx

MERGED_OUTPUTS = ("embedding", *SCORE_NAMES)


def merge_encoder_scorer(encoder: onnx.ModelProto, scorer: onnx.ModelProto) -> onnx.ModelProto:
    """model.onnx: image (+ bank) → embedding, score, knn_angle; internal names prefixed, I/O names kept."""
    from onnx import compose

    enc = compose.add_prefix(encoder, "encoder/", rename_inputs=False, rename_outputs=False)
    sco = compose.add_prefix(scorer, "scorer/", rename_inputs=False, rename_outputs=False)
    return compose.merge_models(
        enc, sco, io_map=[("embedding", "embedding")], outputs=list(MERGED_OUTPUTS),
        producer_name="salad-edge", producer_version=salad.__version__,
    )
