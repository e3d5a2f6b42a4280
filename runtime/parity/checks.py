"""Parity's view of the verdict rule (salad/verdict.py): its metrics and bounds, the fixed tolerances, `Check`.

The metrics, their bounds, default tolerances and columns are defined once in salad.verdict; this
module names what parity measures on top of them (the compared outputs, the labelled-only figures).
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np

from salad.bundle import EMBEDDING
from salad.scoring import SCORE_NAMES
from salad.verdict import Bound, Check, fixed_tolerances, format_value, json_number, judge, metrics

Outputs: TypeAlias = "dict[str, np.ndarray]"

#: The runtime whose fp32 outputs every other runtime and precision is held to.
REFERENCE_RUNTIME = "torch"
#: Outputs every compared graph must produce (the bundle's merged "model" graph).
COMPARED_OUTPUTS = (EMBEDDING, *SCORE_NAMES)

#: Every checked metric and how its value meets a tolerance (salad.verdict.metrics, as of import).
METRICS: dict[str, Bound] = {name: m.bound for name, m in metrics().items()}
#: NaN or infinite outputs are never acceptable, whatever a manifest or caller says.
FIXED_TOLERANCES = fixed_tolerances()
#: Metrics measured on the labelled --data films only.
LABELLED_METRICS = ("auc", "auprc", "reference_auc", "reference_auprc", "delta_auc", "delta_auprc")

__all__ = [
    "COMPARED_OUTPUTS", "FIXED_TOLERANCES", "LABELLED_METRICS", "METRICS", "REFERENCE_RUNTIME", "Bound", "Check", "Outputs",
    "format_value", "json_number", "judge",
]
