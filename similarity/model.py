"""The ASAP estimator network and its losses (PyTorch; imported only for fitting and export).

A ResNet-18-style encoder (7×7 stride-2 stem, max-pool, four stages of two basic blocks) on 64² grey films,
global pooling, two linear layers to a 2-D latent z, and a decoder that mirrors it (two linear layers,
four stages of two basic blocks with ×2 upsampling, the stem's inverse). Style is the Gram matrix of each
stage's feature map. The loss follows the paper's equations (form "paper") or this toolkit's earlier reading
(form "salad-edge-v1", onsite/forms.py); docs/similarity.md §1 gives both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from salad.onsite.forms import DEFAULT_FORM, PAPER, check_form


@dataclass(frozen=True)
class LossConfig:
    """α, β, the stage weights w_p, the triplet margin γ and the form of the equations (the paper's by default)."""

    alpha: float = 0.5
    beta: float = 0.6
    stage_weights: tuple[float, ...] = (0.2, 0.2, 0.3, 0.3)
    margin: float = 1.0
    form: str = DEFAULT_FORM

    def __post_init__(self) -> None:
        check_form(self.form)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "stage_weights": list(self.stage_weights)}


@dataclass(frozen=True)
class NetConfig:
    """Network size: input side, the four stages' widths, blocks per stage, hidden width of the latent head."""

    size: int = 64
    widths: tuple[int, ...] = (16, 32, 64, 128)
    blocks: int = 2
    hidden: int = 64
    latent: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "widths": list(self.widths)}


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3×3 conv + BN, a projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.short(x))


def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(cin, cout, stride), *[BasicBlock(cout, cout) for _ in range(blocks - 1)])


class StyleNet(nn.Module):
    """Encoder → z (2-D) → decoder; `forward` returns z, the reconstruction, and each side's stage features."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        w = config.widths
        self.stem = nn.Sequential(nn.Conv2d(1, w[0], 7, 2, 3, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        self.enc = nn.ModuleList([_stage(w[0], w[0], config.blocks, 1)]
                                 + [_stage(w[i - 1], w[i], config.blocks, 2) for i in range(1, len(w))])
        self.side = config.size // (4 * 2 ** (len(w) - 1))  # 64 → 2×2 at the last stage
        self.head = nn.Sequential(nn.Linear(w[-1], config.hidden), nn.ReLU(inplace=True), nn.Linear(config.hidden, config.latent))
        self.unhead = nn.Sequential(nn.Linear(config.latent, config.hidden), nn.ReLU(inplace=True),
                                    nn.Linear(config.hidden, w[-1] * self.side * self.side))
        # decoder stage p mirrors encoder stage p (same width and side), so their Grams are comparable
        self.dec = nn.ModuleList([_stage(w[i], w[i], config.blocks, 1) for i in range(len(w))])
        self.up = nn.ModuleList([nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                               nn.Conv2d(w[i], w[i - 1], 3, 1, 1, bias=False), nn.BatchNorm2d(w[i - 1]),
                                               nn.ReLU(inplace=True)) for i in range(1, len(w))])
        self.out = nn.Sequential(nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False), nn.Conv2d(w[0], 1, 3, 1, 1))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """z and the four encoder stage maps."""
        h = self.stem(x)
        feats = []
        for stage in self.enc:
            h = stage(h)
            feats.append(h)
        return self.head(h.mean(dim=(2, 3))), feats

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The reconstruction and the decoder's stage maps, ordered like the encoder's (stage 1 first)."""
        w = self.config.widths
        h = self.unhead(z).view(-1, w[-1], self.side, self.side)
        feats: list[torch.Tensor] = []
        for i in range(len(w) - 1, -1, -1):
            h = self.dec[i](h)
            feats.insert(0, h)
            if i > 0:
                h = self.up[i - 1](h)
        return torch.tanh(self.out(h)), feats

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        z, enc = self.encode(x)
        recon, dec = self.decode(z)
        return z, recon, enc, dec


