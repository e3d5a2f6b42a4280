"""Scorer: bundle verification, shared preprocessing, batching, thresholds and per-file errors."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

import salad
from salad.bundle import Bundle
from salad.errors import BundleError, DataError, SaladError
from salad.imageio import read_image
from salad.manifest import read_manifest
from salad.runtime import BundleGraph, Scorer
from salad.scoring import decide


def sample_path(name: str) -> Path:
    """The shipped sample film with this file name (reference.npz stores names, not paths)."""
    hits = sorted((Path(salad.__file__).parent / "sample").rglob(name))
    assert hits, f"{name} is not among the shipped sample films"
    return hits[0]


def test_loading_refuses_a_modified_file_and_names_it(bundle_copy: Path) -> None:
    with open(bundle_copy / "model.onnx", "r+b") as fh:
        fh.seek(-16, 2)
        fh.write(b"\x00" * 16)
    with pytest.raises(BundleError, match=r"model.onnx: sha256 mismatch \(manifest [0-9a-f]{12}…, file [0-9a-f]{12}…\)"):
        Scorer.from_bundle(bundle_copy)


def test_loading_refuses_a_missing_file(bundle_copy: Path) -> None:
    (bundle_copy / "model.onnx").unlink()
    with pytest.raises(BundleError, match=r"model.onnx: missing"):
        Scorer.from_bundle(bundle_copy)


def test_loading_verifies_what_it_reads_and_only_that(bundle_copy: Path) -> None:
    """Cold start: ONNX Runtime reads model.onnx alone, so only it is hashed; the torch reference checks everything."""
    (bundle_copy / "reference.npz").unlink()  # not read when scoring with ONNX Runtime
    with Scorer.from_bundle(bundle_copy) as scorer:
        film = sorted((Path(salad.__file__).parent / "sample" / "eval" / "normal").glob("*.jpeg"))[0]
        assert scorer.score([film])[0].label in (0, 1)
    with pytest.raises(BundleError, match=r"reference.npz: missing"):
        Scorer.from_bundle(bundle_copy, runtime="torch")


def test_a_precision_the_bundle_lacks_is_named(tiny_bundle: Path) -> None:
    with pytest.raises(
        BundleError, match=r"no 'model' graph at precision 'int8' \(has \['encoder', 'model', 'scorer'\]\).*salad calibrate"
    ):
        Scorer.from_bundle(tiny_bundle, precision="int8")
    with pytest.raises(SaladError, match=r"precision 'fp64'; expected one of \['fp32', 'fp16', 'int8'\]"):
        Scorer.from_bundle(tiny_bundle, precision="fp64")


def test_scores_reproduce_the_pytorch_reference_from_the_image_files(tiny_bundle: Path, reference: dict[str, np.ndarray]) -> None:
    """From film on disk to score, the console path matches what PyTorch computed at export time."""
    files = [sample_path(str(name)) for name in reference["path"]]
    with Scorer.from_bundle(tiny_bundle) as scorer:
        results = scorer.score(files)
    scores = np.array([r.score for r in results])
    knn = np.array([r.knn_angle for r in results])
    tol = read_manifest(tiny_bundle).tolerances("fp32")
    assert np.abs(scores - reference["score"]).max() <= tol["max_abs_score_diff"]
    assert np.abs(knn - reference["knn_angle"]).max() <= tol["max_abs_knn_angle_diff"]
    assert [r.path for r in results] == [str(f) for f in files]


def test_labels_follow_the_bundle_threshold(tiny_bundle: Path, film_folder: Path) -> None:
    files = sorted(film_folder.rglob("*.jpeg"))
    with Scorer.from_bundle(tiny_bundle) as scorer:
        results = scorer.score(files)
        threshold, operating = scorer.threshold, scorer.threshold_score
    assert (threshold, operating) == tuple(getattr(read_manifest(tiny_bundle).threshold, k) for k in ("value", "score"))
    scores = np.array([getattr(r, operating) for r in results])
    assert [r.label for r in results] == decide(scores, threshold).tolist()
    assert all((r.label == 1) == (getattr(r, operating) > threshold) for r in results)


def test_arrays_and_files_go_through_the_same_preprocessing(tiny_bundle: Path, film_folder: Path) -> None:
    files = sorted(film_folder.rglob("*.jpeg"))
    with Scorer.from_bundle(tiny_bundle) as scorer:
        from_files = scorer.score(files)
        from_arrays = scorer.score([read_image(f) for f in files])
        stacked = scorer.score(np.stack([read_image(files[0]), read_image(files[0])]))  # B×H×W = B images
    assert [r.score for r in from_arrays] == [r.score for r in from_files]
    assert all(r.path is None for r in from_arrays)
    assert len(stacked) == 2 and stacked[0].score == stacked[1].score == from_files[0].score


def test_batching_does_not_change_scores_or_order(tiny_bundle: Path, film_folder: Path) -> None:
    files = sorted(film_folder.rglob("*.jpeg")) * 2  # 12 films
    with Scorer.from_bundle(tiny_bundle, max_batch=32) as one_batch:
        whole = one_batch.score(files)
    with Scorer.from_bundle(tiny_bundle, max_batch=5) as small:
        chunked = small.score(files)
    assert [r.path for r in chunked] == [str(f) for f in files]
    np.testing.assert_allclose([r.score for r in chunked], [r.score for r in whole], atol=1e-6)
    assert [r.timings.batch_size for r in chunked] == [5] * 10 + [2] * 2
    assert whole[0].timings.batch_size == 12


def test_timings_are_measured(tiny_bundle: Path, film_folder: Path) -> None:
    with Scorer.from_bundle(tiny_bundle) as scorer:
        results = scorer.score(sorted(film_folder.rglob("*.jpeg")))
        assert scorer.activation_ms > 0
    for r in results:
        assert r.timings.preprocess_ms > 0 and r.timings.inference_ms > 0
        assert math.isclose(r.timings.total_ms, r.timings.preprocess_ms + r.timings.inference_ms)
    assert results[0].to_dict()["ms"] == round(results[0].timings.total_ms, 3)


def test_an_unreadable_file_is_recorded_and_the_others_scored(tiny_bundle: Path, film_folder: Path, tmp_path: Path) -> None:
    good = sorted(film_folder.rglob("*.jpeg"))[:2]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with Scorer.from_bundle(tiny_bundle) as scorer:
        results = scorer.score([good[0], broken, good[1]], on_error="record")
        with pytest.raises(DataError, match=r"broken.png: cannot decode image"):
            scorer.score([good[0], broken], on_error="raise")
    assert [r.ok for r in results] == [True, False, True]
    failed = results[1]
    assert failed.error is not None and failed.error.startswith(f"{broken}: cannot decode image")
    assert failed.label is None and math.isnan(failed.score)
    assert failed.to_dict() == {"path": str(broken), "error": failed.error}


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.full((64, 64), 255, np.uint8), r"values span \[255, 255\]; expected a grey image in \[0, 1\] \(divide 8-bit images by 255"),
        (np.full((64, 64), np.nan, np.float32), "contains NaN or infinite values"),
        (np.zeros((4, 64, 64, 3), np.float32), r"shape \(4, 64, 64, 3\); expected one grey H×W image"),
        (np.array([["a"]]), "dtype <U1; expected a numeric grey image"),
    ],
)
def test_bad_arrays_are_refused_with_the_reason(tiny_bundle: Path, array: np.ndarray, message: str) -> None:
    with Scorer.from_bundle(tiny_bundle) as scorer, pytest.raises(DataError, match=message):
        scorer.score(array)


def test_inputs_that_are_neither_paths_nor_arrays_are_refused(tiny_bundle: Path) -> None:
    with (
        Scorer.from_bundle(tiny_bundle) as scorer,
        pytest.raises(SaladError, match="cannot score a int; expected a file path or a numpy array"),
    ):
        scorer.score([3])  # type: ignore[list-item]


def test_bank_as_input_bundle_scores_like_the_initializer_bundle(tiny_bundle: Path, bank_input_bundle: Path, film_folder: Path) -> None:
    files = sorted(film_folder.rglob("*.jpeg"))
    assert any(t.name == "bank" for t in read_manifest(bank_input_bundle).graphs["model"].inputs)
    with Scorer.from_bundle(tiny_bundle) as a, Scorer.from_bundle(bank_input_bundle) as b:
        np.testing.assert_allclose([r.score for r in b.score(files)], [r.score for r in a.score(files)], atol=1e-5)


def test_close_releases_the_runner_and_score_reactivates(tiny_bundle: Path) -> None:
    scorer = Scorer.from_bundle(tiny_bundle)
    assert not scorer.runner.is_active  # lazy: nothing loaded until first use
    film = read_image(sorted((Path(salad.__file__).parent / "sample" / "train" / "normal").glob("*.jpeg"))[0])
    first = scorer.score(film)
    scorer.close()
    assert not scorer.runner.is_active
    assert scorer.score(film)[0].score == first[0].score
    scorer.close()


def test_external_data_bundle_scores_the_same_and_keys_caches_on_the_weights(
    tiny_bundle: Path, external_bank_bundle: Path, film_folder: Path
) -> None:
    manifest = read_manifest(external_bank_bundle)
    spec = manifest.graphs["model"]
    assert spec.external_data == ["bank.data"] and (external_bank_bundle / "bank.data").is_file()
    graph = BundleGraph.from_bundle(Bundle.open(external_bank_bundle), "model")
    assert graph.content_sha256 != spec.sha256  # engine caches see a new bank even if model.onnx is unchanged
    plain = BundleGraph.from_bundle(Bundle.open(tiny_bundle), "model")
    assert plain.content_sha256 == plain.spec.sha256
    files = sorted(film_folder.rglob("*.jpeg"))
    with Scorer.from_bundle(tiny_bundle) as a, Scorer.from_bundle(external_bank_bundle) as b:
        np.testing.assert_allclose([r.score for r in b.score(files)], [r.score for r in a.score(files)], atol=1e-6)


def test_a_modified_external_bank_is_refused(external_bank_bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(external_bank_bundle, tmp_path / "bundle"))
    with open(copy / "bank.data", "r+b") as fh:
        fh.write(b"\x00\x00\x80\x3f")  # the first bank value becomes 1.0
    with pytest.raises(BundleError, match=r"bank.data: sha256 mismatch"):
        Scorer.from_bundle(copy)
