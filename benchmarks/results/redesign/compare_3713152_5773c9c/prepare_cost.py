"""Per-film cost of the Scorer's input step (`Scorer._prepare`: checks + preprocessing) and of preprocessing alone.

Run from a checkout's root with its own Python, on a bundle that checkout exported:
    python benchmarks/results/redesign/compare_3713152_5773c9c/prepare_cost.py BUNDLE LABEL
The 64 films of salad/sample/eval are decoded first; each figure is the median of 15 passes over them.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from salad.imageio import read_image
from salad.preprocess import preprocess
from salad.runtime.scorer import Scorer


def per_film_us(fn: Callable[[np.ndarray], object], films: list[np.ndarray]) -> float:
    """Median over 15 passes of the microseconds per film that `fn` takes."""
    passes = []
    for _ in range(15):
        start = time.perf_counter_ns()
        for film in films:
            fn(film)
        passes.append((time.perf_counter_ns() - start) / 1e3 / len(films))
    return statistics.median(passes)


def main(bundle: str, label: str) -> None:
    paths = sorted(p for p in Path("salad/sample/eval").rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    films = [read_image(p) for p in paths][:64]
    scorer = Scorer.from_bundle(bundle)
    cfg = scorer.preprocess_config
    prepare = per_film_us(lambda f: scorer._prepare("film", f), films)
    alone = per_film_us(lambda f: preprocess(f, cfg), films)
    print(f"{label}: {len(films)} films {films[0].shape}: Scorer._prepare {prepare:.1f} µs/film, preprocess alone {alone:.1f} µs/film")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
