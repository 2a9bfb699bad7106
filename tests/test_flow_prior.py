"""Flows and priors: exact log-determinants, identity at start, the losses, the scoring modes."""

from __future__ import annotations

import math
import re

import pytest
import torch

from hgad.config import FlowConfig, ModelConfig, PriorConfig, TrainConfig
from hgad.errors import ModelFormatError
from hgad.flow import Flow, positional_encoding_2d, random_orthogonal
from hgad.prior import MASKED, HierarchicalPrior, SinglePrior, orthogonal_centres


def _perturbed_flow(channels: int = 6, pos: int = 8) -> Flow:
    torch.manual_seed(0)
    flow = Flow(channels, FlowConfig(n_blocks=3, pos_dim=pos), seed=1)
    for p in flow.parameters():
        p.data.add_(0.3 * torch.randn_like(p))
    return flow.double()


def test_logdet_equals_the_jacobian_determinant():
    flow = _perturbed_flow()
    x = torch.randn(6, dtype=torch.float64)
    pos = torch.randn(8, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: flow(v, pos)[0], x)
    _, logabsdet = torch.linalg.slogdet(jac)
    with torch.no_grad():
        _, logdet = flow(x, pos)
    # The orthogonal mixing is stored in float32, so its log-determinant (taken as 0) is ~1e-8 per block.
    assert float(logdet) == pytest.approx(float(logabsdet), abs=1e-6)


def test_flow_starts_as_an_orthogonal_map():
    flow = Flow(8, FlowConfig(n_blocks=4, pos_dim=8), seed=0)
    x = torch.randn(100, 8)
    z, logdet = flow(x, torch.randn(100, 8))
    assert torch.allclose(logdet, torch.zeros(100), atol=1e-5)
    assert torch.allclose(z.norm(dim=1), x.norm(dim=1), atol=1e-4)


def test_maps_and_sampled_positions_agree():
    """Training sees [N, C] vectors with their encodings; inference sees whole maps: same numbers."""
    flow = _perturbed_flow(6, 8).float()
    pos = positional_encoding_2d(8, 4, 5)
    x = torch.randn(2, 4, 5, 6)
    z_map, ld_map = flow(x, pos)
    z_vec, ld_vec = flow(x.reshape(-1, 6), pos.reshape(-1, 8).repeat(2, 1))
    assert torch.allclose(z_map.reshape(-1, 6), z_vec, atol=1e-5)
    assert torch.allclose(ld_map.reshape(-1), ld_vec, atol=1e-5)


def test_the_folded_flow_gives_the_flows_z_on_its_grid():
    """Scoring folds the position terms, the clamp's division and the global affine into the products: the
    same z, in float32 to rounding."""
    flow = _perturbed_flow(7, 8).float()  # an odd channel count: passive and active halves differ
    pos = positional_encoding_2d(8, 4, 5)
    x = torch.randn(3, 4, 5, 7)
    with torch.no_grad():
        z, _ = flow(x, pos)
        folded = flow.folded(pos)(x.flatten(1, 2))
    assert folded.shape == (3, 20, 7)
    assert torch.allclose(folded.reshape(z.shape), z, atol=1e-5) and (z - x).abs().max() > 0.1
    # Copies of the weights, not saved with a model.
    assert not flow.folded(pos).state_dict()


def test_positional_encoding_is_distinct_per_position():
    enc = positional_encoding_2d(16, 8, 8).reshape(64, 16)
    assert torch.cdist(enc, enc).fill_diagonal_(1.0).min() > 0.1
    with pytest.raises(ValueError):
        positional_encoding_2d(10, 4, 4)


def test_random_orthogonal_is_orthogonal():
    q = random_orthogonal(12, torch.Generator().manual_seed(0))
    assert torch.allclose(q @ q.t(), torch.eye(12), atol=1e-5)


def test_centres_lie_on_the_first_axes_at_the_configured_distance():
    mu = orthogonal_centres(4, 10, 5.0, torch.Generator().manual_seed(0))
    assert torch.count_nonzero(mu[:, 4:]) == 0
    assert torch.allclose(mu[:, :4], torch.eye(4) * 5.0 / math.sqrt(2.0))
    d = torch.cdist(mu, mu)[~torch.eye(4, dtype=bool)]
    assert torch.allclose(d, torch.full_like(d, 5.0), atol=1e-4)


def test_more_lines_than_channels_get_distinct_directions_at_the_distance():
    mu = orthogonal_centres(12, 8, 5.0, torch.Generator().manual_seed(0))
    assert torch.allclose(mu.norm(dim=1), torch.full((12,), 5.0 / math.sqrt(2.0)), atol=1e-5)
    assert torch.cdist(mu, mu)[~torch.eye(12, dtype=bool)].min() > 0.5


