"""Training: cache the frozen backbone's features once, then fit the flows and priors on the cache.

Caching is what makes CPU training of a demo-sized model take minutes: the backbone runs once per image
instead of once per image per epoch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import ModelConfig
from .data.datasets import Sample
from .data.images import read_image
from .errors import DataError, TrainingDivergedError
from .features import fit_standardisation
from .memory import frames_per_batch
from .model import HGAD
from .progress import Progress, quiet

log = logging.getLogger(__name__)


@dataclass
class TrainingReport:
    images: int
    per_class: dict[str, int]
    seconds_features: float
    seconds_training: float
    epochs: int
    losses: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "per_class": self.per_class,
            "seconds_features": round(self.seconds_features, 1),
            "seconds_training": round(self.seconds_training, 1),
            "epochs": self.epochs,
            "losses": self.losses,
            "torch": torch.__version__,
        }


def load_batches(paths: Sequence[Path], size: int, batch: int):
    """Yield uint8 BGR batches [B, S, S, 3]; decoding runs in threads ahead of the consumer."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        chunks = [paths[i : i + batch] for i in range(0, len(paths), batch)]
        futures = [pool.submit(lambda c: np.stack([read_image(p, size) for p in c]), c) for c in chunks[:2]]
        for i in range(len(chunks)):
            if i + 2 < len(chunks):
                futures.append(pool.submit(lambda c: np.stack([read_image(p, size) for p in c]), chunks[i + 2]))
            yield futures[i].result()


@torch.inference_mode()
def extract_features(
    model: HGAD,
    paths: Sequence[Path],
    device: torch.device,
    batch: int | None = None,
    progress: Progress = quiet,
) -> list[torch.Tensor]:
    """Backbone features of every image, per level [N, C, h, w], kept as float16 on the CPU."""
    batch = batch or frames_per_batch(model.cfg.image_size)
    # Filled in place rather than concatenated at the end: the cache is the largest thing training holds
    # (840 MB for 1200 images at 768 px), and a concatenation would hold it twice.
    cache: list[torch.Tensor] = [
        torch.empty(len(paths), c, s, s, dtype=torch.float16)
        for c, s in zip(model.channels, model.feature_sizes, strict=True)
    ]
    batches = load_batches(paths, model.cfg.image_size, batch)
    start = 0
    for frames in progress(batches, total=math.ceil(len(paths) / batch), desc="features"):
        x = model.preprocess(torch.from_numpy(frames).to(device))
        for level, f in enumerate(model.forward_features(x)):
            cache[level][start : start + f.shape[0]] = f.to("cpu", torch.float16)
        start += frames.shape[0]
    return cache


