"""From log-likelihoods to an anomaly map and an image score."""

from __future__ import annotations

import torch

from hgad.scoring import MAX_ANOMALY, GaussianBlur, anomaly_map, image_score


def test_as_normal_as_the_reference_is_zero_and_anomaly_grows_below_it():
    ref = torch.tensor(-2.0)
    ll = torch.tensor([[[-1.0, -2.0], [-3.0, -40.0]]])  # above, at, and further and further below the reference
    amap = anomaly_map(ll, ref, 2)
    assert amap.shape == (1, 2, 2)
    assert amap[0, 0, 0] == 0 and amap[0, 0, 1] == 0
    assert 0 < amap[0, 1, 0] < amap[0, 1, 1]


def test_a_frame_of_noise_still_scores_finite_in_half_precision():
    ll = torch.tensor([[[-1e6, -3.0]]], dtype=torch.float16)
    amap = anomaly_map(ll, torch.tensor(-2.0, dtype=torch.float16), 2)
    assert torch.isfinite(amap).all() and amap.max() == MAX_ANOMALY


def test_the_map_is_upsampled_to_the_input_size():
    ll = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(0)) - 3.0
    amap = anomaly_map(ll, torch.tensor(0.0), 32)
    assert amap.shape == (2, 32, 32)
    # Corners coincide with the grid's corners (align_corners): the upsampling adds no offset.
    assert torch.allclose(amap[:, 0, 0], anomaly_map(ll, torch.tensor(0.0), 4)[:, 0, 0])


def test_the_image_score_is_the_maps_highest_value():
    maps = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(image_score(maps), maps.flatten(1).amax(1))


def test_blur_keeps_a_flat_map_flat_and_spreads_a_peak():
    blur = GaussianBlur(2.0)
    flat = torch.full((1, 20, 20), 0.7)
    assert torch.allclose(blur(flat), flat, atol=1e-6)
    peak = torch.zeros(1, 21, 21)
    peak[0, 10, 10] = 1.0
    out = blur(peak)
    assert out[0, 10, 10] < 1.0 and out[0, 10, 12] > 0 and abs(float(out.sum()) - 1.0) < 1e-4
