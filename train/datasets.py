"""In-memory image tensors and the batch augmentation used by training.

Films are decoded once through the shared preprocessing (salad.preprocess) and kept as one float
tensor; augmentation runs on whole batches in torch, which is what keeps a 2-core CPU busy with
learning instead of JPEG decoding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from salad.data import Sample
from salad.preprocess import PreprocessConfig, load_image
from salad.progress import progress


def preload(samples: Sequence[Sample], cfg: PreprocessConfig, desc: str = "reading films") -> torch.Tensor:
    """Decode and preprocess every film once: float32 [N, 1, S, S]. OpenCV releases the GIL, so 2 threads help."""
    out = np.empty((len(samples), 1, cfg.size, cfg.size), dtype=np.float32)

    def one(i: int) -> None:
        out[i] = load_image(samples[i].path, cfg)

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(progress(pool.map(one, range(len(samples))), total=len(samples), desc=desc, unit="img"))
    return torch.from_numpy(out)


@dataclass(frozen=True)
class AugmentConfig:
    """Views for training: horizontal flips (the reference's), optional affine, photometric and acquisition jitter.

    The jitter is off by default: brightness/contrast as large as the disease effect teaches the encoder
    to ignore lung density, and affine jitter to ignore framing only partly (docs/quality.md). With
    `denoise`, every change but the flip is made to the encoder's input only and the auto-encoder
    reconstructs the unchanged film: it learns to see through acquisition changes instead of encoding them.
    """

    flip: bool = True
    rotate_deg: float = 0.0
    scale: float = 0.0
    translate: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0  # γ = exp(U(-gamma, gamma)) on the [0, 1] grey scale
    blur: float = 0.0  # Gaussian blur with σ ~ U(0, blur) pixels at the training size
    noise: float = 0.0  # additive Gaussian noise with sd ~ U(0, noise) on the [-1, 1] scale
    denoise: bool = False  # changes other than the flip go to the input only; the target is the flipped film

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def training_pair(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder input, reconstruction target) for a [B,1,S,S] batch: the same view, or a changed and a clean one."""
    if not cfg.denoise:
        view = acquisition_jitter(augment(x, cfg, gen), cfg, gen)
        return view, view
    flip = torch.rand(x.shape[0], generator=gen) < 0.5 if cfg.flip else torch.zeros(x.shape[0], dtype=torch.bool)
    target = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return acquisition_jitter(augment(target, replace(cfg, flip=False), gen), cfg, gen), target


def acquisition_jitter(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Per-film gamma, blur and noise (each drawn only when enabled, so the default draws nothing)."""
    b = x.shape[0]
    if cfg.gamma > 0:
        g = torch.exp((2 * torch.rand(b, generator=gen) - 1) * cfg.gamma)[:, None, None, None]
        x = (((x + 1.0) / 2.0).clamp(0.0, 1.0) ** g) * 2.0 - 1.0
    if cfg.blur > 0:
        sigma = torch.rand(b, generator=gen) * cfg.blur
        x = _blur(x, sigma)
    if cfg.noise > 0:
        sd = torch.rand(b, generator=gen)[:, None, None, None] * cfg.noise
        x = (x + sd * torch.randn(x.shape, generator=gen)).clamp(-1.0, 1.0)
    return x


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one σ per film (σ = 0 leaves a film unchanged), edges replicated."""
    radius = max(1, math.ceil(3 * float(sigma.max())))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    w = torch.exp(-(t[None, :] ** 2) / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    w = (w / w.sum(dim=1, keepdim=True))[:, None, None, :]  # [B,1,1,K]
    b, _, h, wd = x.shape
    y = F.pad(x.reshape(1, b, h, wd), (radius, radius, 0, 0), mode="replicate")
    y = F.conv2d(y, w, groups=b)
    y = F.pad(y, (0, 0, radius, radius), mode="replicate")
    y = F.conv2d(y, w.transpose(2, 3), groups=b)
    return y.reshape(b, 1, h, wd)


def augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """One random view per image of a [B,1,S,S] batch; borders are filled with black (-1)."""
    b = x.shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=gen)

    angle = u(-cfg.rotate_deg, cfg.rotate_deg) * (math.pi / 180.0)
    scale = u(1.0 - cfg.scale, 1.0 + cfg.scale)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0) if cfg.flip else torch.ones(b)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    theta[:, 0, 2], theta[:, 1, 2] = u(-cfg.translate, cfg.translate) * 2, u(-cfg.translate, cfg.translate) * 2
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Sample x+1 with zero padding so that the border becomes -1 (black), not mid-grey.
    out = F.grid_sample(x + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1.0
    contrast = u(1.0 - cfg.contrast, 1.0 + cfg.contrast)[:, None, None, None]
    bright = u(-cfg.brightness, cfg.brightness)[:, None, None, None]
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * contrast + mean + bright).clamp(-1.0, 1.0)
