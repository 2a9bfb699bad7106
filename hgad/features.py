"""From the backbone's stage outputs to the feature levels the flows model.

Two optional steps, both plain tensor ops so that export and TensorRT see nothing unusual:
- neighbourhood aggregation (PatchCore): each position's vector is averaged with its k x k neighbours,
  so it describes a small patch rather than one receptive-field centre; small defects then move the
  vectors of several positions instead of one.
- fusion: every stage is resized to one grid and the stages are concatenated, so one flow and one prior
  model the joint vector (fine detail and context together) instead of one weak density per stage.
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
        self.fuse_stride = cfg.fuse_stride
        # Side of the fused grid; 0 without fusion.
        self.side = image_size // cfg.fuse_stride if cfg.fuse_stride else 0
        if self.fuse_stride:
            self.channels = [sum(channels)]
            self.strides = [self.fuse_stride]
        else:
            self.channels = list(channels)
            self.strides = list(strides)

    def forward(self, stages: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.pool > 1:
            stages = [
                F.avg_pool2d(f, self.pool, stride=1, padding=self.pool // 2, count_include_pad=False) for f in stages
            ]
        if not self.fuse_stride:
            return stages
        side = self.side
        grid = [
            f if f.shape[-1] == side else F.interpolate(f, size=(side, side), mode="bilinear", align_corners=False)
            for f in stages
        ]
        return [torch.cat(grid, dim=1)]