def class_balanced_draws(labels: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n image indices drawn so that every class is equally likely, whatever its image count."""
    counts = torch.bincount(labels).float()
    weights = 1.0 / counts[labels]
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def _param_groups(model: HGAD, lr: float, weight_decay: float) -> list[dict]:
    flows = [p for p in model.flows.parameters() if p.requires_grad]
    centres, weights, scales = [], [], []
    for prior in model.priors:
        for name, p in prior.named_parameters():
            {"mu": centres, "delta": centres, "log_scale": scales}.get(name, weights).append(p)
    groups = [{"params": flows, "lr": lr, "weight_decay": weight_decay}]
    # As in the paper's code: centres learn 3x faster and no parameter of the prior is decayed.
    if centres:
        groups.append({"params": centres, "lr": 3.0 * lr, "weight_decay": 0.0})
    if weights:
        groups.append({"params": weights, "lr": lr, "weight_decay": 0.0})
    if scales:
        groups.append({"params": scales, "lr": lr, "weight_decay": 0.0})
    for g in groups:
        g["base_lr"] = g["lr"]
    return groups


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * t))


def vectors_at(maps: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """The channel vectors of maps [B, C, h, w] at flat positions sel [B, P]: [B, P, C]."""
    b, c = maps.shape[:2]
    return maps.permute(0, 2, 3, 1).reshape(b, -1, c).gather(1, sel[..., None].expand(*sel.shape, c))


def fit_flows(
    model: HGAD,
    features: list[torch.Tensor],
    labels: torch.Tensor,
    device: torch.device,
    progress: Progress = quiet,
) -> list[dict[str, float]]:
    """Train flows and priors on cached features; returns mean losses per epoch."""
    cfg = model.cfg.train
    gen = torch.Generator().manual_seed(cfg.seed)
    n = labels.numel()
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_images))
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    optimizer = torch.optim.Adam(_param_groups(model, cfg.lr, cfg.weight_decay), betas=cfg.betas)
    scale_params = [p for prior in model.priors for name, p in prior.named_parameters() if name == "log_scale"]
    other_params = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in scale_params)]
    positions = [model.positions(i).reshape(-1, model.cfg.flow.pos_dim).to(device) for i in range(model.n_levels)]
    model.train()
    history = []
    step = 0
    for epoch in range(cfg.epochs):
        intra = epoch >= cfg.intra_start_epoch
        order = class_balanced_draws(labels, steps_per_epoch * cfg.batch_images, gen)
        sums: dict[str, float] = {}
        steps = progress(range(steps_per_epoch), total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}")
        for s in steps:
            idx = order[s * cfg.batch_images : (s + 1) * cfg.batch_images]
            y_img = labels[idx].to(device)
            loss = torch.zeros((), device=device)
            parts: dict[str, torch.Tensor] = {}
            for level, feats in enumerate(features):
                f = feats[idx].to(device, torch.float32)  # [B, C, h, w]
                b, c, h, w = f.shape
                p = cfg.positions_per_image
                if 0 < p < h * w:
                    sel = torch.randint(0, h * w, (b, p), generator=gen).to(device)
                    x = vectors_at(f, sel)
                else:
                    sel = torch.arange(h * w, device=device).expand(b, h * w)
                    x = f.permute(0, 2, 3, 1).reshape(b, h * w, c)
                pos = positions[level][sel.reshape(-1)]
                y = y_img[:, None].expand(b, sel.shape[1]).reshape(-1)
                z, logdet = model.flows[level](x.reshape(-1, c), pos)
                out = model.priors[level].losses(z, logdet, y, cfg, intra)
                loss = loss + out.total
                for k, v in out.parts.items():
                    parts[k] = parts.get(k, 0.0) + v.detach()
            if not torch.isfinite(loss):
                bad = ", ".join(f"{k}={float(v):.4g}" for k, v in parts.items())
                raise TrainingDivergedError(
                    f"training diverged at epoch {epoch + 1}, step {s + 1}: loss is {float(loss.detach())} ({bad}); "
                    f"lower the learning rate (now {cfg.lr}) or check the training images"
                )
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * _lr_factor(step, total_steps, warmup)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if scale_params:
                # AltUB: the learned scales and the rest take turns, each frozen on the other's step.
                for p in scale_params if step % 2 == 0 else other_params:
                    p.grad = None
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        means = {k: round(v / steps_per_epoch, 5) for k, v in sums.items()}
        history.append(means)
        log.info("epoch done", extra={"fields": {"epoch": epoch + 1, **means}})
    model.eval()
    return history


@torch.inference_mode()
def fit_position_stats(
    model: HGAD,
    features: list[torch.Tensor],
    labels: torch.Tensor,
    device: torch.device,
    batch: int = 16,
    progress: Progress = quiet,
) -> None:
    """Freeze each line's mean and variance of normal log-likelihoods at every position (see
    ScoreConfig.position_stats), from whole maps of a seeded choice of `position_stats_images` training images
    per line.

    A position's variance is shrunk towards the variance of all the line's values with the weight of two
    images, so that a line with one or two training images (or a position that never varies) does not divide
    by nothing; at 32 images that moves it by 6 %.
    """
    if not model.cfg.score.position_stats:
        return
    per_line = model.cfg.score.position_stats_images
    gen = torch.Generator().manual_seed(model.cfg.train.seed + 1)
    chosen = []
    for k in range(len(model.classes)):
        idx = torch.nonzero(labels == k).flatten()
        chosen.append(idx[torch.randperm(idx.numel(), generator=gen)[:per_line]])
    order = torch.cat(chosen)
    line_of = labels[order]
    for level, feats in enumerate(features):
        maps = []
        starts = range(0, order.numel(), batch)
        for i in progress(starts, total=len(starts), desc=f"position statistics level {level + 1}/{len(features)}"):
            f = feats[order[i : i + batch]].to(device, torch.float32).permute(0, 2, 3, 1)
            bias = model.class_bias(None, f.shape[0])[:, None, None, :]
            maps.append(model.score_level(level, f, bias, raw=True)[0].double().cpu())
        ll = torch.cat(maps)  # [N, h, w]
        means, variances, overall_means, overall_vars = [], [], [], []
        for k in range(len(model.classes)):
            x = ll[line_of == k]
            n = x.shape[0]
            mean = x.mean(dim=0)
            overall = x.var(unbiased=False)
            var = x.var(dim=0) if n > 1 else torch.zeros_like(mean)
            means.append(mean)
            variances.append((n * var + 2.0 * overall) / (n + 2.0))
            overall_means.append(x.mean())
            overall_vars.append(overall)
        mean, var = torch.stack(means), torch.stack(variances)
        # A line whose values never vary at all (one constant image) keeps a unit spread: nothing to scale by.
        var = torch.where(var > 0, var, torch.ones_like(var))
        getattr(model, f"pos_mean{level}").copy_(mean.float())
        getattr(model, f"pos_var{level}").copy_(var.float())
        # The pooled lines (each weighing the same) set the scale the standardised maps are put back on.
        centre = torch.stack(overall_means).mean()
        spread2 = (torch.stack(overall_vars) + (torch.stack(overall_means) - centre) ** 2).mean()
        model.ll_centre[level] = float(centre)
        model.ll_spread[level] = float(spread2.sqrt()) if spread2 > 0 else 1.0


@torch.inference_mode()
def fit_references(
    model: HGAD, features: list[torch.Tensor], device: torch.device, batch: int = 32, progress: Progress = quiet
) -> None:
    """Freeze each level's log-likelihood and entropy references from the normal training features.

    The quantiles come from a seeded sample of `positions_per_image` positions of every image, drawn
    without replacement: 150 k values for 1200 images at the default 128 pin a 0.999 quantile down (150
    lie above it), and scoring every position instead (2304 per image at 768 px) took 4 of the 21 minutes of the
    1200-image training on 2 AMD cores (session 12). With position statistics, an image's line is inferred
    from its sampled positions alone (it is certain from far fewer).
    """
    q = model.cfg.score.ref_quantile
    gen = torch.Generator().manual_seed(model.cfg.train.seed)
    for level, feats in enumerate(features):
        n, _, h, w = feats.shape
        per_image = model.cfg.train.positions_per_image
        p = per_image if 0 < per_image < h * w else h * w
        lls, ents = [], []
        starts = range(0, n, batch)
        for i in progress(starts, total=len(starts), desc=f"references level {level + 1}/{len(features)}"):
            f = feats[i : i + batch].to(device, torch.float32)
            sel = torch.rand(f.shape[0], h * w, generator=gen).argsort(dim=1)[:, :p].to(device)
            bias = model.class_bias(None, f.shape[0])
            ll, ent = model.score_level(level, vectors_at(f, sel), bias[:, None, :], sel=sel)
            lls.append(ll.flatten().cpu())
            ents.append(ent.flatten().cpu())
        ll_all = torch.cat(lls).double().numpy()
        ent_all = torch.cat(ents).double().numpy()
        model.ll_ref[level] = float(np.quantile(ll_all, q))
        model.entropy_ref[level] = float(np.quantile(ent_all, 1.0 - q))


def train(
    cfg: ModelConfig, samples: Sequence[Sample], device: str | torch.device = "cpu", progress: Progress = quiet
) -> tuple[HGAD, TrainingReport]:
    device = torch.device(device)
    class_index = {c: i for i, c in enumerate(cfg.classes)}
    unknown = sorted({s.class_name for s in samples} - set(class_index))
    if unknown:
        raise DataError(f"training samples of unknown classes: {', '.join(unknown)}")
    counts = {c: sum(1 for s in samples if s.class_name == c) for c in cfg.classes}
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise DataError(f"no training images for class(es) {', '.join(empty)}")
    torch.manual_seed(cfg.train.seed)
    model = HGAD(cfg).to(device)
    t0 = time.perf_counter()
    features = extract_features(model, [s.path for s in samples], device, progress=progress)
    t1 = time.perf_counter()
    fit_standardisation(model.levels, features)
    labels = torch.tensor([class_index[s.class_name] for s in samples])
    history = fit_flows(model, features, labels, device, progress=progress)
    fit_position_stats(model, features, labels, device, progress=progress)
    fit_references(model, features, device, progress=progress)
    t2 = time.perf_counter()
    report = TrainingReport(len(samples), counts, t1 - t0, t2 - t1, cfg.train.epochs, history)
    return model, report
