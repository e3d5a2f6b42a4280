"""salad.onsite: the site's side of a bundle — does it fit these films, and do they still look like its site?

The drift guard of `salad score --drift` (`drift`) and its confirmed-normal spot check (`spotcheck`), and choosing a
bundle for a site's films (`choose`, `salad choose-bundle --by score|style`). numpy + ONNX Runtime only, on top of
salad.runtime's Scorer: never torch or onnx, so all of it runs on a console with salad-edge[runtime]
(docs/architecture.md §1). Fitting a similarity estimator, which needs PyTorch, is salad.similarity's.
"""

from __future__ import annotations

from .choose import BundleFit, rank_bundles
from .drift import DriftGuard

__all__ = ["DriftGuard", "rank_bundles", "BundleFit"]
