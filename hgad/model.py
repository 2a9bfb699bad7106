"""The HGAD model: frozen backbone -> one grid of features -> flow -> hierarchical prior -> map and score.

`forward` is the whole inference path on tensors (uint8 frames in, maps and scores out) so that
`torch.export`, ONNX and torch-tensorrt capture it as one graph with static shapes. Per frame:

1. `forward_features`: the backbone's stages on one grid, standardised (features.py);
2. `forward_ll`: the flow maps each position's vector to a latent z; its log-density under the line
   mixture (prior.py), without the flow's log-determinant as FastFlow scores, is standardised by its line's
   normal mean and spread at that position (`standardise_positions`);
3. `forward_map`: the anomaly map at the input size and its image score (scoring.py).
"""

from __future__ import annotations

import torch
from torch import nn

from .backbone import Backbone
from .config import ModelConfig
from .features import FeatureGrid
from .flow import Flow, positional_encoding_2d
from .prior import MASKED, build_prior
from .scoring import SmoothedMap, anomaly, image_score


class FramePath(nn.Module):
    """From frames to maps and scores, given a model's `forward_features` and `forward_ll`: what a model of one
    group (HGAD) and a grown one (groups.py) share. Subclasses have `classes`, `to_map` and `ll_ref`."""

    def class_bias(self, line: str | None, batch: int = 1) -> torch.Tensor:
        """[batch, K] mixture selector: all zeros is class-agnostic; `line` makes it class-aware."""
        bias = torch.zeros(batch, len(self.classes), device=self.ll_ref.device)
        if line is not None:
            bias.fill_(MASKED)
            bias[:, self.classes.index(line)] = 0.0
        return bias

    def forward_map(self, ll: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-likelihoods [B, h, w] -> anomaly maps [B, S, S] and image scores [B]."""
        amap = self.to_map(anomaly(ll, self.ll_ref))
        return amap, image_score(amap)

    def forward_head(self, features: torch.Tensor, class_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_map(self.forward_ll(features, class_bias))

    def forward(self, frames: torch.Tensor, class_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 BGR frames [B, S, S, 3] and a mixture selector [B, K] -> anomaly maps [B, S, S], scores [B]."""
        return self.forward_head(self.forward_features(self.preprocess(frames)), class_bias)


class HGAD(FramePath):
    def __init__(self, cfg: ModelConfig, pretrained_backbone: bool = True):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg.backbone, pretrained=pretrained_backbone)
        self.features = FeatureGrid(cfg.backbone, self.backbone.channels, cfg.image_size)
        self.channels = self.features.channels
        self.side = cfg.grid_side
        k, seed = len(cfg.classes), cfg.train.seed
        self.flow = Flow(self.channels, cfg.flow, seed=1000 * seed)
        self.prior = build_prior(cfg.prior, k, self.channels, seed=1000 * seed + 1)
        self.register_buffer("pos", positional_encoding_2d(cfg.flow.pos_dim, self.side, self.side), persistent=False)
        # Frozen from normal training data and saved with the weights (train.py): the reference of "normal"
        # (scoring.py), and per line and position the mean and variance of normal log-likelihoods with the
        # pooled lines' centre and spread, the scale standardised maps are put back on. Identity until fitted.
        self.register_buffer("ll_ref", torch.zeros(()))
        self.register_buffer("pos_mean", torch.zeros(k, self.side, self.side))
        self.register_buffer("pos_var", torch.ones(k, self.side, self.side))
        self.register_buffer("ll_centre", torch.zeros(()))
        self.register_buffer("ll_spread", torch.ones(()))
        mean = torch.tensor(cfg.backbone.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(cfg.backbone.std, dtype=torch.float32).view(1, 3, 1, 1)
        # uint8 -> [0, 1] -> (x - mean) / std folded into one multiply-add.
        self.register_buffer("in_scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("in_shift", -mean / std, persistent=False)
        self.to_map = SmoothedMap(self.side, cfg.image_size, cfg.score.sigma * cfg.image_size / 256.0)
        self.folded: nn.Module | None = None  # the flow folded for scoring whole grids (fold)
        self._folded_from: tuple[int, ...] = ()

    @property
    def classes(self) -> tuple[str, ...]:
        return self.cfg.classes

    def train(self, mode: bool = True) -> HGAD:
        super().train(mode)
        self.backbone.train(False)
        return self

    def fold(self) -> HGAD:
        """Fold the flow for scoring whole grids (flow.FoldedCoupling): the same scores in fewer operations,
        the position terms computed once (model_dir.load_model folds every model it loads). The folded copy
        is used while the flow's weights are as they were when folded; once they change in place (training,
        loading weights, an edit) scoring takes the flow itself until the model is folded again."""
        self.folded = self.flow.folded(self.pos)
        self._folded_from = self._flow_versions()
        return self

    def unfold(self) -> HGAD:
        """Score with the flow itself (what a quantiser that rewrites its Linear layers must see)."""
        self.folded = None
        return self

    def _flow_versions(self) -> tuple[int, ...]:
        # A tensor's version counter moves with every in-place change: optimiser steps, load_state_dict, edits.
        return tuple(p._version for p in self.flow.parameters())

    def _folded_flow(self) -> nn.Module | None:
        if self.folded is None or self.training:
            return None
        # Traced for export (torch.export, a TensorRT build) the parameters are stand-ins with versions of their
        # own: the folded copy is taken, which is why those exports fold the model afresh first.
        if not torch.compiler.is_compiling() and self._flow_versions() != self._folded_from:
            return None
        return self.folded

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 BGR frames [B, S, S, 3] (OpenCV's layout) -> normalised RGB [B, 3, S, S]."""
        x = frames.permute(0, 3, 1, 2)[:, [2, 1, 0]].float()
        return x * self.in_scale + self.in_shift

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images [B, 3, S, S] -> grid features [B, C, h, w]."""
        return self.features(self.backbone(x))

    def forward_ll(self, features: torch.Tensor, class_bias: torch.Tensor) -> torch.Tensor:
        """Grid features [B, C, h, w] and a mixture selector [B, K] -> standardised log-likelihoods [B, h, w]."""
        return self.score_positions(features.permute(0, 2, 3, 1), class_bias[:, None, None, :])

    def score_positions(
        self, x: torch.Tensor, bias: torch.Tensor, sel: torch.Tensor | None = None, raw: bool = False
    ) -> torch.Tensor:
        """Log-likelihoods of channel-last features [B, h, w, C]; the one path inference and the training
        statistics share (whole grids of a folded model take the folded flow, the same z to float32
        rounding). `sel` ([B, P] flat positions) scores the vectors at those positions only, x [B, P, C].
        `raw` leaves out the per-position standardisation (to fit it)."""
        folded = self._folded_flow() if sel is None else None
        if folded is not None:
            z = folded(x.flatten(1, 2)).reshape(x.shape)
        else:
            pos = self.pos if sel is None else self.pos.reshape(-1, self.pos.shape[-1])[sel]
            z = self.flow(x, pos)[0]
        out = self.prior.score(z, bias)
        if raw:
            return out.ll
        return self.standardise_positions(out.ll, self.line_weights(out.joint), sel)

    @staticmethod
    def line_weights(joint: torch.Tensor) -> torch.Tensor:
        """[B, ..., K] per-position log-joints -> [B, K]: the image's line posterior, tempered by averaging
        over positions instead of summing (the sum of thousands would overflow half precision; the average
        still names the line with near certainty, as every position shares it)."""
        return torch.softmax(joint.flatten(1, -2).mean(dim=1), dim=-1)

    def standardise_positions(
        self, ll: torch.Tensor, weights: torch.Tensor, sel: torch.Tensor | None = None
    ) -> torch.Tensor:
        """ll [B, h, w] (or [B, P] at flat positions `sel`) minus its line's mean at each position, over its
        spread, put back on the pooled lines' scale so that the reference and maps keep their units.
        `weights` [B, K] mix the lines' statistics as a mixture's moments: one-hot picks one line's, uniform
        gives the pooled lines'. Mixing by moments keeps the graph free of argmax (export friendly)."""
        mean, var = self.pos_mean, self.pos_var
        if sel is not None:
            k = mean.shape[0]
            mean = mean.reshape(k, -1)[:, sel].movedim(0, 1)  # [B, K, P]
            var = var.reshape(k, -1)[:, sel].movedim(0, 1)
        else:
            mean, var = mean[None], var[None]  # [1, K, h, w]
        w = weights.reshape(*weights.shape, *([1] * (ll.dim() - 1)))  # [B, K, 1(, 1)]
        m = (w * mean).sum(dim=1)
        v = (w * (var + (mean - m[:, None]) ** 2)).sum(dim=1)
        return self.ll_centre + self.ll_spread * (ll - m) * torch.rsqrt(v.clamp_min(1e-12))
