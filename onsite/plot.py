"""A 2-D scatter of latent collections as a PNG, drawn with OpenCV (no matplotlib on a console)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from salad.fsutil import write_atomic
from salad.imageio import cv2

#: Distinguishable colours (BGR), Okabe–Ito; the target is drawn in black on top.
_COLOURS = [(0, 159, 230), (233, 180, 86), (115, 158, 0), (66, 228, 240), (178, 114, 0), (0, 94, 213), (167, 121, 204),
            (128, 128, 128), (60, 60, 200), (200, 60, 60)]


def scatter_png(collections: Mapping[str, np.ndarray], path: Path, target: str | None = None, title: str = "",
                labels: Mapping[str, str] | None = None, size: int = 900) -> Path:
    """Write a scatter of each collection's points (target in black) with a legend; returns the path."""
    pts = [np.asarray(v, dtype=np.float64)[:, :2] for v in collections.values() if len(v)]
    allp = np.concatenate(pts) if pts else np.zeros((1, 2))
    lo, hi = np.percentile(allp, 0.5, axis=0), np.percentile(allp, 99.5, axis=0)
    span = np.maximum(hi - lo, 1e-9)
    lo, hi = lo - 0.05 * span, hi + 0.05 * span
    margin, legend_w = 60, 300
    img = np.full((size, size + legend_w, 3), 255, np.uint8)

    def xy(p: np.ndarray) -> np.ndarray:
        u = (p - lo) / (hi - lo)
        return np.stack([margin + u[:, 0] * (size - 2 * margin), size - margin - u[:, 1] * (size - 2 * margin)], 1).astype(np.int32)

    cv2.rectangle(img, (margin, margin), (size - margin, size - margin), (200, 200, 200), 1)
    order = [n for n in collections if n != target] + ([target] if target is not None and target in collections else [])
    colours = {n: ((0, 0, 0) if n == target else _COLOURS[i % len(_COLOURS)]) for i, n in enumerate(order)}
    for name in order:
        for x, y in xy(np.asarray(collections[name], np.float64)[:, :2]):
            if margin <= x <= size - margin and margin <= y <= size - margin:
                cv2.circle(img, (int(x), int(y)), 3 if name == target else 2, colours[name], -1, cv2.LINE_AA)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, title[:90], (margin, 35), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "latent z1", (size // 2 - 40, size - 20), font, 0.5, (80, 80, 80), 1, cv2.LINE_AA)
    cv2.putText(img, "z2", (15, size // 2), font, 0.5, (80, 80, 80), 1, cv2.LINE_AA)
    for i, name in enumerate(order):
        y = margin + 20 + 28 * i
        cv2.circle(img, (size + 15, y - 5), 6, colours[name], -1, cv2.LINE_AA)
        text = (labels or {}).get(name, name)
        cv2.putText(img, text[:34], (size + 30, y), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    ok, data = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode the scatter plot for {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data.tobytes())
    return path
