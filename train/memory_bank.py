"""The memory bank: one unit-vector row per training image, updated by momentum, never by gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from salad.scoring import NORM_EPS


class MemoryBank(nn.Module):
    """N×D unit rows; `update` applies m_i ← normalise((1−t)·m_i + t·z_i) for the rows in a batch."""

    rows: torch.Tensor
    labels: torch.Tensor

    def __init__(self, n: int, dim: int, momentum: float = 0.5, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.momentum = momentum
        init = torch.randn(n, dim, generator=generator)
        self.register_buffer("rows", F.normalize(init, dim=1, eps=NORM_EPS))
        # 0 = normal, 1 = known anomalous (AR setting): anomalous rows are dropped before scoring.
        self.register_buffer("labels", torch.zeros(n, dtype=torch.int64))

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @torch.no_grad()
    def update(self, idx: torch.Tensor, z: torch.Tensor) -> None:
        t = self.momentum
        mixed = (1.0 - t) * self.rows[idx] + t * z.detach().to(self.rows.dtype)
        self.rows[idx] = F.normalize(mixed, dim=1, eps=NORM_EPS)

    @torch.no_grad()
    def replace(self, rows: torch.Tensor) -> None:
        """Set every row at once (e.g. clean embeddings of the training images after training)."""
        self.rows.copy_(F.normalize(rows.to(self.rows.dtype), dim=1, eps=NORM_EPS))

    def normal_rows(self) -> torch.Tensor:
        """The rows the score uses: known-anomalous training images are excluded."""
        return self.rows[self.labels == 0]
