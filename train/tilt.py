"""The centre-density tilt: the film's central density, carried beside the learned embedding as one angle.

A learned 64² embedding of ~1,000 normal films breaks when acquisition moves, while one number — the mean of the
film's central half-side square minus its mean — transfers (docs/quality.md, "A detector that transfers"). The tilt
joins them without changing the scorer: the embedding e becomes [cos φ · e, sin φ] with
    φ = clip(scale · max((centre − mean) / sd + offset, 0), 0, π/2),
and the bank rows become [m, 0]. Each neighbour's angle is then arccos(cos φ · cos θ_j): θ and φ add in quadrature (a
right spherical triangle), so the existing kNN-arccos graph scores a film higher when its centre is denser than the
training normals' by more than `offset` standard deviations, and exactly as before otherwise (φ = 0). `mean`, `sd`
(of the training normals' centre statistic) and `scale` (the weight times the standard deviation of the bank's own
leave-one-out kNN angles, so one standard deviation of centre density weighs like one of the embedding's score) are
fitted once after training and stored as buffers: they travel in the checkpoint and are constants of encoder.onnx.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def centre_minus_mean(images: torch.Tensor) -> torch.Tensor:
    """Mean of the central half-side square minus the film's mean, per film of [B, 1, S, S] (the one definition)."""
    s = images.shape[-1]
    q = s // 4
    return images[:, 0, q : s - q, q : s - q].mean(dim=(1, 2)) - images[:, 0].mean(dim=(1, 2))


class CentreTilt(nn.Module):
    """Tilts unit embeddings by the film's centre density; identity until `fit` has run (`fitted`)."""

    mean: torch.Tensor
    sd: torch.Tensor
    scale: torch.Tensor

    def __init__(self, weight: float, offset: float) -> None:
        super().__init__()
        self.weight = float(weight)
        self.offset = float(offset)
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("sd", torch.ones(()))
        self.register_buffer("scale", torch.zeros(()))  # 0 until fitted: no tilt

    @property
    def fitted(self) -> bool:
        return bool(self.scale > 0)

    def angle(self, images: torch.Tensor) -> torch.Tensor:
        """φ per film, in radians."""
        z = (centre_minus_mean(images) - self.mean) / self.sd
        return torch.clamp(self.scale * torch.relu(z + self.offset), 0.0, math.pi / 2)

    def forward(self, images: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        phi = self.angle(images)[:, None]
        return torch.cat([torch.cos(phi) * embedding, torch.sin(phi)], dim=1)

    @torch.no_grad()
    def fit(self, normal_images: torch.Tensor, normal_bank: torch.Tensor, k: int) -> None:
        """Fit mean/sd on the training normals' centre statistic and the scale on the bank's leave-one-out kNN angles."""
        c = torch.cat([centre_minus_mean(normal_images[s : s + 256]) for s in range(0, len(normal_images), 256)])
        self.mean.fill_(float(c.mean()))
        self.sd.fill_(max(float(c.std(unbiased=False)), 1e-6))
        bank = normal_bank.to(torch.float64)
        angles = torch.arccos(torch.clamp(bank @ bank.T, -1.0, 1.0))
        angles.fill_diagonal_(math.inf)
        kk = max(1, min(k, len(bank) - 1))
        knn = torch.topk(angles, kk, dim=1, largest=False).values.mean(dim=1)
        self.scale.fill_(self.weight * max(float(knn.std(unbiased=False)), 1e-6))


def pad_bank(bank: torch.Tensor) -> torch.Tensor:
    """Bank rows [N, D] as the tilted scorer sees them: [m, 0] (normal films sit at φ = 0 by definition)."""
    return torch.cat([bank, torch.zeros(bank.shape[0], 1, dtype=bank.dtype, device=bank.device)], dim=1)