class LatentOnly(nn.Module):
    """The exported graph: image → z (the decoder and the Grams stay behind)."""

    def __init__(self, net: StyleNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net.encode(image)[0]


def gram(f: torch.Tensor, form: str = DEFAULT_FORM) -> torch.Tensor:
    """The (B, C, C) style of each film of a (B, C, H, W) map, F its (H·W, C) matrix.

    paper: S = FᵀF, the plain sum over positions the paper writes; salad-edge-v1: FᵀF / (H·W), the mean.
    """
    b, c, h, w = f.shape
    flat = f.reshape(b, c, h * w)
    s = flat @ flat.transpose(1, 2)
    return s if form == PAPER else s / float(h * w)


def gram_distance(a: torch.Tensor, b: torch.Tensor, form: str = DEFAULT_FORM) -> torch.Tensor:
    """Per-film distance between Grams in the style triplet.

    paper: the squared Frobenius norm ‖S − S'‖² (sum of squared entries); salad-edge-v1: the root mean squared
    entry difference (Frobenius / C), not squared.
    """
    if form == PAPER:
        return (a - b).pow(2).sum(dim=(1, 2))
    return (a - b).pow(2).mean(dim=(1, 2)).clamp_min(1e-12).sqrt()


def latent_distance(a: torch.Tensor, b: torch.Tensor, form: str = DEFAULT_FORM) -> torch.Tensor:
    """Per-film distance between latent points in the latent triplet: ‖z − z'‖² (paper) or ‖z − z'‖ (salad-edge-v1)."""
    d2 = (a - b).pow(2).sum(dim=1)
    return d2 if form == PAPER else d2.sqrt()


def triplet(anchor_pos: torch.Tensor, anchor_neg: torch.Tensor, margin: float) -> torch.Tensor:
    """mean(max(0, d(a, p) − d(a, n) + γ)) from the two distance vectors."""
    return F.relu(anchor_pos - anchor_neg + margin).mean()


def asap_loss(net: StyleNet, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
              config: LossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """α·(β·L_mse + (1−β)·L_style-rec) + (1−α)·(β·L_triplet + (1−β)·L_style-triplet) over a batch of triplets.

    L_mse and L_style-rec are averaged over all three films of each triplet (and over pixels or Gram entries,
    as their names say); L_style-rec = Σ_p w_p · mean((S_p − Ŝ_p)²) between encoder stage p and its mirrored
    decoder stage; L_triplet uses latent_distance of z, L_style-triplet = Σ_p w_p · triplet on gram_distance of
    the encoder Grams; the form (config.form) decides gram, gram_distance and latent_distance.
    """
    n = anchor.shape[0]
    x = torch.cat([anchor, positive, negative])
    z, recon, enc, dec = net(x)
    mse = F.mse_loss(recon, x)
    weights = config.stage_weights
    form = config.form
    grams = [gram(f, form) for f in enc]
    style_rec = sum(w * (g - gram(d, form)).pow(2).mean() for w, g, d in zip(weights, grams, dec, strict=True))
    za, zp, zn = z[:n], z[n : 2 * n], z[2 * n :]
    lat = triplet(latent_distance(za, zp, form), latent_distance(za, zn, form), config.margin)
    style_tri = sum(
        w * triplet(gram_distance(g[:n], g[n : 2 * n], form), gram_distance(g[:n], g[2 * n :], form), config.margin)
        for w, g in zip(weights, grams, strict=True)
    )
    a, b = config.alpha, config.beta
    total = a * (b * mse + (1 - b) * style_rec) + (1 - a) * (b * lat + (1 - b) * style_tri)
    parts = {k: float(v.detach()) for k, v in (("mse", mse), ("style_rec", style_rec), ("triplet", lat), ("style_triplet", style_tri))}  # type: ignore[union-attr]
    return total, parts  # type: ignore[return-value]
