"""Latent priors of the flow, with their training losses and their scoring terms.

`HierarchicalPrior` is HGAD's: K main centres mu_k with line weights pi = softmax(psi) (the inter-class
mixture), and per line M intra-class centres nu_k1 = sg(mu_k), nu_km = sg(mu_k) + delta_km with weights
w_k = softmax(phi_k) (sg: stop-gradient). With d_nk = ||z_n - mu_k||^2 and C channels, training minimises

    L_g  = -[logsumexp_k(-d_nk / 2 + log pi_k) + log|det J_n|] / C
    L_mi = label-smoothed cross-entropy of the image's line y over the logits -d_nk / 2 + sg(log pi_k)
    L_e  = entropy of softmax_k(-d_nk / 2)
    L_in = -[logsumexp_m(-||z_n - nu_ym||^2 / 2 + log w_ym) + log|det J_n|] / C   (from the third epoch)

    total = lambda1 L_g + lambda2 L_mi + L_e (+ L_in)

and a position scores log sum_k pi_k sum_m w_km N(z; nu_km, I) per dimension. `SinglePrior` is N(0, I), the
ablation baseline. With `learn_scale` (AltUB) each line's Gaussians get a learned diagonal scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import PriorConfig, TrainConfig

LOG_2PI_HALF = 0.5 * math.log(2 * math.pi)
# Added to the class logits outside the selected line(s) in class-aware scoring. Finite (fp16-safe)
# rather than -inf, so an exported graph never meets inf - inf.
MASKED = -1.0e4


@dataclass
class LevelLosses:
    total: torch.Tensor
    parts: dict[str, torch.Tensor]


class PriorScores(NamedTuple):
    """Scoring terms at each position: the per-dimension log-likelihood, and the per-line log-joint
    log p(z, k) in nats plus the line bias, [..., K], from which the model infers an image's line."""

    ll: torch.Tensor
    joint: torch.Tensor


