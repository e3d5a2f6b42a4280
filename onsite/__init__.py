"""salad.onsite: the site's side of a bundle — does it fit these films, and do they still look like its site?

The drift guard of `salad score --drift` (`drift`) and its confirmed-normal spot check (`spotcheck`); choosing a bundle
for a site's films (`choose`, and `cli`: `salad choose-bundle --by score|style`); and similarity's reading side: a
fitted ASAP estimator run with ONNX Runtime (`estimator`), its distances, ranking and EQC (`distance`, `forms`), the
estimator attached to a bundle and read back for the style check (`attach`) and the ranking's scatter (`plot`).
numpy + ONNX Runtime only, on top of salad.runtime's Scorer: never torch or onnx, so all of it runs on a console with
salad-edge[runtime] (docs/architecture.md §1). Fitting an estimator needs PyTorch and is salad.similarity's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from salad.lazy import lazy_attribute

if TYPE_CHECKING:
    from .choose import BundleFit, rank_bundles
    from .drift import DriftGuard

__all__ = ["DriftGuard", "rank_bundles", "BundleFit"]

#: Loaded when first used, so that similarity's fit (which reads `forms`, `distance`, `estimator`) imports no Scorer.
_LAZY = {"DriftGuard": "salad.onsite.drift", "rank_bundles": "salad.onsite.choose", "BundleFit": "salad.onsite.choose"}


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY, name)
