"""Image scores from anomaly maps: the maximum, a top-k mean, or the mean of a fixed fraction of the map."""

from __future__ import annotations

import pytest
import torch

from hgad.config import ModelConfig, ScoreConfig
from hgad.errors import ModelFormatError
from hgad.scoring import image_score, top_count


def _maps(side: int) -> torch.Tensor:
    # Two frames with distinct, known pixel values: a shuffled ramp and its negative.
    g = torch.Generator().manual_seed(0)
    ramp = torch.arange(side * side, dtype=torch.float32)[torch.randperm(side * side, generator=g)]
    return torch.stack([ramp, -ramp]).reshape(2, side, side)


def test_max_is_the_highest_pixel():
    maps = _maps(16)
    assert torch.equal(image_score(maps, ScoreConfig(image_score="max")), maps.flatten(1).amax(1))


def test_topk_averages_the_k_highest_pixels():
    maps = _maps(16)
    got = image_score(maps, ScoreConfig(image_score="topk", topk=5))
    want = maps.flatten(1).sort(dim=1, descending=True).values[:, :5].mean(1)
    assert torch.allclose(got, want)
    assert (got < maps.flatten(1).amax(1)).all()


@pytest.mark.parametrize("side", [32, 64])
def test_top_fraction_is_the_same_share_of_the_map_at_every_size(side):
    cfg = ScoreConfig(image_score="top_fraction", top_fraction=0.01)
    k = top_count(cfg, side * side)
    assert k == round(0.01 * side * side)
    maps = _maps(side)
    want = maps.flatten(1).sort(dim=1, descending=True).values[:, :k].mean(1)
    assert torch.allclose(image_score(maps, cfg), want)


def test_top_fraction_never_averages_fewer_than_one_pixel():
    cfg = ScoreConfig(image_score="top_fraction", top_fraction=1e-6)
    assert top_count(cfg, 64) == 1
    maps = _maps(8)
    assert torch.equal(image_score(maps, cfg), maps.flatten(1).amax(1))


def test_model_json_without_top_fraction_loads_with_its_own_image_score():
    saved = ModelConfig(classes=("a",), score=ScoreConfig(image_score="max")).to_dict()
    del saved["score"]["top_fraction"]
    loaded = ModelConfig.from_dict(saved)
    assert loaded.score.image_score == "max"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"top_fraction": 0.0}, "score.top_fraction: 0.0"),
        ({"top_fraction": 1.5}, "score.top_fraction: 1.5"),
        ({"topk": 0}, "score.topk: 0"),
        ({"image_score": "mean"}, "score.image_score: 'mean'"),
        ({"logdet": "yes"}, "score.logdet: 'yes' must be true or false"),
    ],
)
def test_bad_image_score_settings_are_one_clear_error(change, match):
    data = ModelConfig(classes=("a",)).to_dict()
    data["score"].update(change)
    with pytest.raises(ModelFormatError, match=match):
        ModelConfig.from_dict(data)
