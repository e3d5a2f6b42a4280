"""The centre-density tilt (train/tilt.py): its maths on real films, and a tilted run through export and calibration."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs torch (install salad-edge[train])")

import salad  # noqa: E402
from salad.imageio import read_image  # noqa: E402
from salad.preprocess import preprocess  # noqa: E402
from salad.scoring import KNN_ANGLE, by_name, score_torch  # noqa: E402
from salad.train.config import CPU  # noqa: E402
from salad.train.models import SaladAutoencoder  # noqa: E402
from salad.train.tilt import CentreTilt, centre_minus_mean, pad_bank  # noqa: E402
from tests.conftest import tiny_config, use_fixture_tolerances  # noqa: E402

SAMPLE = Path(salad.__file__).parent / "sample"


def _films(folder: Path, n: int) -> torch.Tensor:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))[:n]
    return torch.from_numpy(np.stack([preprocess(read_image(p), CPU.preprocess_config()) for p in paths]))


@pytest.fixture(scope="module")
def normals() -> torch.Tensor:
    return _films(SAMPLE / "train" / "normal", 120)


def test_both_cpu_presets_are_tilted() -> None:
    from salad.train.config import CPU_AR

    assert CPU.centre_tilt > 0 and CPU.model_config().output_dim == CPU.model_config().embedding_dim + 1
    assert CPU_AR.centre_tilt > CPU.centre_tilt and CPU_AR.centre_offset == CPU.centre_offset  # tests/train/test_table1.py:
    assert CPU_AR.model_config().output_dim == CPU_AR.model_config().embedding_dim + 1  # Table 1's cells stay untilted


def test_angles_add_in_quadrature(normals: torch.Tensor) -> None:
    """Against bank rows [m, 0], a tilted query's angle is arccos(cos φ · cos θ): the right spherical triangle."""
    torch.manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(5, 200, dtype=torch.float64), dim=1)
    m = torch.nn.functional.normalize(torch.randn(7, 200, dtype=torch.float64), dim=1)
    phi = torch.tensor([0.0, 0.1, 0.4, 1.0, math.pi / 2], dtype=torch.float64)[:, None]
    q = torch.cat([torch.cos(phi) * e, torch.sin(phi)], dim=1)
    got = torch.arccos(q @ pad_bank(m).T)
    want = torch.arccos(torch.cos(phi) * (e @ m.T))
    assert torch.allclose(got, want, atol=1e-12)


def test_a_denser_centre_scores_higher_and_an_ordinary_film_is_unchanged(normals: torch.Tensor) -> None:
    """Fitted on real normals: a film at φ = 0 scores exactly as untilted; raising its centre raises its score."""
    torch.manual_seed(0)
    model = SaladAutoencoder(CPU.model_config()).eval()
    assert model.tilt is not None and not model.tilted
    with torch.no_grad():
        bank = model.embed(normals)  # untilted until fitted: the learned 200-d rows
        assert bank.shape[1] == 200
        model.tilt.fit(normals, bank, 20)
        assert model.tilted
        c = centre_minus_mean(normals)
        assert float(model.tilt.mean) == pytest.approx(float(c.mean()), rel=1e-5)
        film = normals[int(torch.argmin(c))][None]  # the least dense centre: below the offset, φ = 0
        assert float(model.tilt.angle(film)) == 0.0
        plain = by_name(score_torch(torch.nn.functional.normalize(model.encoder(film), dim=1), bank, 20))[KNN_ANGLE]
        tilted = by_name(score_torch(model.embed(film), pad_bank(bank), 20))[KNN_ANGLE]
        assert torch.equal(plain, tilted)
        dense = film.clone()
        s = film.shape[-1]
        dense[..., s // 4 : s - s // 4, s // 4 : s - s // 4] += 0.3  # an opacity over the central lung fields
        assert float(model.tilt.angle(dense)) > 0.0
        assert float(by_name(score_torch(model.embed(dense), pad_bank(bank), 20))[KNN_ANGLE]) > float(tilted)


def test_an_unfitted_tilt_is_the_identity_and_a_negative_weight_is_refused() -> None:
    from salad.errors import ConfigError

    assert not CentreTilt(2.0, 2.0).fitted
    torch.manual_seed(0)
    model = SaladAutoencoder(CPU.model_config()).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.embed(x), torch.nn.functional.normalize(model.encoder(x), dim=1, eps=1e-8))
    with pytest.raises(ConfigError, match="centre-tilt"):
        tiny_config(centre_tilt=-1.0).validate()


@pytest.fixture(scope="module")
def tilted_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run with the cpu preset's tilt, exported (export checks fp32 parity against PyTorch itself)."""
    from salad.export import export_bundle
    from salad.train.trainer import train_run

    run = tmp_path_factory.mktemp("tilt") / "run"
    train_run(SAMPLE / "train" / "normal", run, tiny_config(centre_tilt=CPU.centre_tilt), val=SAMPLE / "eval")
    return Path(export_bundle(run, tmp_path_factory.mktemp("tilt") / "bundle"))


def test_a_tilted_run_exports_201_wide_with_a_zero_column_bank(tilted_bundle: Path) -> None:
    from salad.manifest import read_manifest

    m = read_manifest(tilted_bundle)
    assert m.embedding_dim == 201 and m.graph("model").outputs[0].shape == ["batch", 201]
    with np.load(tilted_bundle / "reference.npz", allow_pickle=False) as ref:
        z = ref["embedding"]
    assert z.shape[1] == 201 and np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    assert (z[:, 200] >= 0).all()  # sin φ with φ in [0, π/2]


def test_a_tilted_bundle_keeps_its_fp16_and_int8_tolerances(tilted_bundle: Path, tmp_path: Path) -> None:
    from salad.calibration import calibrate_bundle

    path = use_fixture_tolerances(Path(shutil.copytree(tilted_bundle, tmp_path / "b")))
    fp16 = calibrate_bundle(path, "fp16", labelled=SAMPLE / "eval", latency_runs=2)
    int8 = calibrate_bundle(path, "int8", SAMPLE / "train" / "normal", labelled=SAMPLE / "eval", latency_runs=2)
    assert fp16.accepted, fp16.failures
    assert int8.accepted, int8.failures
