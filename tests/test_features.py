"""The feature grid: stages on one grid, neighbourhood averaging, frozen standardisation."""

from __future__ import annotations

import pytest
import torch

from hgad.config import BackboneConfig, ModelConfig
from hgad.errors import ModelFormatError
from hgad.features import FeatureGrid, fit_standardisation

POOL = torch.nn.functional.avg_pool2d


def _stages(size: int = 128) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [
        torch.randn(2, 24, size // 4, size // 4, generator=g),
        torch.randn(2, 40, size // 8, size // 8, generator=g),
        torch.randn(2, 112, size // 16, size // 16, generator=g),
    ]


def test_stages_are_box_averaged_onto_the_grid_then_over_the_same_patch():
    """A finer stage is box-averaged onto the grid (every fine position counts), then every stage is averaged
    over pool x pool grid cells, so all describe the same patch of the part."""
    s4, s8, s16 = _stages()
    grid = FeatureGrid(BackboneConfig(pool=3, grid_stride=16), [24, 40, 112], 128)
    out = grid(_stages())
    assert grid.channels == 176 and out.shape == (2, 176, 8, 8)
    on_grid = torch.cat([s4.reshape(2, 24, 8, 4, 8, 4).mean(dim=(3, 5)), POOL(s8, 2), s16], dim=1)
    assert torch.allclose(out, POOL(on_grid, 3, stride=1, padding=1, count_include_pad=False), atol=1e-6)


def test_averaging_stays_local():
    """A change at one position moves only its 3 x 3 neighbourhood: a small defect stays where it is."""
    grid = FeatureGrid(BackboneConfig(pool=3, grid_stride=8), [24, 40, 112], 128)
    stages = _stages()
    bumped = [s.clone() for s in stages]
    bumped[1][0, :, 5, 5] += 10.0
    diff = (grid(bumped) - grid(stages)).abs().sum(dim=1)[0]
    assert diff[4:7, 4:7].min() > 0
    diff[4:7, 4:7] = 0
    assert diff.max() == 0


def test_standardisation_is_frozen_from_training_features_and_applied_the_same_at_inference():
    grid = FeatureGrid(BackboneConfig(pool=3, grid_stride=16), [40, 112], 128)
    g = torch.Generator().manual_seed(2)
    # Stages at very different scales, as backbone stages come out.
    stages = [
        3.0 + 10.0 * torch.randn(6, 40, 16, 16, generator=g),
        -1.0 + 0.1 * torch.randn(6, 112, 8, 8, generator=g),
    ]
    stages[1][:, 5] = 2.0  # a channel that never varies on normal data
    raw = grid.raw(stages)
    cache = raw.clone().half()
    fit_standardisation(grid, cache)
    # The constant channel is shifted to zero, not blown up.
    assert grid.scale[45] == 1.0 and cache[:, 45].abs().max() < 1e-2
    per_channel = cache.float().transpose(0, 1).reshape(152, -1)[torch.arange(152) != 45]
    assert per_channel.mean(dim=1).abs().max() < 0.05 * per_channel.std(dim=1).mean()
    spread = per_channel.std(dim=1)
    assert spread.max() / spread.min() < 1.05  # one common spread instead of a factor of ~100
    # The overall spread is kept, so the flow sees the scale it would have seen without it.
    assert abs(float(spread.mean()) - float(raw.std())) < 0.05 * float(raw.std())
    # Inference applies the frozen constants: the same frames give the standardised training features.
    assert torch.allclose(grid(stages), cache.float(), atol=0.05)
    # Saved with the weights, so a reloaded model standardises the same way.
    assert {"shift", "scale"} <= set(grid.state_dict())


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"pool": 2}, "backbone.pool: 2 must be an odd number"),
        ({"grid_stride": 24}, "backbone.grid_stride: 24 must divide the image size 256"),
        ({"grid_stride": "16"}, "backbone.grid_stride: '16' is not an integer"),
        ({"out_indices": []}, "backbone.out_indices: at least one stage"),
        ({"fuse_stride": 16}, "backbone.fuse_stride: unknown key"),
    ],
)
def test_bad_grid_settings_are_one_clear_error(change, match):
    data = ModelConfig(classes=("a",), image_size=256).to_dict()
    data["backbone"].update(change)
    with pytest.raises(ModelFormatError, match=match):
        ModelConfig.from_dict(data)
