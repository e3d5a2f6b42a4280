"""Losses, bank update and anchors against direct small-N computations of the formulas in docs/architecture.md §2."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from salad.train.losses import anchor_count, bank_entropy_and_neighbours, discrimination_terms, select_anchors  # noqa: E402
from salad.train.memory_bank import MemoryBank  # noqa: E402


def _unit(n: int, d: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def test_instance_loss_is_minus_log_of_own_softmax_probability() -> None:
    bank, z = _unit(12), _unit(3, seed=1)
    idx = torch.tensor([4, 0, 11])
    tau = 0.1
    got = discrimination_terms(z, idx, bank, tau)
    for b in range(3):
        p = [math.exp(float(z[b] @ bank[j]) / tau) for j in range(12)]
        assert float(got[b]) == pytest.approx(-math.log(p[int(idx[b])] / sum(p)), rel=1e-9)


def test_aggregation_loss_for_anchors_sums_own_and_neighbour_probabilities() -> None:
    bank, z = _unit(10), _unit(2, seed=2)
    idx = torch.tensor([3, 7])
    tau = 0.1
    neighbours = torch.tensor([[(i + 1) % 10, (i + 2) % 10] for i in range(10)])
    is_anchor = torch.zeros(10, dtype=torch.bool)
    is_anchor[3] = True  # row 3 is an anchor, row 7 is not
    got = discrimination_terms(z, idx, bank, tau, neighbours, is_anchor)
    p = [[math.exp(float(z[b] @ bank[j]) / tau) for j in range(10)] for b in range(2)]
    expect_anchor = -math.log((p[0][3] + p[0][4] + p[0][5]) / sum(p[0]))
    expect_instance = -math.log(p[1][7] / sum(p[1]))
    assert float(got[0]) == pytest.approx(expect_anchor, rel=1e-9)
    assert float(got[1]) == pytest.approx(expect_instance, rel=1e-9)


def test_chunked_normaliser_matches_unchunked(monkeypatch: pytest.MonkeyPatch) -> None:
    import salad.train.losses as losses

    bank, z = _unit(50), _unit(4, seed=3)
    idx = torch.arange(4)
    full = discrimination_terms(z, idx, bank, 0.1)
    monkeypatch.setattr(losses, "CHUNK", 7)
    assert torch.allclose(discrimination_terms(z, idx, bank, 0.1), full, rtol=1e-12)


def test_no_gradient_reaches_the_bank() -> None:
    bank = _unit(6).requires_grad_(True)
    z = _unit(2, seed=4).requires_grad_(True)
    discrimination_terms(z, torch.tensor([0, 1]), bank, 0.1).sum().backward()
    assert bank.grad is None and z.grad is not None


def test_bank_update_is_normalised_momentum_mix() -> None:
    bank = MemoryBank(5, 4, momentum=0.5, generator=torch.Generator().manual_seed(0))
    before = bank.rows.clone()
    z = F.normalize(torch.randn(2, 4), dim=1)
    bank.update(torch.tensor([1, 3]), z)
    for row, zi in zip([1, 3], z, strict=True):
        expect = F.normalize(0.5 * before[row] + 0.5 * zi, dim=0)
        assert torch.allclose(bank.rows[row], expect, atol=1e-7)
    untouched = [0, 2, 4]
    assert torch.equal(bank.rows[untouched], before[untouched])
    assert torch.allclose(bank.rows.norm(dim=1), torch.ones(5), atol=1e-6)


def test_entropy_and_neighbours_exclude_self() -> None:
    bank = _unit(9, seed=5)
    tau = 0.1
    entropy, nb = bank_entropy_and_neighbours(bank, tau, k=3, chunk=4)
    for i in range(9):
        logits = [float(bank[i] @ bank[j]) / tau for j in range(9) if j != i]
        m = max(logits)
        p = [math.exp(v - m) for v in logits]
        s = sum(p)
        h = -sum(q / s * math.log(q / s) for q in p)
        assert float(entropy[i]) == pytest.approx(h, rel=1e-9)
        sims = [(float(bank[i] @ bank[j]), j) for j in range(9) if j != i]
        assert set(nb[i].tolist()) == {j for _, j in sorted(sims, reverse=True)[:3]}


def test_anchor_count_grows_with_rounds_and_takes_lowest_entropy() -> None:
    # Rows 0-1 and 2-3 are near-duplicate pairs: each row's softmax over the others is confident
    # (entropy ≈ 0); rows 4-11 are spread out and spread their probability.
    g = torch.Generator().manual_seed(6)
    centres = F.normalize(torch.randn(2, 16, generator=g, dtype=torch.float64), dim=1).repeat_interleave(2, dim=0)
    pairs = F.normalize(centres + 0.01 * torch.randn(4, 16, generator=g, dtype=torch.float64), dim=1)
    bank = torch.cat([pairs, _unit(8, 16, seed=7)])
    counts = []
    for r in range(0, 12):
        is_anchor, _ = select_anchors(bank, 0.1, 2, r)
        counts.append(int(is_anchor.sum()))
    assert counts == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 12]  # min(N, int(N·0.1·r)) with N = 12: all rows from r = 10
    assert [anchor_count(1341, r) for r in (1, 2, 5, 10, 11)] == [134, 268, 670, 1341, 1341]
    fourth, _ = select_anchors(bank, 0.1, 2, 4)
    assert set(torch.nonzero(fourth).flatten().tolist()) == {0, 1, 2, 3}  # the four lowest-entropy rows


def test_the_cxr_encoder_ends_at_4x4_at_every_size_and_old_runs_keep_theirs() -> None:
    from salad.errors import SaladError
    from salad.train.models import ModelConfig, SaladAutoencoder

    for size, stages in ((64, 4), (128, 5), (256, 6)):
        cfg = ModelConfig(size=size, width=0.125)
        model = SaladAutoencoder(cfg).eval()
        with torch.no_grad():
            features = model.encoder.features(torch.zeros(1, 1, size, size))
            z, recon = model(torch.zeros(2, 1, size, size))
        assert cfg.stages == stages and features.shape[-2:] == (4, 4) and z.shape == (2, 200) and recon.shape == (2, 1, size, size)
    legacy = ModelConfig.from_dict({"encoder": "cxr", "size": 64, "width": 0.25})  # a run written before `head`
    assert legacy.head == 1 and legacy.stages == 6
    with pytest.raises(SaladError, match=r"input size of head·2\^n .* received 96"):
        SaladAutoencoder(ModelConfig(size=96))
