"""Style-aware site similarity (ASAP, Molina-Moreno et al., IEEE Access 2024): bundle selection and drift warnings.

docs/similarity.md has the method and the measurements. Import layout (docs/architecture.md §1):
`distance` and `drift` need numpy only, `estimator` and `attach` numpy + ONNX Runtime (the `[runtime]`
install), `model` and `fit` PyTorch (imported only by `salad similarity fit`).
"""
