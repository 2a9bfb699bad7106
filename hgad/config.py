"""The model's configuration: everything needed to rebuild it, saved in the model directory's JSON.

There is one recipe (described in README, "The model"); the fields here are its sizes and rates, and two
ablations kept as named options: `prior.kind = "single"` (the flow against N(0, I), the baseline the
hierarchical prior is measured against) and `prior.learn_scale` (AltUB's learned per-line scale). Their
measured effect is in docs/results.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import ModelFormatError
from .typed_config import Checked, at_least, between, load, one_of, setting, to_plain

PRIORS = ("hgad", "single")
DEFAULT_IMAGE_SIZE = 768


def _odd(v: int) -> str | None:
    return None if v >= 1 and v % 2 else f"{v} must be an odd number >= 1 (1 turns averaging off)"


def _multiple_of_4(v: int) -> str | None:
    return None if v >= 4 and v % 4 == 0 else f"{v} must be a positive multiple of 4"


def _image_size(v: int) -> str | None:
    return None if v >= 64 and v % 32 == 0 else f"{v} is not valid; use a multiple of 32, at least 64 (e.g. 256)"


@dataclass(frozen=True)
class BackboneConfig(Checked):
    """A frozen timm CNN and how its stages become one grid of feature vectors (see features.py)."""

    name: str = "tf_efficientnet_lite0"
    # timm `features_only` indices of the stages read; on Lite0 1, 2, 3 are strides 4, 8 and 16.
    out_indices: tuple[int, ...] = setting((1, 2, 3), check=lambda v: None if v else "at least one stage is needed")
    # A local weights file (safetensors or a plain state dict); None takes the packaged Lite0 weights.
    weights: str | None = None
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    # Every stage is box-averaged onto the grid of this stride, then averaged over pool x pool cells, so
    # a position describes one patch of the part (48 px at stride 16 and pool 3).
    grid_stride: int = setting(16, check=at_least(1))
    pool: int = setting(3, check=_odd)


@dataclass(frozen=True)
class FlowConfig(Checked):
    """Affine coupling blocks conditioned on a 2-D sinusoidal positional encoding (see flow.py)."""

    n_blocks: int = setting(16, check=at_least(1))
    pos_dim: int = setting(64, check=_multiple_of_4)
    hidden_ratio: float = setting(2.0, check=at_least(0.1))
    clamp: float = setting(1.9, check=at_least(0.1))


@dataclass(frozen=True)
class PriorConfig(Checked):
    """`hgad`: hierarchical Gaussian mixture (K lines x M centres); `single`: N(0, I), the ablation."""

    kind: str = setting("hgad", check=one_of(*PRIORS))
    n_centres: int = setting(10, check=at_least(1))
    # Main centres start on the first latent axes, at this distance from each other.
    init_distance: float = setting(5.0, check=at_least(0.1))
    # AltUB's learned per-line diagonal log-scale (an ablation; off in the recipe).
    learn_scale: bool = False
    scale_clamp: float = setting(3.0, check=at_least(0.1))


@dataclass(frozen=True)
class TrainConfig(Checked):
    epochs: int = setting(12, check=at_least(1))
    batch_images: int = setting(8, check=at_least(1))
    # Positions drawn per image at each step (and per image for the references); 0 uses every position.
    # The flows' cost grows with it; a sample is enough because neighbouring positions are alike.
    positions_per_image: int = setting(128, check=at_least(0))
    lr: float = setting(2e-3, check=between(1e-6, 1.0))
    weight_decay: float = setting(1e-4, check=at_least(0.0))
    betas: tuple[float, ...] = (0.95, 0.99)
    warmup_epochs: float = setting(1.0, check=at_least(0.0))
    lambda1: float = 1.0
    # Weight of the mutual-information term. Scored by the latent density, the flow must model density
    # first; the paper's 100 pulls it towards telling lines apart instead.
    lambda2: float = 1.0
    label_smoothing: float = setting(0.02, check=between(0.0, 0.5))
    # 0-based epoch at which the intra-class loss L_in joins (the paper's "from the third epoch").
    intra_start_epoch: int = setting(2, check=at_least(0))
    grad_clip: float = setting(5.0, check=at_least(0.0))
    seed: int = 0


@dataclass(frozen=True)
class ScoreConfig(Checked):
    """How the flow's latent log-density becomes an anomaly map and an image score (see scoring.py)."""

    # Gaussian smoothing of the final map, in pixels at 256 px input (scaled with the input size).
    sigma: float = setting(4.0, check=at_least(0.0))
    # Quantile of normal training log-likelihoods that is the frozen reference of "normal".
    ref_quantile: float = setting(0.999, check=lambda v: None if 0.5 < v <= 1.0 else f"{v} must be in (0.5, 1]")
    # Normal training images per line that each position's statistics are frozen from.
    position_stats_images: int = setting(32, check=at_least(1))


@dataclass(frozen=True)
class ModelConfig(Checked):
    classes: tuple[str, ...] = setting(check=lambda v: None if v else "at least one class (product line) is needed")
    image_size: int = setting(DEFAULT_IMAGE_SIZE, check=_image_size)
    backbone: BackboneConfig = setting(factory=BackboneConfig)
    flow: FlowConfig = setting(factory=FlowConfig)
    prior: PriorConfig = setting(factory=PriorConfig)
    train: TrainConfig = setting(factory=TrainConfig)
    score: ScoreConfig = setting(factory=ScoreConfig)

    def relations(self) -> Iterable[tuple[str, str]]:
        if len(set(self.classes)) != len(self.classes):
            yield "classes", f"duplicate names in {list(self.classes)}"
        if self.image_size % self.backbone.grid_stride:
            yield "backbone.grid_stride", f"{self.backbone.grid_stride} must divide the image size {self.image_size}"

    @property
    def grid_side(self) -> int:
        return self.image_size // self.backbone.grid_stride

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "model.json") -> ModelConfig:
        return load(cls, data, f"{source}: config", ModelFormatError)
