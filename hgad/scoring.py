"""From per-level log-likelihood and entropy maps to one anomaly map and one image score.

As in the paper, each level's map becomes a 'normality' in (0, 1] by exp(value - reference), levels are
upsampled and summed, and normality turns into anomaly by subtracting from its largest possible value.
Unlike the paper's code, the references are frozen from normal training data (never the batch or the
test set), so a frame's score depends on that frame alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ScoreConfig


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(4.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


class GaussianBlur(nn.Module):
    """Separable Gaussian smoothing of [B, H, W] maps with reflected borders (as scipy's default)."""

    def __init__(self, sigma: float):
        super().__init__()
        self.register_buffer("kernel", gaussian_kernel1d(sigma), persistent=False)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        k = self.kernel
        r = k.numel() // 2
        x = maps[:, None]
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
        x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
        return x[:, 0]


def normality(values: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """exp(values - reference) capped at 1: 1 is as normal as the bulk of the training data."""
    return torch.exp((values - reference).clamp_max(0.0))


def anomaly_from_levels(level_maps: list[torch.Tensor], references: torch.Tensor, size: int) -> torch.Tensor:
    """Sum of upsampled level normalities, turned around: 0 is normal, len(levels) is the maximum."""
    total = None
    for i, m in enumerate(level_maps):
        up = F.interpolate(
            normality(m, references[i])[:, None], size=(size, size), mode="bilinear", align_corners=True
        )[:, 0]
        total = up if total is None else total + up
    return float(len(level_maps)) - total


def top_count(cfg: ScoreConfig, pixels: int) -> int:
    """How many of the map's highest pixels the image score averages (1 for the maximum)."""
    if cfg.image_score == "topk":
        return max(1, min(cfg.topk, pixels))
    if cfg.image_score == "top_fraction":
        # A fraction of the map, so the score means the same at every input size.
        return max(1, min(round(cfg.top_fraction * pixels), pixels))
    return 1


def image_score(amap: torch.Tensor, cfg: ScoreConfig) -> torch.Tensor:
    flat = amap.flatten(1)
    k = top_count(cfg, flat.shape[1])
    if k == 1:
        return flat.amax(dim=1)
    return flat.topk(k, dim=1).values.mean(dim=1)
