"""The ASAP loss terms, in both forms, against a direct computation with explicit loops over films, stages, channels and positions."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the estimator's losses need torch (salad-edge[train])")

from salad.onsite.forms import FORMS, PAPER  # noqa: E402
from salad.similarity.model import LossConfig, NetConfig, StyleNet, asap_loss, gram  # noqa: E402


def direct_gram(f: np.ndarray, form: str) -> np.ndarray:
    """S[c, d] = Σ_positions F[pos, c]·F[pos, d] (paper), divided by the positions (salad-edge-v1); one film, by loops."""
    c, h, w = f.shape
    s = np.zeros((c, c))
    for i in range(c):
        for j in range(c):
            s[i, j] = sum(f[i, y, x] * f[j, y, x] for y in range(h) for x in range(w))
    return s if form == PAPER else s / (h * w)


@pytest.mark.parametrize("form", FORMS)
def test_gram_matches_the_direct_sum(form: str) -> None:
    f = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = gram(f, form).numpy()
    for b in range(2):
        np.testing.assert_allclose(got[b], direct_gram(f[b].numpy(), form), rtol=1e-10)


@pytest.mark.parametrize("form", FORMS)
def test_asap_loss_matches_a_direct_computation(form: str) -> None:
    torch.manual_seed(0)
    net = StyleNet(NetConfig(size=64, widths=(4, 4, 8, 8), blocks=1, hidden=8)).double().eval()  # eval: BN is per-film
    gen = torch.Generator().manual_seed(1)
    a, p, n = (torch.rand(2, 1, 64, 64, generator=gen, dtype=torch.float64) * 2 - 1 for _ in range(3))
    cfg = LossConfig(alpha=0.3, beta=0.7, stage_weights=(0.1, 0.2, 0.3, 0.4), margin=1.0, form=form)
    total, parts = asap_loss(net, a, p, n, cfg)

    x = torch.cat([a, p, n])
    with torch.no_grad():
        z, recon, enc, dec = net(x)
    z, xs, rs = z.numpy(), x.numpy(), recon.numpy()
    mse = float(np.mean([(xs[i] - rs[i]) ** 2 for i in range(6)]))
    style_rec = 0.0
    for w, fe, fd in zip(cfg.stage_weights, enc, dec, strict=True):
        diffs = [direct_gram(fe[i].numpy(), form) - direct_gram(fd[i].numpy(), form) for i in range(6)]
        style_rec += w * float(np.mean([d ** 2 for d in diffs]))

    def tri(dp: float, dn: float) -> float:
        return max(0.0, dp - dn + cfg.margin)

    power = 2 if form == PAPER else 1  # the paper's triplets compare squared distances
    lat = float(np.mean([tri(math.dist(z[i], z[2 + i]) ** power, math.dist(z[i], z[4 + i]) ** power) for i in range(2)]))
    style_tri = 0.0
    for w, fe in zip(cfg.stage_weights, enc, strict=True):
        g = [direct_gram(fe[i].numpy(), form) for i in range(6)]
        c = g[0].shape[0]

        def gd(u: np.ndarray, v: np.ndarray, c: int = c) -> float:
            squared = float(((u - v) ** 2).sum())  # ‖u − v‖²_F
            return squared if form == PAPER else math.sqrt(squared / (c * c))

        style_tri += w * float(np.mean([tri(gd(g[i], g[2 + i]), gd(g[i], g[4 + i])) for i in range(2)]))
    want = cfg.alpha * (cfg.beta * mse + (1 - cfg.beta) * style_rec) + (1 - cfg.alpha) * (cfg.beta * lat + (1 - cfg.beta) * style_tri)
    assert parts["mse"] == pytest.approx(mse, rel=1e-9)
    assert parts["style_rec"] == pytest.approx(style_rec, rel=1e-9)
    assert parts["triplet"] == pytest.approx(lat, rel=1e-9)
    assert parts["style_triplet"] == pytest.approx(style_tri, rel=1e-9)
    assert float(total.detach()) == pytest.approx(want, rel=1e-9)


def test_the_decoder_mirrors_the_encoder_stage_by_stage() -> None:
    net = StyleNet(NetConfig()).eval()
    with torch.no_grad():
        z, recon, enc, dec = net(torch.zeros(2, 1, 64, 64))
    assert z.shape == (2, 2) and recon.shape == (2, 1, 64, 64)
    assert [tuple(f.shape) for f in enc] == [tuple(f.shape) for f in dec] == [(2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4), (2, 128, 2, 2)]
