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
        if cfg.score.position_stats:
            # Per line and position: mean and variance of normal log-likelihoods; per level: the pooled lines'
            # centre and spread, the scale standardised maps are put back on. Identity until fitted.
            k = len(cfg.classes)
            for i, size in enumerate(self.feature_sizes):
                self.register_buffer(f"pos_mean{i}", torch.zeros(k, size, size))
                self.register_buffer(f"pos_var{i}", torch.ones(k, size, size))
            self.register_buffer("ll_centre", torch.zeros(len(self.channels)))
            self.register_buffer("ll_spread", torch.ones(len(self.channels)))
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
        self,
        level: int,
        x: torch.Tensor,
        bias: torch.Tensor,
        sel: torch.Tensor | None = None,
        raw: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One level's log-likelihood and entropy maps for channel-last features [B, h, w, C]; the one path
        inference and the training statistics share. `sel` ([B, P] flat positions) scores the vectors at
        those positions only, x [B, P, C]. `raw` leaves out the per-position standardisation (to fit it)."""
        table = self.positions(level)
        pos = table if sel is None else table.reshape(-1, table.shape[-1])[sel]
        z, logdet = self.flows[level](x, pos)
        if not self.cfg.score.logdet:
            logdet = torch.zeros_like(logdet)
        out = self.priors[level].score(z, logdet, bias, entropy=self.uses_entropy)
        if raw or not self.cfg.score.position_stats:
            return out.ll, out.entropy
        return self.standardise_positions(level, out.ll, self.line_weights(out.joint), sel), out.entropy

    @staticmethod
    def line_weights(joint: torch.Tensor) -> torch.Tensor:
        """[B, ..., K] per-position log-joints -> [B, K]: the image's line posterior, tempered by averaging
        over positions instead of summing (the sum of thousands would overflow half precision; the average
        still names the line with near certainty, as every position shares it)."""
        return torch.softmax(joint.flatten(1, -2).mean(dim=1), dim=-1)

    def standardise_positions(
        self, level: int, ll: torch.Tensor, weights: torch.Tensor, sel: torch.Tensor | None = None
    ) -> torch.Tensor:
        """ll [B, h, w] (or [B, P] at flat positions `sel`) minus its line's mean at each position, over its
        spread, put back on the level's pooled scale so that references and maps keep their units.
        `weights` [B, K] mix the lines' statistics as a mixture's moments: one-hot picks one line's, uniform
        gives the pooled lines'."""
        mean, var = getattr(self, f"pos_mean{level}"), getattr(self, f"pos_var{level}")
        if sel is not None:
            k = mean.shape[0]
            mean = mean.reshape(k, -1)[:, sel]  # [K, B, P]
            var = var.reshape(k, -1)[:, sel]
            mean, var = mean.movedim(0, 1), var.movedim(0, 1)  # [B, K, P]
        else:
            mean, var = mean[None], var[None]  # [1, K, h, w]
        w = weights.reshape(*weights.shape, *([1] * (ll.dim() - 1)))  # [B, K, 1(, 1)]
        m = (w * mean).sum(dim=1)
        v = (w * (var + (mean - m[:, None]) ** 2)).sum(dim=1)
        return self.ll_centre[level] + self.ll_spread[level] * (ll - m) * torch.rsqrt(v.clamp_min(1e-12))

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
