"""salad.export: a trained run → a self-verifying ONNX bundle (docs/architecture.md §4–5).

`export_bundle(run, out)` writes encoder.onnx, scorer.onnx (the fused kNN-arccos score with the
normal memory bank), model.onnx (both merged), reference.npz, checkpoint.pt and manifest.json, and
keeps the bundle only if ONNX Runtime reproduces PyTorch; `validate_bundle(bundle)` re-runs those
checks on any bundle. Names resolve lazily, so importing salad.export.cli (for the `salad` command)
pulls in neither torch nor onnx.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from salad.lazy import lazy_attribute

if TYPE_CHECKING:
    from salad.export.bundle import export_bundle
    from salad.export.validate import validate_bundle

__all__ = ["export_bundle", "validate_bundle"]

_LAZY = {"export_bundle": "salad.export.bundle", "validate_bundle": "salad.export.validate"}


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY, name)
