"""Feature levels: neighbourhood averaging and fusion of backbone stages, and models saved before them."""

from __future__ import annotations

import pytest
import torch

from hgad.config import BackboneConfig, ModelConfig
from hgad.errors import ModelFormatError
from hgad.features import FeatureLevels, fit_standardisation


def _stages(size: int = 128) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(2, 40, size // 8, size // 8, generator=g),
        torch.randn(2, 112, size // 16, size // 16, generator=g),
    ]


def test_fused_level_concatenates_stages_on_the_configured_grid():
    levels = FeatureLevels(BackboneConfig(pool=3, fuse_stride=16), [40, 112], [8, 16], 128)
    (fused,) = levels(_stages())
    assert levels.channels == [152] and levels.strides == [16]
    assert fused.shape == (2, 152, 8, 8)
    # The stride-16 stage is on the target grid already: its channels are only averaged, not resampled.
    pooled = torch.nn.functional.avg_pool2d(_stages()[1], 3, stride=1, padding=1, count_include_pad=False)
    assert torch.allclose(fused[:, 40:], pooled)


def test_fusion_averages_finer_stages_onto_the_grid():
    """A stage at a quarter of the grid's stride is box-averaged (every fine position counts); at half the
    stride the box average is the bilinear resize models fused before it were built with."""
    g = torch.Generator().manual_seed(1)
    s4, s8 = torch.randn(2, 24, 32, 32, generator=g), torch.randn(2, 40, 16, 16, generator=g)
    s16 = torch.randn(2, 112, 8, 8, generator=g)
    levels = FeatureLevels(BackboneConfig(pool=1, fuse_stride=16, standardise=False), [24, 40, 112], [4, 8, 16], 128)
    (fused,) = levels([s4, s8, s16])
    assert fused.shape == (2, 176, 8, 8)
    assert torch.allclose(fused[:, :24], s4.reshape(2, 24, 8, 4, 8, 4).mean(dim=(3, 5)), atol=1e-6)
    bilinear = torch.nn.functional.interpolate(s8, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(fused[:, 24:64], bilinear, atol=1e-6)


def test_every_stage_is_averaged_over_the_same_patch_on_the_grid():
    """By default finer stages reach the grid first and are then averaged over pool x pool grid cells; a model
    fused before that key averaged each stage at its own stride, then resized, and still does."""
    pool = torch.nn.functional.avg_pool2d
    s8, s16 = _stages()
    on_grid = FeatureLevels(BackboneConfig(pool=3, fuse_stride=16, standardise=False), [40, 112], [8, 16], 128)
    expected = pool(pool(s8, 2), 3, stride=1, padding=1, count_include_pad=False)
    assert torch.allclose(on_grid([s8, s16])[0][:, :40], expected, atol=1e-6)
    legacy_cfg = BackboneConfig(out_indices=(2, 3), pool=3, fuse_stride=16, pool_on_grid=False, standardise=False)
    legacy = FeatureLevels(legacy_cfg, [40, 112], [8, 16], 128)
    before = torch.nn.functional.interpolate(
        pool(s8, 3, stride=1, padding=1, count_include_pad=False), size=(8, 8), mode="bilinear", align_corners=False
    )
    assert torch.allclose(legacy([s8, s16])[0][:, :40], before, atol=1e-6)
    assert not torch.allclose(before, expected, atol=1e-3)


def test_standardisation_is_frozen_from_training_features_and_applied_the_same_at_inference():
    levels = FeatureLevels(BackboneConfig(pool=3, fuse_stride=16), [40, 112], [8, 16], 128)
    g = torch.Generator().manual_seed(2)
    # Stages at very different scales, as backbone stages come out.
    stages = [
        3.0 + 10.0 * torch.randn(6, 40, 16, 16, generator=g),
        -1.0 + 0.1 * torch.randn(6, 112, 8, 8, generator=g),
    ]
    stages[1][:, 5] = 2.0  # a channel that never varies on normal data
    raw = levels(stages)[0].clone()  # identity until fitted
    cache = [raw.clone().half()]
    fit_standardisation(levels, cache)
    # The constant channel is shifted to zero, not blown up.
    assert levels.scale0[45] == 1.0 and cache[0][:, 45].abs().max() < 1e-2
    per_channel = cache[0].float().transpose(0, 1).reshape(152, -1)[torch.arange(152) != 45]
    assert per_channel.mean(dim=1).abs().max() < 0.05 * per_channel.std(dim=1).mean()
    spread = per_channel.std(dim=1)
    assert spread.max() / spread.min() < 1.05  # one common spread instead of a factor of ~100
    # The level's overall spread is kept, so the flows see the scale they would have seen without it.
    assert abs(float(spread.mean()) - float(raw.std())) < 0.05 * float(raw.std())
    # Inference applies the frozen constants: the same frames give the standardised training features.
    assert torch.allclose(levels(stages)[0], cache[0].float(), atol=0.05)
    # Saved with the weights, so a reloaded model standardises the same way.
    assert {"shift0", "scale0"} <= set(levels.state_dict())


def test_separate_levels_without_fusion_or_averaging_pass_through():
    levels = FeatureLevels(BackboneConfig(pool=1, fuse_stride=0), [40, 112], [8, 16], 128)
    stages = _stages()
    out = levels(stages)
    assert levels.channels == [40, 112] and levels.strides == [8, 16]
    assert all(torch.equal(a, b) for a, b in zip(out, stages, strict=True))


def test_averaging_stays_local():
    """A change at one position moves only its 3 x 3 neighbourhood: a small defect stays where it is."""
    levels = FeatureLevels(BackboneConfig(pool=3, fuse_stride=0), [40, 112], [8, 16], 128)
    stages = _stages()
    bumped = [s.clone() for s in stages]
    bumped[0][0, :, 5, 5] += 10.0
    diff = (levels(bumped)[0] - levels(stages)[0]).abs().sum(dim=1)[0]
    assert diff[4:7, 4:7].min() > 0
    diff[4:7, 4:7] = 0
    assert diff.max() == 0


def test_model_json_without_fusion_keys_loads_as_it_was_built():
    """Models saved before fusion existed had separate, unaveraged levels; new defaults must not change them."""
    legacy = BackboneConfig(out_indices=(2, 3), pool=1, fuse_stride=0, pool_on_grid=False, standardise=False)
    saved = ModelConfig(classes=("a",), image_size=256, backbone=legacy).to_dict()
    for key in ("pool", "fuse_stride", "pool_on_grid", "standardise"):
        del saved["backbone"][key]
    loaded = ModelConfig.from_dict(saved)
    assert (loaded.backbone.pool, loaded.backbone.fuse_stride) == (1, 0)
    assert (loaded.backbone.pool_on_grid, loaded.backbone.standardise) == (False, False)
    assert loaded.backbone == legacy
    assert ModelConfig(classes=("a",)).backbone != loaded.backbone


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"pool": 2}, "backbone.pool: 2"),
        ({"fuse_stride": 24}, "backbone.fuse_stride: 24"),
        ({"standardise": "yes"}, "backbone.standardise: 'yes' must be true or false"),
        ({"pool_on_grid": 1}, "backbone.pool_on_grid: 1 must be true or false"),
    ],
)
def test_bad_fusion_settings_are_one_clear_error(change, match):
    data = ModelConfig(classes=("a",), image_size=256).to_dict()
    data["backbone"].update(change)
    with pytest.raises(ModelFormatError, match=match):
        ModelConfig.from_dict(data)
