"""salad.train: PyTorch models, memory bank, losses, trainer, datasets and evaluation of SALAD."""

from __future__ import annotations
