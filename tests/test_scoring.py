"""From log-likelihoods to an anomaly map and an image score."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hgad.scoring import MAX_ANOMALY, SmoothedMap, anomaly, gaussian_kernel1d, image_score


def test_as_normal_as_the_reference_is_zero_and_anomaly_grows_below_it():
    ref = torch.tensor(-2.0)
    ll = torch.tensor([[[-1.0, -2.0], [-3.0, -40.0]]])  # above, at, and further and further below the reference
    grid = anomaly(ll, ref)
    assert grid.shape == (1, 2, 2)
    assert grid[0, 0, 0] == 0 and grid[0, 0, 1] == 0
    assert 0 < grid[0, 1, 0] < grid[0, 1, 1]


def test_a_frame_of_noise_still_scores_finite_in_half_precision():
    ll = torch.tensor([[[-1e6, -3.0], [-3.0, -3.0]]], dtype=torch.float16)
    grid = anomaly(ll, torch.tensor(-2.0, dtype=torch.float16))
    amap = SmoothedMap(2, 8, 1.0).half()(grid)
    assert torch.isfinite(amap).all() and grid.max() == MAX_ANOMALY and 0 < amap.max() <= MAX_ANOMALY


def two_step_reference(grid: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Bilinear upsampling of the whole map, then a separable Gaussian convolution with reflected borders:
    the map as written down, computed the slow way in float64."""
    x = F.interpolate(grid[:, None].double(), size=(size, size), mode="bilinear", align_corners=True)
    k = gaussian_kernel1d(sigma)
    r = k.numel() // 2
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return x[:, 0]


def test_the_smoothed_map_equals_upsampling_then_gaussian_smoothing():
    grid = torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(0)) * 5.0
    grid[0, 2, 9] = 200.0  # a defect's peak near a border
    for size, sigma in ((96, 4.0 * 96 / 256), (96, 6.0), (50, 2.5)):
        ref = two_step_reference(grid, size, sigma)
        out = SmoothedMap(12, size, sigma)(grid)
        assert out.shape == (3, size, size)
        assert torch.allclose(out.double(), ref, rtol=1e-5, atol=1e-5), float((out.double() - ref).abs().max())


def test_the_map_keeps_a_flat_grid_flat_and_spreads_a_peak():
    to_map = SmoothedMap(8, 64, 3.0)
    flat = torch.full((1, 8, 8), 0.7)
    assert torch.allclose(to_map(flat), torch.full((1, 64, 64), 0.7), atol=1e-6)
    peak = torch.zeros(1, 8, 8)
    peak[0, 4, 4] = 1.0
    out = to_map(peak)[0]
    top = divmod(int(out.argmax()), 64)
    # The peak stays where grid point 4 lands (align_corners: 4 * 63 / 7 = 36) and is spread around it.
    assert top == (36, 36) and out[36, 36] < 1.0 and out[36, 44] > 0 and out[0, 0] < out[36, 44]


def test_the_image_score_is_the_maps_highest_value():
    maps = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(image_score(maps), maps.flatten(1).amax(1))
