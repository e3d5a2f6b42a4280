"""The PyTorch reference backend, and parity of ONNX Runtime with it (acceptance 4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from salad.bundle import Bundle
from salad.errors import BundleError
from salad.runtime import BundleGraph, Scorer, create_runner

pytest.importorskip("torch", reason="the torch reference needs salad-edge[train]")


def run_graph(runtime: str, bundle: Path, name: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    graph = BundleGraph.from_bundle(Bundle.open(bundle), name)
    with create_runner(runtime, graph, max_batch=64) as runner:
        return runner.infer(feed)


def test_torch_and_onnxruntime_agree_on_the_reference_images(tiny_bundle: Path, reference: dict[str, np.ndarray]) -> None:
    feed = {"image": reference["image"]}
    torch_out = run_graph("torch", tiny_bundle, "model", feed)
    ort_out = run_graph("onnxruntime", tiny_bundle, "model", feed)
    assert np.abs(torch_out["score"] - ort_out["score"]).max() <= 1e-5
    assert np.abs(torch_out["knn_angle"] - ort_out["knn_angle"]).max() <= 1e-5
    assert (torch_out["embedding"] * ort_out["embedding"]).sum(axis=1).min() >= 0.99999
    # The torch runner is the same computation export stored as the oracle.
    np.testing.assert_allclose(torch_out["score"], reference["score"], atol=1e-6)
    np.testing.assert_allclose(torch_out["embedding"], reference["embedding"], atol=1e-6)


def test_encoder_and_scorer_graphs_agree_too(tiny_bundle: Path, reference: dict[str, np.ndarray]) -> None:
    images = {"image": reference["image"][:8]}
    z_torch = run_graph("torch", tiny_bundle, "encoder", images)["embedding"]
    z_ort = run_graph("onnxruntime", tiny_bundle, "encoder", images)["embedding"]
    assert (z_torch * z_ort).sum(axis=1).min() >= 0.99999
    emb = {"embedding": reference["embedding"][:8]}
    s_torch = run_graph("torch", tiny_bundle, "scorer", emb)
    s_ort = run_graph("onnxruntime", tiny_bundle, "scorer", emb)
    assert np.abs(s_torch["score"] - s_ort["score"]).max() <= 1e-5
    np.testing.assert_allclose(s_torch["score"], reference["score"][:8], atol=1e-6)


def test_scorer_labels_agree_between_torch_and_onnxruntime(tiny_bundle: Path, film_folder: Path) -> None:
    files = sorted(film_folder.rglob("*.jpeg"))
    with Scorer.from_bundle(tiny_bundle, runtime="torch") as ref, Scorer.from_bundle(tiny_bundle) as ort:
        a, b = ref.score(files), ort.score(files)
    assert max(abs(x.score - y.score) for x, y in zip(a, b, strict=True)) <= 1e-5
    assert [x.label for x in a] == [y.label for y in b]


def test_bank_as_input_graph_on_torch(bank_input_bundle: Path, reference: dict[str, np.ndarray]) -> None:
    bank = np.load(bank_input_bundle / "bank.npy", allow_pickle=False)
    feed = {"image": reference["image"][:4], "bank": bank}
    torch_out = run_graph("torch", bank_input_bundle, "model", feed)
    ort_out = run_graph("onnxruntime", bank_input_bundle, "model", feed)
    assert np.abs(torch_out["score"] - ort_out["score"]).max() <= 1e-5


def test_a_slim_bundle_has_no_torch_reference(slim_bundle: Path) -> None:
    assert not (slim_bundle / "checkpoint.pt").exists()
    scorer = Scorer.from_bundle(slim_bundle, runtime="torch")  # verification passes, nothing loaded yet
    with pytest.raises(BundleError, match=r"bundle has no checkpoint.pt \(exported with --slim\?\).*--runtime onnxruntime"):
        scorer.activate()
    with Scorer.from_bundle(slim_bundle) as ort:  # the console path does not need it
        assert ort.score(np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1)))[0].ok  # a ramp: a constant is refused
