"""Per-line, per-position standardisation of the log-likelihood maps (HGAD.standardise_positions)."""

from __future__ import annotations

import pytest
import torch

from hgad.config import ModelConfig, PriorConfig, ScoreConfig
from hgad.data.datasets import load_split
from hgad.model import HGAD
from hgad.train import extract_features, fit_position_stats

from .conftest import SIZE, rebuilt


@pytest.fixture(scope="module")
def train_features(tiny_model, tiny_data):
    """The tiny model's standardised training features and line labels (as training saw them)."""
    model = tiny_model.model
    samples = load_split(tiny_data, "train", list(model.classes))
    with torch.inference_mode():
        feats = model.features.standardised(
            extract_features(model, [s.path for s in samples], torch.device("cpu")).float()
        )
    labels = torch.tensor([model.classes.index(s.class_name) for s in samples])
    return feats, labels


def _raw(model: HGAD, feats: torch.Tensor, line: str | None = None):
    """Raw per-dimension log-likelihood maps [N, h, w] and per-position log-joints of features [N, C, h, w]."""
    x = feats.float().permute(0, 2, 3, 1)
    z, _ = model.flow(x, model.pos)
    return model.prior.score(z, model.class_bias(line, x.shape[0])[:, None, None, :])


def _refitted(trained: HGAD, feats: torch.Tensor, labels: torch.Tensor, per_line: int) -> HGAD:
    model = rebuilt(trained, position_stats_images=per_line)
    fit_position_stats(model, feats, labels, torch.device("cpu"))
    return model


def test_statistics_are_fitted_saved_and_standardise_their_own_images(tiny_model, train_features):
    """Every line's images standardised by their own line's statistics average the level's centre at every
    position; the statistics were fitted (not the identity) and came back from the model directory."""
    saved = tiny_model.model
    feats, labels = train_features
    assert saved.pos_mean.abs().max() > 0.1
    # Refitted on every training image of each line, so that every image is one the statistics saw.
    model = _refitted(saved, feats, labels, per_line=int(torch.bincount(labels).max()))
    mean, var = model.pos_mean, model.pos_var
    assert mean.shape == (len(model.classes), model.side, model.side)
    assert (var > 0).all()
    # Lines and positions differ: a single constant would not do the same.
    assert float(mean.std()) > 0.01 and float(var.amax() / var.amin()) > 1.5
    with torch.inference_mode():
        raw = _raw(model, feats)
        for k in range(len(model.classes)):
            onehot = torch.nn.functional.one_hot(torch.tensor([k]), len(model.classes)).float()
            own = raw.ll[labels == k]
            std = model.standardise_positions(own, onehot.expand(own.shape[0], -1))
            assert torch.allclose(std.mean(dim=0), model.ll_centre.expand_as(std[0]), atol=1e-4)
            # ... and by hand: minus the line's mean, over its spread, on the pooled scale.
            by_hand = model.ll_centre + model.ll_spread * (own - mean[k]) / var[k].sqrt()
            assert torch.allclose(std, by_hand, atol=1e-4)


def test_the_image_names_its_line_and_class_aware_gives_it(tiny_model, train_features):
    """Class-agnostic, hgad's posterior (averaged over the image's positions) names each training image's
    line; class-aware, the given line's statistics are used, even a wrong one."""
    model = tiny_model.model
    feats, labels = train_features
    with torch.inference_mode():
        weights = model.line_weights(_raw(model, feats).joint)
        assert torch.equal(weights.argmax(dim=1), labels)
        assert (weights.max(dim=1).values > 0.9).all()
        wrong = model.classes[1 - int(labels[0])]
        aware = model.line_weights(_raw(model, feats[:1], wrong).joint)
    assert aware[0, model.classes.index(wrong)] > 0.999


def test_uniform_weights_give_the_pooled_lines_moments(tiny_model):
    """The single prior (class-agnostic) cannot tell lines apart: its uniform weights standardise by the pooled
    lines' mean and variance (the equal mixture's moments), not by any one line's."""
    model = tiny_model.model
    k = len(model.classes)
    ll = torch.randn(3, *model.pos_mean.shape[1:], generator=torch.Generator().manual_seed(0)) - 3.0
    uniform = torch.full((3, k), 1.0 / k)
    with torch.inference_mode():
        got = model.standardise_positions(ll, uniform)
    mean, var = model.pos_mean.double(), model.pos_var.double()
    m = mean.mean(dim=0)
    v = (var + mean**2).mean(dim=0) - m**2
    expected = model.ll_centre + model.ll_spread * (ll - m) / v.sqrt()
    assert torch.allclose(got.double(), expected, atol=1e-3)


def test_single_prior_weights_come_from_the_bias_alone():
    cfg = ModelConfig(classes=("a", "b", "c"), image_size=SIZE, prior=PriorConfig(kind="single"))
    model = HGAD(cfg, pretrained_backbone=False).eval()
    z = torch.randn(2, 4, 4, model.channels)
    with torch.inference_mode():
        agnostic = model.prior.score(z, model.class_bias(None, 2)[:, None, None, :])
        aware = model.prior.score(z, model.class_bias("c", 2)[:, None, None, :])
    assert torch.allclose(model.line_weights(agnostic.joint), torch.full((2, 3), 1.0 / 3))
    assert torch.allclose(model.line_weights(aware.joint), torch.tensor([[0.0, 0.0, 1.0]] * 2))


def test_a_line_with_one_image_gets_a_finite_spread(tiny_model, train_features):
    """Variances are shrunk towards the line's overall variance, so one training image (no spread at any
    position) still standardises to finite values; the draw of images per line is seeded."""
    feats, labels = train_features
    keep = torch.cat([torch.nonzero(labels == 0).flatten(), torch.nonzero(labels == 1).flatten()[:1]])
    fitted = []
    for _ in range(2):
        model = _refitted(tiny_model.model, feats[keep], labels[keep], per_line=3)
        fitted.append(model.pos_var.clone())
    assert torch.equal(fitted[0], fitted[1])
    assert torch.isfinite(model.pos_var).all() and (model.pos_var[1] > 0).all()
    with torch.inference_mode():
        ll = model.score_positions(feats[keep[-1:]].permute(0, 2, 3, 1), model.class_bias("pcb", 1)[:, None, None, :])
    assert torch.isfinite(ll).all()


def test_configuration_refuses_no_images_for_the_statistics():
    with pytest.raises(ValueError, match="position_stats_images: 0 must be at least 1"):
        ModelConfig(classes=("a",), score=ScoreConfig(position_stats_images=0))
