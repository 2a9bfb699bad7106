"""Normalizing flow over the channel vector at each grid position.

Each block (after FrEIA's AllInOneBlock) maps x in R^C, at a position with encoding p, to

    x = [x1, x2]                     x1: the first floor(C/2) channels (passive), x2 the rest (active)
    [a_s, a_t] = W2 relu(W1x x1 + W1p p + b1) + b2
    s  = clamp * tanh(a_s / clamp)   soft-clamped log-scale
    y  = [x1, x2 * exp(s) + a_t]
    y' = (y * softplus(g) + h) Q^T   learned global affine (starts at identity), fixed random orthogonal Q

    log|det J| = sum(s) + sum(log softplus(g))          (Q contributes nothing: |det Q| = 1)

so the inverse exists in closed form and the log-determinant costs nothing. The output layer starts at zero:
every block begins as the identity and early training is stable. Tensors are channels-last, [..., C], so the
same code trains on sampled positions [N, C] and scores whole maps [B, H, W, C] (a 1x1 convolution in effect).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import FlowConfig


def positional_encoding_2d(dim: int, height: int, width: int) -> torch.Tensor:
    """[height, width, dim]: sin/cos of the column in the first half of `dim`, of the row in the second."""
    if dim % 4:
        raise ValueError(f"positional encoding dimension {dim} must be a multiple of 4")
    half = dim // 2
    freq = torch.exp(torch.arange(0, half, 2, dtype=torch.float64) * -(math.log(1e4) / half))
    cols = torch.arange(width, dtype=torch.float64)[:, None] * freq  # [W, half/2]
    rows = torch.arange(height, dtype=torch.float64)[:, None] * freq  # [H, half/2]
    enc = torch.zeros(height, width, dim, dtype=torch.float64)
    enc[:, :, 0:half:2] = torch.sin(cols)[None, :, :]
    enc[:, :, 1:half:2] = torch.cos(cols)[None, :, :]
    enc[:, :, half::2] = torch.sin(rows)[:, None, :]
    enc[:, :, half + 1 :: 2] = torch.cos(rows)[:, None, :]
    return enc.float()


def random_orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    # Sign fix makes the draw uniform (Haar) rather than biased by QR's convention.
    q = q * torch.sign(torch.diagonal(r))[None, :]
    return q.float()


_SOFTPLUS_ONE = math.log(math.e - 1.0)  # softplus(x) == 1


class CouplingBlock(nn.Module):
    def __init__(self, channels: int, cond_dim: int, hidden: int, clamp: float, generator: torch.Generator):
        super().__init__()
        self.passive = channels // 2
        self.active = channels - self.passive
        self.clamp = clamp
        # The subnet's first layer is split into a feature part and a position part: the same map as a
        # Linear over the concatenation, without materialising it for every frame of a batch.
        self.in_x = nn.Linear(self.passive, hidden)
        self.in_pos = nn.Linear(cond_dim, hidden, bias=False)
        self.out = nn.Linear(hidden, 2 * self.active)
        # Zero output layer: every block starts as the identity, so early training is stable.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.global_scale = nn.Parameter(torch.full((channels,), _SOFTPLUS_ONE))
        self.global_shift = nn.Parameter(torch.zeros(channels))
        self.register_buffer("mix", random_orthogonal(channels, generator))

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1, x2 = x[..., : self.passive], x[..., self.passive :]
        h = F.relu(self.in_x(x1) + self.in_pos(pos))
        a = self.out(h)
        s = self.clamp * torch.tanh(a[..., : self.active] / self.clamp)
        y2 = x2 * torch.exp(s) + a[..., self.active :]
        y = torch.cat([x1, y2], dim=-1)
        scale = F.softplus(self.global_scale)
        y = y * scale + self.global_shift
        y = y @ self.mix.t()
        logdet = s.sum(dim=-1) + torch.log(scale).sum()
        return y, logdet


class FoldedCoupling(nn.Module):
    """A CouplingBlock's forward map on a fixed grid, for scoring: the same z in fewer, larger operations.

    With the grid fixed, the position term is a constant per position, added with the first layer's bias;
    1/clamp goes into the rows of W2 that make a_s; the global affine goes into the mixing:

        h  = relu(x1 W1x^T + c)          c = p W1p^T + b1, one row per grid position
        [u, a_t] = h W2'^T + b2'         W2', b2': W2, b2 with their first (active) rows over clamp
        y2 = x2 * exp(clamp * tanh(u)) + a_t
        z  = [x1, y2] M + m              M = diag(softplus(g)) Q^T,  m = h_g Q^T

    Scoring does not use log|det J|, so it is not computed. Built from the block's weights when folded
    (Flow.folded); it holds copies, so a model is folded again after its weights change (HGAD.fold).
    """

    def __init__(self, block: CouplingBlock, pos: torch.Tensor):
        super().__init__()
        self.passive, self.active, self.clamp = block.passive, block.active, block.clamp
        with torch.no_grad():
            hidden = block.in_x.weight.shape[0]
            c = (block.in_pos(pos) + block.in_x.bias).reshape(-1, hidden)
            w2, b2 = block.out.weight.clone(), block.out.bias.clone()
            w2[: self.active] /= self.clamp
            b2[: self.active] /= self.clamp
            scale = F.softplus(block.global_scale)
            tensors = {
                "w1": block.in_x.weight.t(), "c": c, "w2": w2.t(), "b2": b2,
                "m": scale[:, None] * block.mix.t(), "m_shift": block.global_shift @ block.mix.t(),
            }  # fmt: skip
        for name, t in tensors.items():
            # Not saved: derived from the block's weights whenever a model is folded.
            self.register_buffer(name, t.detach().contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, P, C] at the grid's P positions -> z [B, P, C]."""
        x1, x2 = x[..., : self.passive], x[..., self.passive :]
        h = torch.relu(x1 @ self.w1 + self.c)
        a = h @ self.w2 + self.b2
        y2 = x2 * torch.exp(self.clamp * torch.tanh(a[..., : self.active])) + a[..., self.active :]
        return torch.cat([x1, y2], dim=-1) @ self.m + self.m_shift


class Flow(nn.Module):
    """x [..., C] and positional encodings broadcastable to [..., P] -> z [..., C], log|det J| [...]."""

    def __init__(self, channels: int, cfg: FlowConfig, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        hidden = max(8, round(cfg.hidden_ratio * channels))
        self.channels = channels
        self.blocks = nn.ModuleList(
            CouplingBlock(channels, cfg.pos_dim, hidden, cfg.clamp, generator) for _ in range(cfg.n_blocks)
        )

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[:-1])
        for block in self.blocks:
            x, ld = block(x, pos)
            logdet = logdet + ld
        return x, logdet

    def folded(self, pos: torch.Tensor) -> nn.Sequential:
        """The forward map to z on the grid whose encodings are `pos` [h, w, P], as one module taking x
        [B, h * w, C] (FoldedCoupling)."""
        return nn.Sequential(*(FoldedCoupling(block, pos) for block in self.blocks))
