"""A real export of the tiny run: layout, manifest contract, bank bytes, ORT-vs-PyTorch parity, bank forms."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper

from salad.data import read_samples
from salad.drift import exposure as film_exposure
from salad.errors import BundleError, SaladError
from salad.export import export_bundle, validate_bundle
from salad.manifest import Manifest, read_manifest, sha256_file
from salad.preprocess import load_batch, load_image
from salad.scoring import decide, score_numpy, score_torch
from salad.train.evaluate import load_run

CONTRACT = {
    "encoder": (["image"], ["embedding"]),
    "scorer": (["embedding"], ["score", "knn_angle"]),
    "model": (["image"], ["embedding", "score", "knn_angle"]),
}


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def bank_initializer(path: Path) -> np.ndarray:
    """The bank rows [N, D] held by a scorer/model file (stored transposed as 'bank_t')."""
    model = onnx.load(str(path))
    (init,) = [i for i in model.graph.initializer if i.name == "bank_t"]
    return numpy_helper.to_array(init).T


def run_in_batches(sess: ort.InferenceSession, feed: dict[str, np.ndarray], batch: int) -> list[np.ndarray]:
    n = len(next(iter(feed.values())))
    parts = [sess.run(None, {k: v[i : i + batch] for k, v in feed.items()}) for i in range(0, n, batch)]
    return [np.concatenate(p) for p in zip(*parts, strict=True)]


def test_layout_and_manifest_contract(bundle: Path, tiny_run: Path) -> None:
    assert sorted(p.name for p in bundle.iterdir()) == [
        "checkpoint.pt", "encoder.onnx", "manifest.json", "model.onnx", "reference.npz", "scorer.onnx",
    ]
    m = read_manifest(bundle)  # verifies every sha256
    for key, (inputs, outputs) in CONTRACT.items():
        spec = m.graph(key)
        assert spec.file == f"{key}.onnx" and spec.precision == "fp32" and spec.opset >= 17
        assert [t.name for t in spec.inputs] == inputs and [t.name for t in spec.outputs] == outputs
        assert all(t.dtype == "float32" and t.shape[0] == "batch" for t in (*spec.inputs, *spec.outputs))
        assert spec.sha256 == sha256_file(bundle / spec.file)
        proto = onnx.load(str(bundle / spec.file), load_external_data=False)
        assert [i.name for i in proto.graph.input] == inputs and [o.name for o in proto.graph.output] == outputs
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert m.graph("encoder").inputs[0].shape == ["batch", 1, 64, 64]
    assert m.graph("model").outputs[0].shape == ["batch", 200]
    assert m.k == 20 and m.embedding_dim == 200 and m.precisions() == ["fp32"]
    assert m.preprocessing["size"] == 64 and m.preprocess_config.size == 64
    assert m.bank.rows == 200 and m.bank.dropped_anomalous == 0
    assert m.bank.form == "initializer" and m.bank.file is None
    assert set(m.files) == {"reference.npz", "checkpoint.pt"}
    assert m.source["checkpoint_sha256"] == sha256_file(tiny_run / "checkpoint.pt") == m.files["checkpoint.pt"]
    assert m.source["run_config"] == json.loads((tiny_run / "config.json").read_text()) and m.source["slim"] is False
    operating = json.loads((tiny_run / "config.json").read_text())["train"]["score"]
    assert set(m.scores.definitions) == {"score", "knn_angle"} and m.scores.default == operating
    t = m.threshold
    assert t.score == operating and t.operating_point == {"specificity": 0.95}
    assert t.validation is not None and t.validation.drift is not None
    drift = t.validation.drift  # the drift checks' calibration: the run's validation normals
    assert (t.validation.n_normal, t.validation.n_abnormal, t.validation.source) == (40, 40, "val_scores.npz")
    with np.load(tiny_run / "val_scores.npz") as val:
        assert list(drift.normal_scores or ()) == sorted(float(x) for x in val[operating][val["label"] == 0])
        normal_paths = val["path"][val["label"] == 0]
    assert drift.unreadable_films == 0 and len(drift.normal_exposure or ()) == 40
    exposure = sorted(film_exposure(load_image(str(p), m.preprocess_config)) for p in normal_paths)
    assert list(drift.normal_exposure or ()) == pytest.approx(exposure, abs=1e-6)
    assert t.achieved["specificity"] >= 0.95 and t.achieved["sensitivity"] is not None
    assert m.parity["fp32"]["max_abs_score_diff"] == 1e-5
    assert m.graph("model").details["parity"]["label_agreement"] == 1.0


def test_manifest_round_trip(bundle: Path, tmp_path: Path) -> None:
    m = read_manifest(bundle)
    assert Manifest.from_dict(m.to_dict()) == m
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    m.write(copy)
    assert read_manifest(copy) == m
    assert m.reference.images == 32 and m.reference.file == "reference.npz"


def test_bank_rows_bit_for_bit(bundle: Path, tiny_run: Path) -> None:
    run_bank = load_run(tiny_run).bank.numpy()
    m = read_manifest(bundle)
    for name in ("scorer.onnx", "model.onnx"):
        rows = bank_initializer(bundle / name)
        assert rows.dtype == np.float32 and rows.tobytes() == run_bank.tobytes()
    assert m.bank.sha256 == hashlib.sha256(np.ascontiguousarray(run_bank, dtype=np.float32).tobytes()).hexdigest()
    # The bank is stored once per graph: one initializer of N·D floats, no second copy in another layout.
    scorer = onnx.load(str(bundle / "scorer.onnx"))
    assert [(i.name, list(i.dims)) for i in scorer.graph.initializer] == [("bank_t", [200, 200])]
    ops = [n.op_type for n in scorer.graph.node]
    assert {"MatMul", "Clip", "Acos", "TopK", "ReduceMean", "Div"} <= set(ops) and "Transpose" not in ops
    (topk,) = [n for n in scorer.graph.node if n.op_type == "TopK"]
    assert {a.name: a.i for a in topk.attribute}["largest"] == 0
    k_const = [n for n in scorer.graph.node if n.output[0] == topk.input[1]]
    assert numpy_helper.to_array(k_const[0].attribute[0].t).tolist() == [20]  # K is a constant


def test_reference_npz(bundle: Path, tiny_run: Path) -> None:
    from salad.export.reference import select_reference

    with np.load(bundle / "reference.npz", allow_pickle=False) as data:
        ref = {k: data[k] for k in data.files}
    assert set(ref) == {"image", "embedding", "score", "knn_angle", "label", "path"}
    n = len(ref["image"])
    assert n == 32 and ref["image"].shape == (n, 1, 64, 64) and ref["image"].dtype == np.float32
    assert ref["embedding"].shape == (n, 200) and ref["score"].shape == ref["knn_angle"].shape == (n,)
    assert sorted(set(ref["label"].tolist())) == [0, 1] and (ref["label"] == 0).sum() == 16
    assert all("/" not in p and p.endswith(".jpeg") for p in ref["path"].tolist())
    chosen = select_reference(tiny_run, 32)
    assert [s.path.name for s in chosen] == ref["path"].tolist()
    assert [s.path.name for s in select_reference(tiny_run, 32)] == ref["path"].tolist()  # deterministic
    assert read_manifest(bundle).reference.source == "val.csv"
    val = {s.path.name: s for s in read_samples(tiny_run / "val.csv")}
    assert np.array_equal(ref["image"], load_batch([val[p].path for p in ref["path"].tolist()], read_manifest(bundle).preprocess_config))


def test_ort_reproduces_pytorch_rebuilt_from_bundle(bundle: Path) -> None:
    """PyTorch from the bundle's own checkpoint.pt vs ONNX Runtime on the bundle's graphs."""
    m = read_manifest(bundle)
    with np.load(bundle / "reference.npz", allow_pickle=False) as data:
        images, score_ref = data["image"], data["score"]
    loaded = load_run(bundle / "checkpoint.pt")
    with torch.no_grad():
        z = loaded.model.embed(torch.from_numpy(images))
        score, knn = score_torch(z, loaded.bank, m.k)
    z, score, knn = z.numpy(), score.numpy(), knn.numpy()
    assert np.abs(score - score_ref).max() <= 1e-5  # the npz is that same PyTorch reference
    emb, s_ort, k_ort = session(bundle / "model.onnx").run(None, {"image": images})
    cos = (emb * z).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(z, axis=1)
    assert cos.min() >= 0.99999
    assert np.abs(s_ort - score).max() <= 1e-5 and np.abs(k_ort - knn).max() <= 1e-5
    assert np.array_equal(decide(s_ort, m.threshold.value), decide(score, m.threshold.value))
    (enc,) = session(bundle / "encoder.onnx").run(None, {"image": images})
    s_sc, k_sc = session(bundle / "scorer.onnx").run(None, {"embedding": z})
    assert np.abs(enc - emb).max() <= 1e-6
    assert np.abs(s_sc - score).max() <= 1e-5 and np.abs(k_sc - knn).max() <= 1e-5


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_batch_sizes_give_the_same_per_image_outputs(bundle: Path, batch: int) -> None:
    m = read_manifest(bundle)
    with np.load(bundle / "reference.npz", allow_pickle=False) as data:
        images = data["image"]
    sess = session(bundle / "model.onnx")
    full = sess.run(None, {"image": images})
    split = run_in_batches(sess, {"image": images}, batch)
    for a, b in zip(full, split, strict=True):
        assert a.shape == b.shape and np.abs(a - b).max() <= 1e-6
    assert np.array_equal(decide(full[1], m.threshold.value), decide(split[1], m.threshold.value))


def _check_threshold_on_validation(bundle: Path, run: Path) -> None:
    t = read_manifest(bundle).threshold
    with np.load(run / "val_scores.npz", allow_pickle=False) as v:
        score, label = v[t.score], v["label"]
    normal_flagged = decide(score[label == 0], t.value).mean()
    assert 1.0 - normal_flagged == pytest.approx(t.achieved["specificity"]) and 1.0 - normal_flagged >= 0.95
    assert decide(score[label == 1], t.value).mean() == pytest.approx(t.achieved["sensitivity"])
    assert t.value not in score.tolist() and t.value == float(np.float32(t.value))


def test_threshold_is_on_validation_scores(bundle: Path, tiny_run: Path) -> None:
    _check_threshold_on_validation(bundle, tiny_run)


@pytest.mark.parametrize("operating", ["score", "knn_angle"])
def test_the_runs_operating_score_carries_the_threshold(make_run: Callable[..., Path], tmp_path: Path, operating: str) -> None:
    run = make_run(score=operating)
    bundle = export_bundle(run, tmp_path / "b", reference_films=8)
    m = read_manifest(bundle)
    assert m.threshold.score == m.scores.default == operating and m.threshold.rule == f"abnormal if {operating} > value"
    _check_threshold_on_validation(bundle, run)
    from salad.runtime import Scorer

    scorer = Scorer.from_bundle(bundle, runtime="onnxruntime")
    results = scorer.score([str(s.path) for s in read_samples(run / "val.csv")][:6])
    decided = decide(np.array([getattr(r, operating) for r in results]), m.threshold.value)
    assert [r.label for r in results] == decided.tolist()


def test_bank_as_input_and_slim(input_bundle: Path, tiny_run: Path) -> None:
    m = read_manifest(input_bundle)
    assert sorted(p.name for p in input_bundle.iterdir()) == [
        "bank.npy", "encoder.onnx", "manifest.json", "model.onnx", "reference.npz", "scorer.onnx",
    ]
    assert m.bank.form == "input" and m.bank.file == "bank.npy" and set(m.files) == {"bank.npy", "reference.npz"}
    assert m.source["slim"] is True and m.source["checkpoint_sha256"] == sha256_file(tiny_run / "checkpoint.pt")
    assert [(t.name, t.shape) for t in m.graph("scorer").inputs] == [("embedding", ["batch", 200]), ("bank", [200, 200])]
    assert [t.name for t in m.graph("model").inputs] == ["image", "bank"]
    bank = np.load(input_bundle / "bank.npy", allow_pickle=False)
    assert bank.tobytes() == load_run(tiny_run).bank.numpy().tobytes()
    assert not [i for i in onnx.load(str(input_bundle / "scorer.onnx")).graph.initializer if i.name.startswith("bank")]
    with np.load(input_bundle / "reference.npz", allow_pickle=False) as data:
        z, score = data["embedding"], data["score"]
    s_ort, _ = session(input_bundle / "scorer.onnx").run(None, {"embedding": z, "bank": bank})
    assert len(z) == 20 and np.abs(s_ort - score).max() <= 1e-5
    # the same scorer scores against another bank: the bank really is an input
    other = np.ascontiguousarray(np.roll(bank, 1, axis=1))
    s_other, _ = session(input_bundle / "scorer.onnx").run(None, {"embedding": z, "bank": other})
    assert np.abs(s_other - score_numpy(z, other, m.k)["score"]).max() <= 1e-5
    assert np.abs(s_other - s_ort).max() > 1e-3
    t = m.threshold
    assert t.operating_point == {"sensitivity": 0.9} and t.achieved["sensitivity"] >= 0.9


def test_external_data_round_trip(tiny_run: Path, tmp_path: Path) -> None:
    out = export_bundle(tiny_run, tmp_path / "ext", slim=True, reference_films=8, external_data_threshold=0)
    m = read_manifest(out)
    assert m.bank.external_data == "bank.data" and m.graph("scorer").external_data == ["bank.data"]
    assert m.graph("model").external_data == ["bank.data"] and m.graph("encoder").external_data == []
    assert (out / "bank.data").stat().st_size == 200 * 200 * 4 and "bank.data" in m.files
    assert (out / "scorer.onnx").stat().st_size < 20_000  # the bank is not inline
    run_bank = load_run(tiny_run).bank.numpy()
    moved = tmp_path / "moved"
    shutil.move(out, moved)  # external data is found relative to the graph file
    for name in ("scorer.onnx", "model.onnx"):
        assert bank_initializer(moved / name).tobytes() == run_bank.tobytes()
    report = validate_bundle(moved)
    assert report["scorer"]["max_abs_diff"]["score"] <= 1e-5
    data = bytearray((moved / "bank.data").read_bytes())
    data[100] ^= 0xFF
    (moved / "bank.data").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"bank\.data: sha256 mismatch"):
        read_manifest(moved)


def test_cli_export(tiny_run: Path, tmp_path: Path) -> None:
    from salad.export.cli import export_command

    out = tmp_path / "cli"
    args = [str(tiny_run), "--out", str(out), "--slim", "--reference-films", "8", "--operating-point", "specificity:0.9"]
    result = CliRunner().invoke(export_command, args)
    assert result.exit_code == 0, result.output
    operating = json.loads((tiny_run / "config.json").read_text())["train"]["score"]
    assert f"wrote {out}" in result.output and f"threshold {operating} >" in result.output
    assert read_manifest(out).threshold.operating_point == {"specificity": 0.9}
    again = CliRunner().invoke(export_command, args)
    assert again.exit_code == 1 and "error:" in again.output and "already exists" in again.output
    assert "Traceback" not in again.output
    bad = CliRunner().invoke(export_command, [str(tiny_run), "--out", str(tmp_path / "x"), "--operating-point", "auc:1"])
    assert bad.exit_code == 2 and "--operating-point 'auc:1'" in bad.output  # a usage error (ConfigError) and not (tmp_path / "x").exists()



def test_reference_never_uses_training_films(make_run: Callable[..., Path], tmp_path: Path) -> None:
    run = make_run(rescore=False)
    (run / "val.csv").write_text("path,label,patient_id\n")
    with pytest.raises(SaladError, match=r"val\.csv: --reference-films 8 asks for more validation films than the run has \(0\)\. Retrain"):
        export_bundle(run, tmp_path / "b", slim=True, reference_films=8)
