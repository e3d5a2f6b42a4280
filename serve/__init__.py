"""salad.serve: a DICOM node for the console (Storage SCP, watch folder, structured reports, forwarding).

Films arrive over the DICOM network (C-STORE) or in an export folder, are acknowledged once they are
safely on disk, and are scored from that disk queue by one activated `salad.runtime.Scorer`, so a
score here equals `salad score` on the same file. Needs `salad-edge[runtime,dicom]`; never torch or onnx.
docs/architecture.md §11 describes the queue, the ledger and the failure cases.
"""

from __future__ import annotations

from typing import Any

from salad.lazy import lazy_attribute

#: name → module: imported on first use, so that `salad --help` (which loads salad.serve.cli) works
#: without the dicom extra, and `salad serve` can then name the extra to install.
_LAZY = {"Node": "salad.serve.node", "NodeConfig": "salad.serve.config", "parse_forward": "salad.serve.forward",
         "Store": "salad.serve.store"}

__all__ = ["Node", "NodeConfig", "Store", "parse_forward"]


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY, name)
