"""Feature levels: neighbourhood averaging and fusion of backbone stages, and models saved before them."""

from __future__ import annotations

import pytest
import torch

from hgad.config import BackboneConfig, ModelConfig
from hgad.errors import ModelFormatError
from hgad.features import FeatureLevels


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
    saved = ModelConfig(classes=("a",), image_size=256, backbone=BackboneConfig(pool=1, fuse_stride=0)).to_dict()
    del saved["backbone"]["pool"], saved["backbone"]["fuse_stride"]
    loaded = ModelConfig.from_dict(saved)
    assert (loaded.backbone.pool, loaded.backbone.fuse_stride) == (1, 0)
    assert ModelConfig(classes=("a",)).backbone != loaded.backbone


@pytest.mark.parametrize(
    ("change", "match"),
    [({"pool": 2}, "backbone.pool: 2"), ({"fuse_stride": 24}, "backbone.fuse_stride: 24")],
)
def test_bad_fusion_settings_are_one_clear_error(change, match):
    data = ModelConfig(classes=("a",), image_size=256).to_dict()
    data["backbone"].update(change)
    with pytest.raises(ModelFormatError, match=match):
        ModelConfig.from_dict(data)
