"""The HGAD model: frozen backbone -> one flow and prior per level -> anomaly map and image score.

`forward` is the whole inference path on tensors (uint8 frames in, maps and scores out) so that
`torch.export` and torch-tensorrt can capture it as one graph with static shapes.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbone import Backbone
from .config import ModelConfig
from .features import FeatureLevels
from .flow import Flow, positional_encoding_2d
from .prior import MASKED, build_prior
from .scoring import GaussianBlur, anomaly_from_levels, image_score


class HGAD(nn.Module):
    def __init__(self, cfg: ModelConfig, pretrained_backbone: bool = True):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg.backbone, pretrained=pretrained_backbone)
        self.levels = FeatureLevels(cfg.backbone, self.backbone.channels, self.backbone.strides, cfg.image_size)
        self.channels = self.levels.channels
        self.feature_sizes = [cfg.image_size // s for s in self.levels.strides]
        seed = cfg.train.seed
        self.flows = nn.ModuleList(Flow(c, cfg.flow, seed=1000 * seed + 2 * i) for i, c in enumerate(self.channels))
        self.priors = nn.ModuleList(
            build_prior(cfg.prior, len(cfg.classes), c, seed=1000 * seed + 2 * i + 1)
            for i, c in enumerate(self.channels)
        )
        for i, size in enumerate(self.feature_sizes):
            self.register_buffer(f"pos{i}", positional_encoding_2d(cfg.flow.pos_dim, size, size), persistent=False)
        # Frozen references (see scoring.py), fitted on normal training data and saved with the weights.
        self.register_buffer("ll_ref", torch.zeros(len(self.channels)))
        self.register_buffer("entropy_ref", torch.zeros(len(self.channels)))
        mean = torch.tensor(cfg.backbone.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(cfg.backbone.std, dtype=torch.float32).view(1, 3, 1, 1)
        # uint8 -> [0, 1] -> (x - mean) / std folded into one multiply-add.
        self.register_buffer("in_scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("in_shift", -mean / std, persistent=False)
        self.blur = GaussianBlur(cfg.score.sigma * cfg.image_size / 256.0)

    @property
    def n_levels(self) -> int:
        return len(self.channels)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.cfg.classes

    def positions(self, level: int) -> torch.Tensor:
        return getattr(self, f"pos{level}")

    def train(self, mode: bool = True) -> HGAD:
        super().train(mode)
        self.backbone.train(False)
        return self

    @property
    def uses_entropy(self) -> bool:
        """Whether the anomaly map multiplies in the class-entropy map (hgad's prior, combine "product")."""
        return self.cfg.score.combine == "product" and self.priors[0].has_entropy

    def class_bias(self, line: str | None, batch: int = 1) -> torch.Tensor:
        """[batch, K] mixture selector: all zeros is class-agnostic; `line` makes it class-aware."""
        bias = torch.zeros(batch, len(self.cfg.classes), device=self.ll_ref.device)
        if line is not None:
            bias.fill_(MASKED)
            bias[:, self.cfg.classes.index(line)] = 0.0
        return bias

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 BGR frames [B, S, S, 3] (OpenCV's layout) -> normalised RGB [B, 3, S, S]."""
        x = frames.permute(0, 3, 1, 2)[:, [2, 1, 0]].float()
        return x * self.in_scale + self.in_shift

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.levels(self.backbone(x))

    def forward_levels(
        self, features: list[torch.Tensor], class_bias: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-level log-likelihood and entropy maps, each [B, h, w]."""
        bias = class_bias[:, None, None, :]
        lls, entropies = [], []
        for i, f in enumerate(features):
            ll, ent = self.score_level(i, f.permute(0, 2, 3, 1), bias)
            lls.append(ll)
            entropies.append(ent)
        return lls, entropies

    def score_level(
        self, level: int, x: torch.Tensor, bias: torch.Tensor, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One level's log-likelihood and entropy maps for channel-last features [B, h, w, C]; the one path
        inference and the training references share. `positions` (encodings broadcastable to x's leading
        shape) scores a sample of positions [B, P, C] instead of whole maps."""
        pos = self.positions(level) if positions is None else positions
        z, logdet = self.flows[level](x, pos)
        if not self.cfg.score.logdet:
            logdet = torch.zeros_like(logdet)
        return self.priors[level].score(z, logdet, bias, entropy=self.uses_entropy)

    def forward_maps(self, lls: list[torch.Tensor], entropies: list[torch.Tensor]) -> torch.Tensor:
        size = self.cfg.image_size
        amap = anomaly_from_levels(lls, self.ll_ref, size)
        if self.uses_entropy:
            # Entropy normality: low class entropy (a confident class) is normal.
            amap = amap * anomaly_from_levels([-e for e in entropies], -self.entropy_ref, size)
        return self.blur(amap)

    def forward_head(self, features: list[torch.Tensor], class_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap = self.forward_maps(*self.forward_levels(features, class_bias))
        return amap, image_score(amap, self.cfg.score)

    def forward(self, frames: torch.Tensor, class_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 BGR frames [B, S, S, 3] and a mixture selector [B, K] -> anomaly maps [B, S, S], scores [B]."""
        return self.forward_head(self.forward_features(self.preprocess(frames)), class_bias)
