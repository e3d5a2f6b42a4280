"""Style-aware site similarity (ASAP, Molina-Moreno et al., IEEE Access 2024): fitting the estimator.

docs/similarity.md has the method and the measurements. Import layout (docs/architecture.md §1): `model` and `fit`
need PyTorch (imported only by `salad similarity fit`), `sites` (synthetic sites for the benchmark) numpy only. What
reads a fitted estimator (running it with ONNX Runtime, distances, ranking, attaching it to a bundle, the style drift
check) is the site's side, salad.onsite, numpy + ONNX Runtime only.
"""
