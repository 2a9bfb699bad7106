"""From the grid of log-likelihoods to one anomaly map and one image score.

A position's anomaly is how far its log-likelihood falls below the frozen reference of normal (a high
quantile of normal training log-likelihoods), in nats per feature dimension: max(ref - ll, 0), 0 at or above
the reference. The map is upsampled to the input size and smoothed with a Gaussian; the image score is its
maximum. The reference is frozen from normal training data (never the batch or a test set), so a frame's
score depends on that frame alone.

The difference is kept in log space rather than turned into a probability-like 1 - exp(ll - ref): that
saturates at exactly 1.0 in float32 once a region falls 17 nats below the reference, which a small model
reaches on ordinary normal frames, and then normal frames, defects and golden-frame parity checks all read
1.0. At the default size both rank the same (docs/results.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Far beyond any threshold (normal frames score 0 to a few tens), and finite in half precision (fp16 engines):
# a frame of pure noise must still give a finite score, which JSON can carry.
MAX_ANOMALY = 1.0e4


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


def anomaly_map(ll: torch.Tensor, reference: torch.Tensor, size: int) -> torch.Tensor:
    """Log-likelihoods [B, h, w] -> anomaly [B, size, size], 0 where as normal as the reference."""
    anomaly = (reference - ll).clamp(0.0, MAX_ANOMALY)
    return F.interpolate(anomaly[:, None], size=(size, size), mode="bilinear", align_corners=True)[:, 0]


def image_score(amap: torch.Tensor) -> torch.Tensor:
    """The smoothed map's highest value: one frame's anomaly score."""
    return amap.flatten(1).amax(dim=1)