def squared_distances(z: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """||z - c||^2 for z [..., C] and centres [J, C] -> [..., J], via one matrix product."""
    zz = (z * z).sum(dim=-1, keepdim=True)
    cc = (centres * centres).sum(dim=-1)
    return (zz - 2.0 * (z @ centres.t()) + cc).clamp_min(0.0)


def entropy_of_logits(logits: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def orthogonal_centres(n_classes: int, channels: int, distance: float, generator: torch.Generator):
    """Main centres at a pairwise distance of `distance`: centre k on latent axis k (orthonormal rows scaled
    by distance / sqrt(2)), so that a diagonal per-line scale can follow the directions that separate lines."""
    if n_classes <= channels:
        rows = torch.eye(n_classes, channels, dtype=torch.float64)
    else:
        # More classes than channels: no orthogonal set exists; random directions are nearly so.
        rows = F.normalize(torch.randn(n_classes, channels, generator=generator, dtype=torch.float64), dim=1)
    return (rows * (distance / math.sqrt(2.0))).float()


class HierarchicalPrior(nn.Module):
    def __init__(self, n_classes: int, channels: int, cfg: PriorConfig, generator: torch.Generator):
        super().__init__()
        self.n_classes = n_classes
        self.channels = channels
        self.n_centres = cfg.n_centres
        self.scale_clamp = cfg.scale_clamp
        self.mu = nn.Parameter(orthogonal_centres(n_classes, channels, cfg.init_distance, generator))
        self.psi = nn.Parameter(torch.zeros(n_classes))
        self.delta = nn.Parameter(torch.randn(n_classes, cfg.n_centres - 1, channels, generator=generator))
        self.phi = nn.Parameter(torch.zeros(n_classes, cfg.n_centres))
        self.log_scale = nn.Parameter(torch.zeros(n_classes, channels)) if cfg.learn_scale else None

    def centres(self) -> torch.Tensor:
        """[K, M, C]; the main centre is detached so L_in moves only the deltas around it."""
        main = self.mu.detach()[:, None, :]
        return torch.cat([main, main + self.delta], dim=1)

    def _scales(self) -> torch.Tensor | None:
        if self.log_scale is None:
            return None
        return self.log_scale.clamp(-self.scale_clamp, self.scale_clamp)

    def _log_densities(self, z: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """log N(z; c_km, Sigma_k) without the 2*pi constant, for centres [K, M, C]: [..., K, M].
        Sigma_k is the identity, or diag(exp(2 s_k)) with a learned scale."""
        k, m, c = centres.shape
        s = self._scales()
        if s is None:
            return -0.5 * squared_distances(z, centres.reshape(k * m, c)).reshape(*z.shape[:-1], k, m)
        inv_var = torch.exp(-2.0 * s)  # [K, C]
        zz = (z * z) @ inv_var.t()  # [..., K]
        cross = z @ (centres * inv_var[:, None, :]).reshape(k * m, c).t()
        cc = (centres * centres * inv_var[:, None, :]).sum(-1)  # [K, M]
        d = (zz[..., :, None] - 2.0 * cross.reshape(*z.shape[:-1], k, m) + cc).clamp_min(0.0)
        return -0.5 * d - s.sum(dim=-1)[:, None]

    def _intra_log_density(self, z: torch.Tensor) -> torch.Tensor:
        """log sum_m w_km N(z; nu_km, Sigma_k) without the 2*pi constant: [..., K]."""
        log_w = F.log_softmax(self.phi, dim=-1)
        return torch.logsumexp(log_w + self._log_densities(z, self.centres()), dim=-1)

    def _main_logits(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; mu_k, Sigma_k) without the 2*pi constant, per class: [..., K]."""
        return self._log_densities(z, self.mu[:, None, :])[..., 0]

    def losses(
        self, z: torch.Tensor, logdet: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, intra: bool
    ) -> LevelLosses:
        c = self.channels
        logits = self._main_logits(z)  # [N, K]
        log_pi = F.log_softmax(self.psi, dim=0)
        l_g = -(torch.logsumexp(logits + log_pi, dim=-1) + logdet).mean() / c
        l_mi = F.cross_entropy(logits + log_pi.detach(), y, label_smoothing=cfg.label_smoothing)
        l_e = entropy_of_logits(logits).mean()
        total = cfg.lambda1 * l_g + cfg.lambda2 * l_mi + l_e
        parts = {"L_g": l_g, "L_mi": l_mi, "L_e": l_e}
        if intra:
            per_class = self._intra_log_density(z)  # [N, K]
            own = per_class.gather(-1, y[:, None]).squeeze(-1)
            l_in = -(own + logdet).mean() / c
            total = total + l_in
            parts["L_in"] = l_in
        return LevelLosses(total, parts)

    def score(self, z: torch.Tensor, class_bias: torch.Tensor) -> PriorScores:
        """Per-dimension latent log-density and per-line log-joint at each position.

        `class_bias` ([..., K], 0 for an allowed line and MASKED otherwise) selects the mixture: all zeros is
        class-agnostic (logsumexp over every line and centre), one zero is class-aware. Class-aware keeps
        log pi_y, i.e. it scores log p(z, y), so one frozen reference serves both modes.
        """
        log_pi = F.log_softmax(self.psi, dim=0)
        joint = log_pi + self._intra_log_density(z) + class_bias
        ll = torch.logsumexp(joint, dim=-1) / self.channels - LOG_2PI_HALF
        return PriorScores(ll, joint)


class SinglePrior(nn.Module):
    """N(0, I): one Gaussian for every line, the baseline the hierarchical prior is measured against."""

    def __init__(self, n_classes: int, channels: int):
        super().__init__()
        self.n_classes = n_classes
        self.channels = channels

    def losses(
        self, z: torch.Tensor, logdet: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, intra: bool
    ) -> LevelLosses:
        l_g = -(-0.5 * (z * z).sum(dim=-1) + logdet).mean() / self.channels
        return LevelLosses(cfg.lambda1 * l_g, {"L_g": l_g})

    def score(self, z: torch.Tensor, class_bias: torch.Tensor) -> PriorScores:
        ll = -0.5 * (z * z).sum(dim=-1) / self.channels - LOG_2PI_HALF
        # One Gaussian for every line says nothing about which line this is: only the bias does (uniform when
        # class-agnostic, the given line when class-aware).
        joint = class_bias.expand(*ll.shape, class_bias.shape[-1])
        return PriorScores(ll, joint)


def build_prior(cfg: PriorConfig, n_classes: int, channels: int, seed: int) -> nn.Module:
    if cfg.kind == "single":
        return SinglePrior(n_classes, channels)
    return HierarchicalPrior(n_classes, channels, cfg, torch.Generator().manual_seed(seed))
