"""ASAP's equations as the paper writes them (the default form), each against a small example worked out by hand.

Gram: S^{kk'} = Σ_l F^{lk} F^{lk'}; triplets on squared distances with γ = 1; EQC = 2/(I² − I) Σ_{i<k} (ξ_i + ξ_k)/ψ_ik
with ξ the mean distance inside a dataset and ψ the mean distance between two datasets' points. The earlier
reading (salad-edge-v1) is checked on the same examples, and an estimator file says which form it was fitted with.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from salad.errors import DataError
from salad.onsite.distance import eqc
from salad.onsite.estimator import INFO, Estimator
from salad.onsite.forms import DEFAULT_FORM, PAPER, V1, form_of

#: Three datasets of two 2-D points each: A and B three apart vertically, C ten to the right of A.
A = np.array([[0.0, 0.0], [2.0, 0.0]])
B = np.array([[0.0, 3.0], [2.0, 3.0]])
C = np.array([[10.0, 0.0], [12.0, 0.0]])


def test_the_paper_is_the_default_form() -> None:
    assert DEFAULT_FORM == PAPER


def test_eqc_of_a_hand_computed_example() -> None:
    # ξ_A = ξ_B = ξ_C = 2 (one pair each, 2 apart).
    # ψ_AB: pairs 3, √13, √13, 3; ψ_AC: 10, 12, 8, 10; ψ_BC: √109, √153, √73, √109.
    psi_ab = (6 + 2 * math.sqrt(13)) / 4
    psi_ac = 40 / 4
    psi_bc = (2 * math.sqrt(109) + math.sqrt(153) + math.sqrt(73)) / 4
    paper = 2 / (3**2 - 3) * ((2 + 2) / psi_ab + (2 + 2) / psi_ac + (2 + 2) / psi_bc)
    assert eqc({"A": A, "B": B, "C": C}) == pytest.approx(paper, rel=1e-12)
    assert eqc({"A": A, "B": B}) == pytest.approx(4 / psi_ab, rel=1e-12)  # I = 2: 2/(4 − 2) = 1
    # salad-edge-v1: centroids (1, 0), (1, 3), (11, 0) → gaps 3, 10, √109, and the extra factor 2.
    v1 = (4 / (2 * 3) + 4 / (2 * 10) + 4 / (2 * math.sqrt(109))) / 3
    assert eqc({"A": A, "B": B, "C": C}, V1) == pytest.approx(v1, rel=1e-12)


def test_form_of_an_estimator_file() -> None:
    assert form_of({"config": {"loss": {"beta": 0.6, "form": "paper"}}}) == PAPER
    assert form_of({"config": {"loss": {"beta": 0.6, "form": "salad-edge-v1"}}}) == V1
    assert form_of({"config": {"loss": {"beta": 0.6}}}) == V1  # written before forms were recorded
    with pytest.raises(DataError, match="expected one of paper, salad-edge-v1"):
        form_of({"config": {"loss": {"form": "centroids"}}})


torch = pytest.importorskip("torch", reason="the estimator's losses need torch (salad-edge[train])")

from salad.similarity.model import LossConfig, gram, gram_distance, latent_distance, triplet  # noqa: E402

#: One film, two channels, two positions: channel 0 = (1, 2), channel 1 = (3, −1).
FEATURES = torch.tensor([[[[1.0, 2.0]], [[3.0, -1.0]]]], dtype=torch.float64)


def test_gram_of_a_hand_computed_example() -> None:
    # S00 = 1·1 + 2·2 = 5, S01 = 1·3 + 2·(−1) = 1, S11 = 3·3 + (−1)(−1) = 10: a plain sum over the 2 positions.
    np.testing.assert_allclose(gram(FEATURES).numpy()[0], [[5.0, 1.0], [1.0, 10.0]], rtol=0, atol=1e-12)
    np.testing.assert_allclose(gram(FEATURES, V1).numpy()[0], [[2.5, 0.5], [0.5, 5.0]], rtol=0, atol=1e-12)


def test_latent_triplet_of_a_hand_computed_example() -> None:
    za = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    zp = torch.tensor([[3.0, 4.0], [1.0, 2.0]], dtype=torch.float64)
    zn = torch.tensor([[1.0, 0.0], [4.0, 5.0]], dtype=torch.float64)
    # paper: max(25 − 1 + 1, 0) = 25 and max(1 − 25 + 1, 0) = 0 → mean 12.5
    got = triplet(latent_distance(za, zp), latent_distance(za, zn), 1.0)
    assert float(got) == pytest.approx(12.5, rel=1e-12)
    # salad-edge-v1: max(5 − 1 + 1, 0) = 5 and max(1 − 5 + 1, 0) = 0 → mean 2.5
    got = triplet(latent_distance(za, zp, V1), latent_distance(za, zn, V1), 1.0)
    assert float(got) == pytest.approx(2.5, rel=1e-12)


def test_style_triplet_of_a_hand_computed_example() -> None:
    s = torch.tensor([[[5.0, 1.0], [1.0, 10.0]]], dtype=torch.float64)
    sp = torch.tensor([[[5.0, 1.0], [1.0, 8.0]]], dtype=torch.float64)  # one entry 2 off: ‖S − S⁺‖² = 4
    sn = torch.tensor([[[4.0, 1.0], [1.0, 10.0]]], dtype=torch.float64)  # one entry 1 off: ‖S − S⁻‖² = 1
    assert float(triplet(gram_distance(s, sp), gram_distance(s, sn), 1.0)) == pytest.approx(4 - 1 + 1, rel=1e-12)
    # salad-edge-v1: RMS entries √(4/4) = 1 and √(1/4) = 0.5 → 1 − 0.5 + 1
    assert float(triplet(gram_distance(s, sp, V1), gram_distance(s, sn, V1), 1.0)) == pytest.approx(1.5, rel=1e-12)


def test_loss_config_refuses_an_unknown_form() -> None:
    assert LossConfig().form == PAPER and LossConfig().to_dict()["form"] == PAPER
    with pytest.raises(DataError, match="expected one of"):
        LossConfig(form="squared")


def _brute_eqc(points: dict[str, np.ndarray], form: str) -> float:
    """EQC by explicit loops over points (an independent computation of the paper's and v1's formulas)."""
    names = sorted(points)

    def xi(p: np.ndarray) -> float:
        return sum(math.dist(p[i], p[j]) for i in range(len(p)) for j in range(i + 1, len(p))) * 2 / (len(p) * (len(p) - 1))

    total = 0.0
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            pa, pb = points[a].astype(np.float64), points[b].astype(np.float64)
            if form == PAPER:
                total += (xi(pa) + xi(pb)) / (sum(math.dist(u, v) for u in pa for v in pb) / (len(pa) * len(pb)))
            else:
                total += (xi(pa) + xi(pb)) / (2 * math.dist(pa.mean(0), pb.mean(0)))
    return total * 2 / (len(names) ** 2 - len(names))


def test_a_fitted_estimator_records_its_form_and_its_eqc_follows_it(tiny_estimator: Path, tmp_path: Path) -> None:
    est = Estimator.load(tiny_estimator)
    assert est.info["config"]["loss"]["form"] == PAPER and form_of(est.info) == PAPER
    assert est.info["eqc"] == pytest.approx(_brute_eqc(est.points, PAPER), rel=1e-6)
    # an estimator.json from before forms were recorded still loads, as the salad-edge-v1 estimator it was
    old = Path(shutil.copytree(tiny_estimator, tmp_path / "old"))
    info = json.loads((old / INFO).read_text())
    del info["config"]["loss"]["form"]
    (old / INFO).write_text(json.dumps(info))
    assert form_of(Estimator.load(old).info) == V1


def test_fit_from_the_command_line_in_the_v1_form(tmp_path: Path) -> None:
    from salad.similarity.cli import similarity_group
    from tests.conftest import SAMPLE_EVAL
    from tests.similarity.conftest import NIH_NORMAL

    out = tmp_path / "est"
    args = ["fit", "--data", f"kermany={SAMPLE_EVAL}", "--data", f"nih={NIH_NORMAL}", "--out", str(out), "--steps", "2",
            "--batch-size", "2", "--films", "8", "--threads", "1", "--beta", "0.6", "--form", V1]
    done = CliRunner().invoke(similarity_group, args)
    assert done.exit_code == 0, done.output
    est = Estimator.load(out)
    assert form_of(est.info) == V1 and "salad-edge-v1 form" in done.output
    assert est.info["eqc"] == pytest.approx(_brute_eqc(est.points, V1), rel=1e-6)
    bad = CliRunner().invoke(similarity_group, [*args[:-1], "squared", "--force"])
    assert bad.exit_code == 2 and "squared" in bad.output