def test_learned_scale_enters_every_term_as_a_diagonal_gaussian():
    """With learn_scale, L_g and the score both use N(mu_k, diag(exp(2 s_k)))."""
    cfg = PriorConfig(n_centres=1, learn_scale=True)
    prior = HierarchicalPrior(3, 6, cfg, torch.Generator().manual_seed(0))
    with torch.no_grad():
        prior.log_scale.copy_(torch.randn(3, 6, generator=torch.Generator().manual_seed(1)) * 0.5)
        prior.psi.copy_(torch.tensor([0.2, -0.1, 0.4]))
    z, logdet, y = torch.randn(20, 6), torch.randn(20), torch.randint(0, 3, (20,))
    s = prior.log_scale.detach()
    direct = torch.stack(
        [(-0.5 * ((z - prior.mu.detach()[k]) / s[k].exp()) ** 2 - s[k]).sum(-1) for k in range(3)], dim=-1
    )
    log_pi = torch.log_softmax(prior.psi.detach(), 0)
    expected_lg = -(torch.logsumexp(direct + log_pi, -1) + logdet).mean() / 6
    out = prior.losses(z, logdet, y, TrainConfig(), intra=False)
    assert torch.allclose(out.parts["L_g"], expected_lg, atol=1e-4)
    ll, joint = prior.score(z, torch.zeros(20, 3))
    # The score is the latent density: the flow's log-determinant is left out (FastFlow's choice).
    expected_ll = torch.logsumexp(direct + log_pi, -1) / 6 - 0.5 * math.log(2 * math.pi)
    assert torch.allclose(ll, expected_ll, atol=1e-4)
    assert torch.allclose(joint, direct + log_pi, atol=1e-4)


def test_intra_class_centres_detach_the_main_centre():
    prior = HierarchicalPrior(3, 8, PriorConfig(n_centres=4), torch.Generator().manual_seed(0))
    z = torch.randn(64, 8, requires_grad=True)
    y = torch.randint(0, 3, (64,))
    out = prior.losses(z, torch.zeros(64), y, TrainConfig(lambda1=0.0, lambda2=0.0), intra=True)
    # Only L_in through the intra centres: mu receives gradient only via L_g/L_mi/L_e (zero weight here)
    # and the entropy term; isolate L_in.
    prior.zero_grad()
    out.parts["L_in"].backward()
    assert prior.mu.grad is None or torch.count_nonzero(prior.mu.grad) == 0
    assert torch.count_nonzero(prior.delta.grad) > 0


def test_losses_are_finite_and_named():
    prior = HierarchicalPrior(4, 10, PriorConfig(), torch.Generator().manual_seed(0))
    out = prior.losses(torch.randn(50, 10), torch.randn(50), torch.randint(0, 4, (50,)), TrainConfig(), intra=True)
    assert set(out.parts) == {"L_g", "L_mi", "L_e", "L_in"}
    assert torch.isfinite(out.total)


def test_class_aware_scores_only_the_given_class():
    prior = HierarchicalPrior(3, 8, PriorConfig(n_centres=2), torch.Generator().manual_seed(0))
    z = prior.mu.detach()[1].expand(4, 8).clone()  # exactly at class 1's centre
    agnostic = torch.zeros(4, 3)
    aware_right = torch.full((4, 3), MASKED)
    aware_right[:, 1] = 0.0
    aware_wrong = torch.full((4, 3), MASKED)
    aware_wrong[:, 0] = 0.0
    ll_a = prior.score(z, agnostic).ll
    ll_r = prior.score(z, aware_right).ll
    ll_w = prior.score(z, aware_wrong).ll
    # At its own centre, the class-aware likelihood equals the agnostic one (other classes are far) ...
    assert torch.allclose(ll_a, ll_r, atol=1e-3)
    # ... and the wrong class makes the same point very unlikely.
    assert (ll_w < ll_r - 1.0).all()


def test_single_prior_is_the_standard_normal():
    prior = SinglePrior(2, 4)
    z = torch.zeros(3, 4)
    ll, joint = prior.score(z, torch.zeros(3, 2))
    assert torch.allclose(ll, torch.full((3,), -0.5 * math.log(2 * math.pi)))
    # One Gaussian says nothing about the line: the joint is the bias alone.
    assert torch.count_nonzero(joint) == 0


@pytest.mark.parametrize(
    ("section", "change", "match"),
    [
        ("prior", {"kind": "flat"}, "prior.kind: 'flat' is not one of hgad, single"),
        ("prior", {"centres": "axes"}, "prior.centres: unknown key"),
        ("prior", {"learn_scale": 1}, "prior.learn_scale: 1 is not true/false"),
        ("flow", {"n_blocks": 0}, "flow.n_blocks: 0 must be at least 1"),
        ("flow", {"pos_dim": 10}, "flow.pos_dim: 10 must be a positive multiple of 4"),
    ],
)
def test_bad_flow_and_prior_settings_are_one_clear_error(section, change, match):
    data = ModelConfig(classes=("a", "b")).to_dict()
    data[section].update(change)
    with pytest.raises(ModelFormatError, match=re.escape(match)):
        ModelConfig.from_dict(data)
