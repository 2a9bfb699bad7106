"""The model's configuration: everything needed to rebuild it, saved in the model directory's JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import ModelFormatError

PRIORS = ("hgad", "single")
CENTRE_LAYOUTS = ("random", "axes")
COMBINES = ("product", "likelihood")
IMAGE_SCORES = ("max", "topk", "top_fraction")


@dataclass(frozen=True)
class BackboneConfig:
    """A frozen timm CNN; `out_indices` picks the feature levels (timm `features_only` indices)."""

    name: str = "tf_efficientnet_lite0"
    # On Lite0 index 1 is stride 4 (24 channels), 2 stride 8 (40), 3 stride 16 (112). The stride-4 stage adds
    # the fine detail the deeper stages average away: on photo12 hgad gains 1.6 points image and 3.8 pixel
    # AUROC, single 4.5 and 5 (with `pool_on_grid` and `standardise`; docs/results.md, session 9).
    out_indices: tuple[int, ...] = (1, 2, 3)
    # A local weights file (safetensors or a plain state dict); None takes the packaged Lite0 weights.
    weights: str | None = None
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    # Neighbourhood averaging (k x k, stride 1) of every stage before the flows; 1 turns it off.
    pool: int = 3
    # A stride: every stage is resized to that grid and concatenated, and one flow models the joint vector.
    # 0: one flow per stage (how models were built before fusion; their JSON has no such key).
    fuse_stride: int = 16
    # With fusion: every stage is first box-averaged onto the grid, then averaged over pool x pool grid cells,
    # so every stage describes the same patch (48 px at stride 16). Models fused before this key pooled each
    # stage at its own stride before resizing (a 32 px patch for the stride-8 stage).
    pool_on_grid: bool = True
    # Per-channel standardisation of each level, frozen from the normal training features and saved with
    # the weights: stages differ in scale, and without it the stride-4 stage costs what it adds.
    standardise: bool = True


@dataclass(frozen=True)
class FlowConfig:
    """One flow per level: affine couplings conditioned on a 2-D sinusoidal positional encoding."""

    # Depth is what the unified model was short of: on photo12 (12 lines in one flow) 4 -> 8 -> 16 blocks
    # gives hgad 0.917 -> 0.960 -> 0.978 image AUROC and single 0.924 -> 0.959 -> 0.976 (docs/results.md,
    # session 11). 16 doubles flow training (8.6 min for the 1200-image run on 2 cores, was 5.9) and costs
    # 13 % per frame at inference (2 cores, batch 1: 161 -> 182 ms, the flows 30 -> 52 ms).
    n_blocks: int = 16
    pos_dim: int = 64
    hidden_ratio: float = 2.0
    clamp: float = 1.9


@dataclass(frozen=True)
class PriorConfig:
    """`hgad`: hierarchical Gaussian mixture (K classes x M centres); `single`: N(0, I), the baseline."""

    kind: str = "hgad"
    n_centres: int = 10
    init_distance: float = 5.0
    # "axes": centre k on latent axis k; "random": orthonormal directions. Only the starting layout:
    # a loaded model keeps its trained centres.
    centres: str = "axes"
    # AltUB-style learned per-class diagonal log-scale, clamped, used in every term. It gained about 1 point
    # under the old score (session 6); scored by the latent density (score.logdet false) it costs 5 points
    # image AUROC on photo12 (0.944 -> 0.888 at lambda2 10), so it is off (docs/results.md, session 10).
    learn_scale: bool = False
    scale_clamp: float = 3.0


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    batch_images: int = 8
    # Positions drawn per image and level at each step (and per image for the references); 0 uses every
    # position. 128 of a 768 px map's 2304: the flows cost in proportion, and at 256 the 1200-image photo12
    # training took 17.5 min (10 epochs) to about 20 (12) on a slow day's 2 cores, against 12.9 min now;
    # photo12 image AUROC 0.978 -> 0.972, pixel 0.978 -> 0.980 (docs/results.md, session 12).
    positions_per_image: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.95, 0.99)
    warmup_epochs: float = 1.0
    lambda1: float = 1.0
    # Weight of the mutual-information term (the paper's default is 100). Its pull on the flow shapes the
    # latent space for telling the lines apart, not for density: scored by the latent density, photo12's
    # image AUROC is 0.79 at 100, 0.94 at 10 and 0.96 at 1 (docs/results.md, session 10).
    lambda2: float = 1.0
    label_smoothing: float = 0.02
    # 0-based epoch at which the intra-class loss L_in joins (the paper's "from the third epoch").
    intra_start_epoch: int = 2
    grad_clip: float = 5.0
    seed: int = 0


@dataclass(frozen=True)
class ScoreConfig:
    """How level maps become one anomaly map and one image score."""

    # "likelihood": the likelihood map alone; "product": times the class-entropy map, as in the paper. The
    # entropy map found scratches and stains the old likelihood missed; with `logdet` false the likelihood
    # finds them itself, and multiplying by the entropy map costs 9 points image AUROC (session 10).
    combine: str = "likelihood"
    # Whether the flow's log-determinant enters the likelihood map. True is the exact log-likelihood of the
    # features; false scores the latent's log-density alone, as FastFlow does. On normal training data the
    # log-determinant varies three times as much as the latent term and hardly with anomalies (its own image
    # AUROC is 0.57), so it mostly adds noise: without it photo12's image AUROC goes 0.90 -> 0.96 for both
    # priors (docs/results.md, session 10). Models saved before this key existed scored with it.
    logdet: bool = False
    # Gaussian smoothing of the final map, in pixels at 256 px input (scaled with the input size).
    sigma: float = 4.0
    # "max": the map's highest pixel; "topk": mean of the `topk` highest; "top_fraction": mean of the
    # highest `top_fraction` of the map's pixels.
    image_score: str = "max"
    topk: int = 10
    top_fraction: float = 0.015
    # Quantile of normal training log-likelihoods used as each level's frozen reference.
    ref_quantile: float = 0.999
    # Each position's log-likelihood is standardised by its line's own mean and spread at that position,
    # frozen from normal training images; the line is the one the image's class posterior names (hgad), the
    # given one (class-aware), or, for `single` class-agnostic, the pooled lines. Normal variation differs
    # from place to place on a part under a fixed camera (edges, print, borders of the frame): on photo12
    # (CLI defaults) image AUROC goes 0.972 -> 0.978 for hgad (motorcycle 0.943 -> 0.968, gravel, ihc up
    # 1-2 points) and 0.974 -> 0.977 for single, pixel AUROC stays within 0.1 (docs/results.md, session 13).
    # Models saved before this key existed had no such statistics.
    position_stats: bool = True
    # Normal training images per line the statistics come from (all of a line's when it has fewer): 25, 50
    # and 100 score alike on photo12, and each image costs a whole-map pass of the flows.
    position_stats_images: int = 32


# Models saved before these keys existed were built this way; a missing key must not change them.
LEGACY_BACKBONE = {"pool": 1, "fuse_stride": 0, "pool_on_grid": False, "standardise": False}
LEGACY_SCORE = {"logdet": True, "position_stats": False}
DEFAULT_IMAGE_SIZE = 768


@dataclass(frozen=True)
class ModelConfig:
    classes: tuple[str, ...]
    # 768 px: with the fused level, 512 px beats 256 px by 4-6 points image AUROC on photo12, and 768 px adds
    # 2 more for hgad (single gains nothing), at 2.25x the backbone's cost (docs/results.md).
    image_size: int = DEFAULT_IMAGE_SIZE
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model.json") -> ModelConfig:
        try:
            return cls(
                classes=tuple(data["classes"]),
                image_size=int(data["image_size"]),
                backbone=_build(BackboneConfig, _with_legacy(data["backbone"], LEGACY_BACKBONE), f"{source}: backbone"),
                flow=_build(FlowConfig, data["flow"], f"{source}: flow"),
                prior=_build(PriorConfig, data["prior"], f"{source}: prior"),
                train=_build(TrainConfig, data["train"], f"{source}: train"),
                score=_build(ScoreConfig, _with_legacy(data["score"], LEGACY_SCORE), f"{source}: score"),
            )
        except KeyError as exc:
            raise ModelFormatError(f"{source}: missing key {exc.args[0]!r} in the model configuration") from None
        except (TypeError, ValueError) as exc:
            raise ModelFormatError(f"{source}: invalid model configuration: {exc}") from None


def _with_legacy(section: Any, legacy: dict[str, Any]) -> Any:
    return {**legacy, **section} if isinstance(section, dict) else section


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ModelFormatError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ModelFormatError(f"{where}: unknown key(s) {', '.join(unknown)}")
    values = {}
    for key, value in data.items():
        # JSON has no tuples; the dataclasses are frozen and compared by value, so restore them.
        values[key] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def validate(cfg: ModelConfig) -> None:
    def bad(msg: str) -> None:
        raise ValueError(msg)

    if not cfg.classes:
        bad("classes: at least one class (product line) is needed")
    if len(set(cfg.classes)) != len(cfg.classes):
        bad(f"classes: duplicate names in {list(cfg.classes)}")
    if cfg.image_size < 64 or cfg.image_size % 32:
        bad(f"image_size: {cfg.image_size} is not valid; use a multiple of 32, at least 64 (e.g. 256)")
    if not cfg.backbone.out_indices:
        bad("backbone.out_indices: at least one feature level is needed")
    if cfg.backbone.pool < 1 or cfg.backbone.pool % 2 == 0:
        bad(f"backbone.pool: {cfg.backbone.pool} must be an odd number >= 1 (1 turns averaging off)")
    if cfg.backbone.fuse_stride < 0 or (cfg.backbone.fuse_stride and cfg.image_size % cfg.backbone.fuse_stride):
        bad(f"backbone.fuse_stride: {cfg.backbone.fuse_stride} must be 0 (no fusion) or divide the image size")
    for section, key in (
        ("backbone", "pool_on_grid"),
        ("backbone", "standardise"),
        ("score", "logdet"),
        ("score", "position_stats"),
    ):
        value = getattr(getattr(cfg, section), key)
        if not isinstance(value, bool):
            bad(f"{section}.{key}: {value!r} must be true or false")
    if cfg.flow.n_blocks < 1:
        bad(f"flow.n_blocks: {cfg.flow.n_blocks} must be >= 1")
    if cfg.flow.pos_dim % 4 or cfg.flow.pos_dim < 4:
        bad(f"flow.pos_dim: {cfg.flow.pos_dim} must be a positive multiple of 4")
    if cfg.prior.kind not in PRIORS:
        bad(f"prior.kind: {cfg.prior.kind!r} is not one of {', '.join(PRIORS)}")
    if cfg.prior.centres not in CENTRE_LAYOUTS:
        bad(f"prior.centres: {cfg.prior.centres!r} is not one of {', '.join(CENTRE_LAYOUTS)}")
    if cfg.prior.n_centres < 1:
        bad(f"prior.n_centres: {cfg.prior.n_centres} must be >= 1")
    if cfg.score.combine not in COMBINES:
        bad(f"score.combine: {cfg.score.combine!r} is not one of {', '.join(COMBINES)}")
    if cfg.score.image_score not in IMAGE_SCORES:
        bad(f"score.image_score: {cfg.score.image_score!r} is not one of {', '.join(IMAGE_SCORES)}")
    if cfg.score.topk < 1:
        bad(f"score.topk: {cfg.score.topk} must be >= 1")
    if not 0.0 < cfg.score.top_fraction <= 1.0:
        bad(f"score.top_fraction: {cfg.score.top_fraction} must be in (0, 1]")
    if cfg.score.position_stats_images < 1:
        bad(f"score.position_stats_images: {cfg.score.position_stats_images} must be >= 1")
    if not 0.5 < cfg.score.ref_quantile <= 1.0:
        bad(f"score.ref_quantile: {cfg.score.ref_quantile} must be in (0.5, 1]")
    if cfg.train.epochs < 1:
        bad(f"train.epochs: {cfg.train.epochs} must be >= 1")
