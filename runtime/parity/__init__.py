"""Parity (docs/architecture.md §9): does every runtime × precision make the PyTorch reference's decisions?

`compare` replays one input set through the PyTorch reference and each requested runtime ×
precision, measures tensor-level (embedding cosine, |Δscore|, |Δknn_angle|) and decision-level
(label agreement at the bundle threshold, Spearman, ΔAUC/ΔAUPRC) differences and the count of
non-finite outputs, and checks each against the precision's tolerances from the manifest.

The input set is the bundle's reference.npz (preprocessed films with the PyTorch outputs stored at
export) plus, when `data` is given, a labelled folder or CSV whose PyTorch outputs are computed here
by the torch runtime. Without torch (a console) or without checkpoint.pt (a --slim bundle) only the
reference films are used, and the report says so. Every metric of every row is measured before
anything raises, so one run lists every failure with the tolerance that would have passed.

Modules: checks (metrics, bounds, Check), measure, tolerances, model (rows and report), render (table and
markdown), compare (the runs). Imports go one way: compare → model → render → checks.
"""

from __future__ import annotations

from salad.metrics import detection_metrics, require_sklearn, spearman

from .checks import (
    COMPARED_OUTPUTS,
    FIXED_TOLERANCES,
    LABELLED_METRICS,
    METRICS,
    REFERENCE_RUNTIME,
    Bound,
    Check,
    Outputs,
    format_value,
)
from .compare import compare, read_reference, run_images, torch_reference_reason
from .measure import measure
from .model import ParityReport, ParityRow
from .tolerances import parse_tolerance_options, resolve_tolerances

__all__ = [
    "COMPARED_OUTPUTS", "FIXED_TOLERANCES", "LABELLED_METRICS", "METRICS", "REFERENCE_RUNTIME", "Bound", "Check",
    "Outputs", "ParityReport", "ParityRow", "compare", "detection_metrics", "format_value", "measure",
    "parse_tolerance_options", "read_reference", "require_sklearn", "resolve_tolerances", "run_images", "spearman",
    "torch_reference_reason",
]
