"""Banks that matter in practice: 200,000 rows, and a run trained with known anomalies (AR setting)."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from salad.export import export_bundle
from salad.manifest import read_manifest
from salad.scoring import score_numpy
from salad.train.evaluate import load_run
from tests.export.helpers import unit_rows


def bank_rows(path: Path) -> np.ndarray:
    (init,) = [i for i in onnx.load(str(path)).graph.initializer if i.name == "bank_t"]
    return numpy_helper.to_array(init).T


def test_bank_of_200k_rows(make_run: Callable[..., Path], tmp_path: Path) -> None:
    bank = unit_rows(200_000, seed=1)
    out = export_bundle(make_run(bank=bank), tmp_path / "big", slim=True, reference_films=16)
    m = read_manifest(out)
    assert m.bank.rows == 200_000 and m.bank.external_data is None
    assert m.graph("scorer").details["parity"]["max_abs_diff"]["score"] <= 1e-5
    assert bank_rows(out / "scorer.onnx").tobytes() == bank.tobytes()
    with np.load(out / "reference.npz", allow_pickle=False) as data:
        z, score = data["embedding"], data["score"]
    sess = ort.InferenceSession(str(out / "scorer.onnx"), providers=["CPUExecutionProvider"])
    s_ort, k_ort = sess.run(None, {"embedding": z})
    want = score_numpy(z, bank, m.k)
    assert np.abs(s_ort - want["score"]).max() <= 1e-5 and np.abs(k_ort - want["knn_angle"]).max() <= 1e-5
    assert np.abs(s_ort - score).max() <= 1e-5


def test_known_anomalies_are_dropped_from_the_bank(sample_train: Path, sample_eval: Path, tmp_path: Path) -> None:
    """A real (one-epoch) run trained with --known-anomaly-ratio exports only its normal rows."""
    from salad.train.trainer import train_run
    from tests.conftest import KERMANY, tiny_config

    data = tmp_path / "mixed.csv"
    with open(data, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows([str(p), 0] for p in sorted(sample_train.iterdir()))
        # Abnormal films other than the validation ones: training never sees a validation film.
        w.writerows([str(p), 1] for p in sorted((KERMANY / "train" / "pneumonia").glob("*.jpeg"))[:40])
    run = tmp_path / "ar"
    # One pre-training epoch keeps the test at ~10 s; without --bank-refresh the bank rows stay well apart
    # from the embeddings (a refreshed bank after one epoch is collapsed onto them: see test_errors).
    cfg = tiny_config(pretrain_epochs=1, rounds=0, bank_refresh=False, known_anomaly_ratio=0.05)
    train_run(data, run, cfg, val=sample_eval)
    out = export_bundle(run, tmp_path / "bundle", slim=True, reference_films=8)

    m = read_manifest(out)
    state = load_run(run)
    labels = state.bank_labels.numpy()
    n_anomalous = int((labels == 1).sum())
    assert n_anomalous > 0 and m.bank.dropped_anomalous == n_anomalous
    assert m.bank.rows == len(labels) - n_anomalous == 200
    import torch

    full = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["bank"].numpy()
    exported = bank_rows(out / "model.onnx")
    assert exported.tobytes() == np.ascontiguousarray(full[labels == 0]).tobytes()
    anomalous = full[labels == 1]
    assert not (np.abs(exported[:, None, :] - anomalous[None]).max(axis=2) == 0).any()
