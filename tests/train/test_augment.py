"""Training views on real films: the default draws exactly the reference's flips; denoise keeps a clean target."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="training tests need the train extra (torch)")

from salad.data import read_samples  # noqa: E402
from salad.preprocess import PreprocessConfig  # noqa: E402
from salad.train.datasets import AugmentConfig, augment, preload, training_pair  # noqa: E402

from ..conftest import SAMPLE_TRAIN  # noqa: E402


@pytest.fixture(scope="module")
def films() -> torch.Tensor:
    return preload(read_samples(SAMPLE_TRAIN)[:8], PreprocessConfig(size=64))


def test_default_pair_is_the_flipped_view_twice(films: torch.Tensor) -> None:
    view, target = training_pair(films, AugmentConfig(), torch.Generator().manual_seed(3))
    assert view is target
    assert torch.equal(view, augment(films, AugmentConfig(), torch.Generator().manual_seed(3)))
    for v, f in zip(view, films, strict=True):  # flips only: each view is its film or its mirror image
        assert torch.allclose(v, f, atol=1e-4) or torch.allclose(v, f.flip(-1), atol=1e-4)


def test_denoise_changes_the_input_only(films: torch.Tensor) -> None:
    cfg = AugmentConfig(gamma=0.35, blur=1.0, noise=0.03, rotate_deg=6.0, denoise=True)
    view, target = training_pair(films, cfg, torch.Generator().manual_seed(3))
    for t, f in zip(target, films, strict=True):
        assert torch.equal(t, f) or torch.equal(t, f.flip(-1))
    assert view.shape == target.shape and view.min() >= -1.0 and view.max() <= 1.0
    assert (view - target).abs().mean(dim=(1, 2, 3)).min() > 0.005  # every film's input was changed


def test_gamma_and_blur_do_what_they_say(films: torch.Tensor) -> None:
    bright = training_pair(films, AugmentConfig(flip=False, gamma=1.0), torch.Generator().manual_seed(0))[0]
    assert not torch.equal(bright, films)
    blurred = training_pair(films, AugmentConfig(flip=False, blur=2.0), torch.Generator().manual_seed(0))[0]
    # blur lowers the high-frequency energy of every film (or leaves it when σ drew ~0)
    def hf(x: torch.Tensor) -> torch.Tensor:
        return (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(1, 2, 3))
    assert torch.all(hf(blurred) <= hf(films) + 1e-6) and hf(blurred).mean() < hf(films).mean()
