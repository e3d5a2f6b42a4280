"""The `resnet18` encoder, with `--weights`, trains, exports and scores like the `cxr` one (small and fast)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="training needs torch (install salad-edge[train])")

from salad.export import export_bundle  # noqa: E402
from salad.manifest import read_manifest  # noqa: E402
from salad.runtime import Scorer, compare  # noqa: E402
from salad.train.models import ModelConfig, ResNet18Encoder  # noqa: E402
from salad.train.trainer import train_run  # noqa: E402
from tests.conftest import SAMPLE_EVAL, SAMPLE_TRAIN, tiny_config  # noqa: E402


def test_resnet18_with_rgb_weights_trains_exports_and_scores(tmp_path: Path) -> None:
    # An RGB-pretrained-style state dict (3-channel first conv), as torchvision writes one: --weights folds it to grey.
    cfg = ModelConfig(encoder="resnet18", size=64, width=0.25)
    state = ResNet18Encoder(cfg).state_dict()
    grey = state["conv1.weight"].clone()
    state["conv1.weight"] = grey.repeat(1, 3, 1, 1) / 3
    weights = tmp_path / "resnet18-rgb.pt"
    torch.save(state, weights)

    run = tmp_path / "run"
    train_run(SAMPLE_TRAIN, run, tiny_config(encoder="resnet18", width=0.25, rounds=3, weights=str(weights)), val=SAMPLE_EVAL)
    loaded = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert loaded["model"]["encoder.conv1.weight"].shape[1] == 1

    bundle = export_bundle(run, tmp_path / "bundle", reference_films=8, allow_below_floors=True)
    manifest = read_manifest(bundle)
    assert manifest.source["run_config"]["model"]["encoder"] == "resnet18"
    films = sorted(SAMPLE_EVAL.rglob("*.jpeg"))[:6]
    with Scorer.from_bundle(bundle) as onnx_scorer, Scorer.from_bundle(bundle, runtime="torch") as torch_scorer:
        got, want = onnx_scorer.score(films), torch_scorer.score(films)
    assert [r.label for r in got] == [r.label for r in want]
    assert max(abs(a.score - b.score) for a, b in zip(got, want, strict=True)) <= 1e-5
    assert compare(bundle, ["onnxruntime"]).passed
