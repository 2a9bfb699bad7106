"""A model grown by adding lines: the model it grew from and, for each add, a model of the added lines alone
(a group: flow, prior, statistics and reference of its own), run on one backbone.

Why groups: a flow fine-tuned to take new lines moves how it maps the old ones, and every way of holding it
back costs the new lines as much as it spares the old (docs/results.md, "Adding lines"). A group of its own,
trained on the new lines' images as from scratch, leaves the old groups untouched: their scores stay as they
were, and the new lines are learnt as well as a model trained on everything.

Per frame: the backbone and the raw feature grid once (every group holds the same backbone weights, copied at
the add); each group standardises the grid with its own constants and scores it (`HGAD.forward_ll`) under its
own lines. Class-aware, the line's group scores the frame. Class-agnostic, the frame goes to the group under
which it looks most normal: the highest median over positions of its standardised log-likelihood, in units of
that group's spread (a defect covers a minority of positions, so it does not send a frame to another group).
The map is the chosen group's log-likelihood grid less that group's reference of normal, so the grouped
model's reference is 0 and each line's scores are in its own group's units, as its profiles are.

Every group's flow runs on every frame (one static graph for export), so each add costs a frame about what
the flow costs, most of the frame's work: a model grown by many adds is worth retraining from scratch on
every line when there is time (`hgad-edge train`), which gives one group again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from .config import ModelConfig
from .model import HGAD, FramePath


def grouped_config(groups: Sequence[HGAD]) -> ModelConfig:
    """The first group's configuration with every group's lines, in group order."""
    return dataclasses.replace(groups[0].cfg, classes=tuple(c for g in groups for c in g.classes))


class GroupedHGAD(FramePath):
    """Groups of lines scored on one backbone; the same inference interface as `HGAD`."""

    def __init__(self, groups: Sequence[HGAD]):
        super().__init__()
        if len(groups) < 2:
            raise ValueError("a grouped model has two groups or more")
        lines = [c for g in groups for c in g.classes]
        if len(set(lines)) != len(lines):
            raise ValueError(f"a line in more than one group: {lines}")
        self.groups = nn.ModuleList(groups)
        self.cfg = grouped_config(groups)
        bounds, start = [], 0
        for g in groups:
            bounds.append((start, start + len(g.classes)))
            start += len(g.classes)
        self.bounds = tuple(bounds)
        # Each group's own reference is taken off in forward_ll, so the maps' is 0 (FramePath.forward_map).
        self.register_buffer("ll_ref", torch.zeros(()), persistent=False)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.cfg.classes

    @property
    def backbone(self) -> nn.Module:
        return self.groups[0].backbone

    @property
    def to_map(self) -> nn.Module:
        return self.groups[0].to_map

    def fold(self) -> GroupedHGAD:
        """Each group's flow folded for scoring (HGAD.fold)."""
        for group in self.groups:
            group.fold()
        return self

    def unfold(self) -> GroupedHGAD:
        for group in self.groups:
            group.unfold()
        return self

    def group_of(self, line: str) -> int:
        index = self.classes.index(line)
        return next(i for i, (a, b) in enumerate(self.bounds) if a <= index < b)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        return self.groups[0].preprocess(frames)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images [B, 3, S, S] -> raw grid features [B, C, h, w] (each group standardises them)."""
        first = self.groups[0]
        return first.features.raw(first.backbone(x))

    def _each_group(self, features: torch.Tensor, class_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every group's log-likelihoods less its reference [B, G, h, w], and the evidence [B, G] that a frame
        is the group's: the median z of its positions; a group none of whose lines is selected loses."""
        lls, evidence = [], []
        for group, (a, b) in zip(self.groups, self.bounds, strict=True):
            bias = class_bias[:, a:b]
            ll = group.forward_ll(group.features.standardised(features), bias)
            z = ((ll - group.ll_centre) / group.ll_spread).flatten(1)
            median = z.topk(z.shape[1] // 2 + 1, dim=1).values[:, -1]  # TopK exports where median does not
            evidence.append(median + bias.amax(dim=1))
            lls.append(ll - group.ll_ref)
        return torch.stack(lls, dim=1), torch.stack(evidence, dim=1)

    def scored(self, features: torch.Tensor, class_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw grid features [B, C, h, w] and a selector [B, K] -> the chosen group's log-likelihoods less its
        reference [B, h, w], and the chosen group [B]."""
        lls, evidence = self._each_group(features, class_bias)
        chosen = evidence.argmax(dim=1)
        pick = nn.functional.one_hot(chosen, len(self.groups)).to(lls.dtype)
        return (lls * pick[:, :, None, None]).sum(dim=1), chosen

    def route(self, features: torch.Tensor, class_bias: torch.Tensor) -> torch.Tensor:
        """The group that scores each frame [B]."""
        return self.scored(features, class_bias)[1]

    def forward_ll(self, features: torch.Tensor, class_bias: torch.Tensor) -> torch.Tensor:
        """The chosen group's log-likelihoods less its reference [B, h, w]."""
        return self.scored(features, class_bias)[0]


# What inference takes: a model of one group or a grown one (the same interface).
InferenceModel = HGAD | GroupedHGAD
