"""salad.bundle.Bundle: one owner of a bundle's paths, bank, reference films, threshold and quiet sessions."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from salad.bundle import BANK_INPUT, REFERENCE_KEYS, Bundle
from salad.errors import BundleError
from salad.scoring import SCORE_NAMES


def test_paths_threshold_and_reference_of_a_real_bundle(tiny_bundle: Path) -> None:
    bundle = Bundle.open(tiny_bundle)
    assert bundle.graph_path("model") == tiny_bundle / "model.onnx"
    assert bundle.graph_path("encoder").is_file()
    assert not bundle.takes_bank("model") and bundle.static_feed("model") == {}
    assert bundle.threshold.value == bundle.manifest.threshold.value
    assert bundle.threshold.score in SCORE_NAMES
    ref = bundle.load_reference()
    assert set(ref) == set(REFERENCE_KEYS) and ref["image"].dtype == np.float32
    # The quiet session reproduces the PyTorch scores stored at export.
    out = bundle.session("model").run(["score"], {"image": ref["image"]})[0]
    np.testing.assert_allclose(out, ref["score"], atol=1e-5)


def test_bank_as_input_bundle_feeds_its_bank(bank_input_bundle: Path) -> None:
    bundle = Bundle.open(bank_input_bundle)
    feed = bundle.static_feed("model")
    bank = feed[BANK_INPUT]
    assert bank.dtype == np.float32 and bank.flags.c_contiguous
    assert bank.shape == (bundle.manifest.bank.rows, bundle.manifest.embedding_dim)
    assert bundle.load_bank() is bank  # read once


def test_missing_reference_array_names_the_file(tiny_bundle: Path) -> None:
    bundle = Bundle.open(tiny_bundle)
    with pytest.raises(BundleError, match=r"reference\.npz: has no array\(s\) \['nothing'\]"):
        bundle.load_reference(["nothing"])


def test_unusable_threshold_is_a_bundle_error(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "b"))
    bundle = Bundle.open(copy, verify=False)
    bundle.manifest.threshold = dataclasses.replace(bundle.manifest.threshold, value="high")
    with pytest.raises(BundleError, match="no numeric 'value'"):
        _ = bundle.threshold
