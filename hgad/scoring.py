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
    return k / k.sum()


def anomaly(ll: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Log-likelihoods [B, h, w] -> anomaly [B, h, w], 0 where as normal as the reference."""
    return (reference - ll).clamp(0.0, MAX_ANOMALY)


def smoothing_matrix(side: int, size: int, sigma: float) -> torch.Tensor:
    """[size, side]: bilinear upsampling from `side` to `size` points (align_corners: the end points
    coincide), then Gaussian smoothing with reflected borders (as scipy's default), along one axis."""
    unit = torch.eye(side, dtype=torch.float64)[:, None, :]  # [side, 1, side]: one grid point each
    up = F.interpolate(unit, size=size, mode="linear", align_corners=True)  # [side, 1, size]
    k = gaussian_kernel1d(sigma)
    r = k.numel() // 2
    smooth = F.conv1d(F.pad(up, (r, r), mode="reflect"), k.view(1, 1, -1))  # [side, 1, size]
    return smooth[:, 0].t().float().contiguous()


class SmoothedMap(nn.Module):
    """Anomaly grids [B, side, side] -> maps [B, size, size], upsampled bilinearly and smoothed.

    Both steps are linear and act on rows and columns apart, so together they are one matrix A per axis
    (smoothing_matrix) and the map is A x A^T: two small matrix products, where a convolution with a kernel
    of 8 sigma + 1 taps over every pixel of the full-size map cost several times more at 768 px.
    """

    def __init__(self, side: int, size: int, sigma: float):
        super().__init__()
        self.register_buffer("matrix", smoothing_matrix(side, size, sigma), persistent=False)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        a = self.matrix.to(grid.dtype)
        return a @ grid @ a.t()


def image_score(amap: torch.Tensor) -> torch.Tensor:
    """The smoothed map's highest value: one frame's anomaly score."""
    return amap.flatten(1).amax(dim=1)
