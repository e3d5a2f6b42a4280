"""salad.serve: a DICOM node for the console (Storage SCP, watch folder, structured reports, forwarding).

Films arrive over the DICOM network (C-STORE) or in an export folder, are acknowledged once they are
safely on disk, and are scored from that disk queue by one activated `salad.runtime.Scorer`, so a
score here equals `salad score` on the same file. Needs `salad-edge[runtime,dicom]`; never torch or onnx.
docs/architecture.md §11 describes the queue, the ledger and the failure cases.
"""

from __future__ import annotations

from .node import Node, NodeConfig, parse_forward
from .store import Store

__all__ = ["Node", "NodeConfig", "Store", "parse_forward"]
