"""The conv blocks' activation (ModelConfig.activation): relu trains and exports Relu nodes; runs from before it stay leaky_relu."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from salad.cli import main
from salad.errors import ConfigError
from salad.export import export_bundle
from salad.export.graphs import export_encoder
from salad.export.spec import graph_contracts
from salad.preprocess import load_batch
from salad.train.config import PRESETS, TrainConfig
from salad.train.evaluate import load_run
from salad.train.models import ACTIVATIONS, EMBEDDING_DIM, ModelConfig
from tests.conftest import SAMPLE_TRAIN
from tests.export.helpers import RUN_FILES


def _ops(path: Path) -> Counter[str]:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_choices_and_the_presets() -> None:
    assert ACTIVATIONS.names() == ["leaky_relu", "relu"]
    assert {name: cfg.activation for name, cfg in PRESETS.items()} == dict.fromkeys(PRESETS, "leaky_relu")
    with pytest.raises(ConfigError, match=r"unknown activation 'gelu'; expected one of \['leaky_relu', 'relu'\]"):
        TrainConfig(activation="gelu").validate()


def test_a_relu_run_trains_one_step_and_exports_relu_nodes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # 180 training films at batch 128: one optimiser step in the one epoch
    args = ["train", "--data", str(SAMPLE_TRAIN), "--out", str(run), "--preset", "cpu", "--activation", "relu",
            "--size", "64", "--width", "0.125", "--pretrain-epochs", "1", "--rounds", "0", "--batch-size", "128",
            "--centre-tilt", "0", "--threads", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["activation"] == config["train"]["activation"] == "relu"
    assert 128 <= config["n_train"] < 256
    loaded = load_run(run)
    assert loaded.model.config.activation == "relu"

    # The export stage's encoder graph (a whole bundle refuses a one-step run: its embeddings sit on the bank rows)
    proto = export_encoder(loaded.model, graph_contracts(64, EMBEDDING_DIM, 1, bank_as_input=False)["encoder"], 17)
    onnx.checker.check_model(proto, full_check=True)
    ops = Counter(node.op_type for node in proto.graph.node)
    assert ops["Relu"] == 2 * (ModelConfig(size=64).stages + 1) and "LeakyRelu" not in ops, ops
    films = load_batch(sorted(SAMPLE_TRAIN.iterdir())[:4], loaded.preprocessing)
    (onnx_out,) = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"image": films})
    with torch.no_grad():
        torch_out = loaded.model.embed(torch.from_numpy(films)).numpy()
    np.testing.assert_allclose(onnx_out, torch_out, atol=1e-5)


def _without_activation(src: Path, dst: Path) -> Path:
    """A copy of run `src` as the toolkit wrote it before ModelConfig.activation: no such key in config.json or the checkpoint."""
    dst.mkdir()
    for name in RUN_FILES:
        shutil.copyfile(src / name, dst / name)
    config = json.loads((src / "config.json").read_text())
    state = torch.load(src / "checkpoint.pt", map_location="cpu", weights_only=True)
    for block in (config, state["config"]):
        assert block["model"].pop("activation") == block["train"].pop("activation") == "leaky_relu"
    torch.save(state, dst / "checkpoint.pt")
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


def test_a_run_from_before_the_option_is_leaky_relu_and_exports_the_same_graphs(tiny_run: Path, bundle: Path, tmp_path: Path) -> None:
    old = _without_activation(tiny_run, tmp_path / "old")
    assert ModelConfig.from_dict(json.loads((old / "config.json").read_text())["model"]).activation == "leaky_relu"
    assert TrainConfig.from_dict(json.loads((old / "config.json").read_text())["train"]).activation == "leaky_relu"
    assert load_run(old).model.config.activation == "leaky_relu"

    out = export_bundle(old, tmp_path / "bundle")  # the `bundle` fixture's settings
    for name in ("encoder.onnx", "scorer.onnx", "model.onnx"):
        assert _sha(out / name) == _sha(bundle / name), name
    with np.load(out / "reference.npz") as new_ref, np.load(bundle / "reference.npz") as ref:
        np.testing.assert_array_equal(new_ref["embedding"], ref["embedding"])
        # torch's float reductions in the score may differ in the last bits between two processes' thread schedules
        np.testing.assert_allclose(new_ref["score"], ref["score"], atol=1e-5)
    ops = _ops(out / "encoder.onnx")
    assert ops["LeakyRelu"] == 2 * (ModelConfig(size=64).stages + 1) and "Relu" not in ops, ops
