"""From the backbone's stages to one grid of feature vectors, the input of the flow.

Three steps, plain tensor ops so that export and TensorRT see nothing unusual:
1. every stage is box-averaged onto the grid of `grid_stride` (finer stages see all their positions rather
   than aliasing to a few) and the stages are concatenated: one vector holds fine detail and context;
2. each grid cell is averaged with its pool x pool neighbours (PatchCore's neighbourhood aggregation), so a
   vector describes a patch of the part and a small defect moves several vectors, not one;
3. every channel is shifted and scaled by constants frozen from the normal training features: stages come
   out of the backbone at different scales, and the flow's clamps and the prior's centre spacing assume one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import BackboneConfig


class FeatureGrid(nn.Module):
    def __init__(self, cfg: BackboneConfig, stage_channels: list[int], image_size: int):
        super().__init__()
        self.pool = cfg.pool
        self.side = image_size // cfg.grid_stride
        self.channels = sum(stage_channels)
        # Identity until fitted; saved with the weights, so a loaded model scores as it was trained.
        self.register_buffer("shift", torch.zeros(self.channels))
        self.register_buffer("scale", torch.ones(self.channels))

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        """Stage maps [B, C_i, H_i, W_i] -> standardised grid features [B, C, side, side]."""
        return self.standardised(self.raw(stages))

    def raw(self, stages: list[torch.Tensor]) -> torch.Tensor:
        grid = torch.cat([self._to_grid(f) for f in stages], dim=1)
        if self.pool == 1:
            return grid
        return F.avg_pool2d(grid, self.pool, stride=1, padding=self.pool // 2, count_include_pad=False)

    def standardised(self, f: torch.Tensor) -> torch.Tensor:
        return (f - self.shift[:, None, None]) * self.scale[:, None, None]

    def _to_grid(self, f: torch.Tensor) -> torch.Tensor:
        side = self.side
        if f.shape[-1] == side:
            return f
        if f.shape[-1] % side == 0:
            return F.avg_pool2d(f, f.shape[-1] // side)
        return F.interpolate(f, size=(side, side), mode="bilinear", align_corners=False)


@torch.inference_mode()
def fit_standardisation(grid: FeatureGrid, features: torch.Tensor, chunk: int = 64) -> None:
    """Fit the grid's shift and scale on its raw normal training features [N, C, h, w] and apply them to
    those features in place (the training cache is the largest thing training holds; no second copy).

    Each channel gets zero mean and the level's overall standard deviation (over all channels and positions)
    as its spread: the flow sees one common scale, as large as the raw one, so its clamps and the prior's
    centre distance keep their meaning. A channel that never varies on normal data is only shifted: scaling
    it up would turn rounding noise into the largest signal of the vector."""
    n, c = features.shape[:2]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for j in range(0, n, chunk):
        x = features[j : j + chunk].double().transpose(0, 1).reshape(c, -1)
        total += x.sum(dim=1)
        total_sq += (x * x).sum(dim=1)
    count = features[:, 0].numel()
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0.0).sqrt()
    overall = float((total_sq.sum() / (count * c) - (total.sum() / (count * c)) ** 2).clamp_min(0.0) ** 0.5)
    live = std > 1e-6 * max(overall, 1e-12)
    grid.shift.copy_(mean)
    grid.scale.copy_(torch.where(live, overall / std.clamp_min(1e-300), torch.ones_like(std)))
    for j in range(0, n, chunk):
        x = features[j : j + chunk]
        features[j : j + chunk] = grid.standardised(x.to(grid.scale.device, torch.float32)).to(x.dtype)
