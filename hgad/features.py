"""From the backbone's stage outputs to the feature levels the flows model.

Three optional steps, all plain tensor ops so that export and TensorRT see nothing unusual:
- neighbourhood aggregation (PatchCore): each position's vector is averaged with its k x k neighbours,
  so it describes a small patch rather than one receptive-field centre; small defects then move the
  vectors of several positions instead of one.
- fusion: every stage is resized to one grid and the stages are concatenated, so one flow and one prior
  model the joint vector (fine detail and context together) instead of one weak density per stage.
  Finer stages are box-averaged onto the grid, and by default the neighbourhood averaging runs after that,
  on the grid, so that every stage describes the same patch of the part.
- standardisation: every channel of a level is shifted and scaled by constants frozen from the normal
  training features (`fit_standardisation`), to zero mean and a common spread: stages come out of the
  backbone at different scales, and the flows' clamps and the prior's centre spacing assume one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import BackboneConfig


class FeatureLevels(nn.Module):
    def __init__(self, cfg: BackboneConfig, channels: list[int], strides: list[int], image_size: int):
        super().__init__()
        self.pool = cfg.pool
        self.pool_on_grid = cfg.pool_on_grid
        self.fuse_stride = cfg.fuse_stride
        # Side of the fused grid; 0 without fusion.
        self.side = image_size // cfg.fuse_stride if cfg.fuse_stride else 0
        if self.fuse_stride:
            self.channels = [sum(channels)]
            self.strides = [self.fuse_stride]
        else:
            self.channels = list(channels)
            self.strides = list(strides)
        self.standardise = cfg.standardise
        if self.standardise:
            # Identity until fitted; saved with the weights, so a loaded model scores as it was trained.
            for i, c in enumerate(self.channels):
                self.register_buffer(f"shift{i}", torch.zeros(c))
                self.register_buffer(f"scale{i}", torch.ones(c))

    def forward(self, stages: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.fuse_stride and self.pool_on_grid:
            levels = [self._average(torch.cat([self._to_grid(f) for f in stages], dim=1))]
        elif self.fuse_stride:
            levels = [torch.cat([self._to_grid(self._average(f)) for f in stages], dim=1)]
        else:
            levels = [self._average(f) for f in stages]
        if not self.standardise:
            return levels
        return [self.standardised(i, f) for i, f in enumerate(levels)]

    def standardised(self, level: int, f: torch.Tensor) -> torch.Tensor:
        """Level `level`'s features [B, C, h, w] shifted and scaled by its frozen constants."""
        shift, scale = getattr(self, f"shift{level}"), getattr(self, f"scale{level}")
        return (f - shift[:, None, None]) * scale[:, None, None]

    def _average(self, f: torch.Tensor) -> torch.Tensor:
        if self.pool == 1:
            return f
        return F.avg_pool2d(f, self.pool, stride=1, padding=self.pool // 2, count_include_pad=False)

    def _to_grid(self, f: torch.Tensor) -> torch.Tensor:
        side = self.side
        if f.shape[-1] == side:
            return f
        if f.shape[-1] % side == 0:
            # Box average onto the grid: equal to the bilinear resize at a factor of 2 (so models fused before
            # this keep their features), and at 4 it sees every fine position rather than aliasing to 4 of 16.
            return F.avg_pool2d(f, f.shape[-1] // side)
        return F.interpolate(f, size=(side, side), mode="bilinear", align_corners=False)


@torch.inference_mode()
def fit_standardisation(levels: FeatureLevels, features: list[torch.Tensor], chunk: int = 64) -> None:
    """Fit each level's shift and scale on its normal training features [N, C, h, w] and apply them to those
    features in place (the cache training keeps is the largest thing it holds; no second copy).

    Each channel gets zero mean and the level's overall standard deviation (over all its channels and
    positions) as its spread: the flows see one common scale, as large as the level's raw one, so their
    clamps and the prior's centre distance mean what they did without standardisation."""
    if not levels.standardise:
        return
    for i, feats in enumerate(features):
        n, c = feats.shape[:2]
        total = torch.zeros(c, dtype=torch.float64)
        total_sq = torch.zeros(c, dtype=torch.float64)
        for j in range(0, n, chunk):
            x = feats[j : j + chunk].double().transpose(0, 1).reshape(c, -1)
            total += x.sum(dim=1)
            total_sq += (x * x).sum(dim=1)
        count = feats[:, 0].numel()
        mean = total / count
        var = (total_sq / count - mean * mean).clamp_min(0.0)
        overall = float((total_sq.sum() / (count * c) - (total.sum() / (count * c)) ** 2) ** 0.5)
        std = var.sqrt()
        # A channel that never varies on normal data is only shifted: scaling it up would turn rounding
        # noise into the largest signal of the vector.
        live = std > 1e-6 * max(overall, 1e-12)
        getattr(levels, f"shift{i}").copy_(mean)
        getattr(levels, f"scale{i}").copy_(torch.where(live, overall / std.clamp_min(1e-300), torch.ones_like(std)))
        for j in range(0, n, chunk):
            x = feats[j : j + chunk]
            feats[j : j + chunk] = levels.standardised(i, x.to(levels.scale0.device, torch.float32)).to(x.dtype)
