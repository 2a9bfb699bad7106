"""Training: cache the frozen backbone's features once, then fit the flow and the prior on the cache, then
freeze the statistics scoring needs (per-position line statistics, the reference of normal).

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
from .replay import Replay, sample

log = logging.getLogger(__name__)


@dataclass
class TrainingReport:
    images: int
    per_class: dict[str, int]
    seconds_features: float
    seconds_training: float
    epochs: int
    losses: list[dict[str, float]] = field(default_factory=list)
    replay: Replay | None = field(default=None, repr=False)  # saved beside the weights, not in the JSON

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
) -> torch.Tensor:
    """Raw grid features of every image [N, C, h, w] (before standardisation), float16 on the CPU."""
    batch = batch or frames_per_batch(model.cfg.image_size)
    # Filled in place rather than concatenated at the end: the cache is the largest thing training holds
    # (840 MB for 1200 images at 768 px), and a concatenation would hold it twice.
    cache = torch.empty(len(paths), model.channels, model.side, model.side, dtype=torch.float16)
    start = 0
    for frames in progress(
        load_batches(paths, model.cfg.image_size, batch), total=math.ceil(len(paths) / batch), desc="features"
    ):
        x = model.preprocess(torch.from_numpy(frames).to(device))
        f = model.features.raw(model.backbone(x))
        cache[start : start + f.shape[0]] = f.to("cpu", torch.float16)
        start += frames.shape[0]
    return cache


def class_balanced_draws(labels: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n image indices drawn so that every class is equally likely, whatever its image count."""
    counts = torch.bincount(labels).float()
    weights = 1.0 / counts[labels]
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def _param_groups(model: HGAD, lr: float, weight_decay: float) -> list[dict]:
    flows = [p for p in model.flow.parameters() if p.requires_grad]
    centres, weights, scales = [], [], []
    for name, p in model.prior.named_parameters():
        {"mu": centres, "delta": centres, "log_scale": scales}.get(name, weights).append(p)
    groups = [{"params": flows, "lr": lr, "weight_decay": weight_decay}]
    # As in the paper's code: centres learn 3x faster and no parameter of the prior is decayed.
    for params, factor in ((centres, 3.0), (weights, 1.0), (scales, 1.0)):
        if params:
            groups.append({"params": params, "lr": factor * lr, "weight_decay": 0.0})
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


def sample_positions(n_images: int, side: int, per_image: int, generator: torch.Generator) -> torch.Tensor:
    """[n_images, P] flat positions drawn with replacement; every position when `per_image` is 0 or more
    than the grid holds."""
    if 0 < per_image < side * side:
        return torch.randint(0, side * side, (n_images, per_image), generator=generator)
    return torch.arange(side * side).expand(n_images, side * side)


def _step_loss(
    model: HGAD, features: torch.Tensor, y_img: torch.Tensor, sel: torch.Tensor, intra: bool
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The total loss of one step on the sampled positions of a batch of cached images [B, C, h, w]."""
    b, c = features.shape[:2]
    x = vectors_at(features, sel).reshape(-1, c)
    pos = model.pos.reshape(-1, model.cfg.flow.pos_dim)[sel.reshape(-1)]
    y = y_img[:, None].expand(b, sel.shape[1]).reshape(-1)
    z, logdet = model.flow(x, pos)
    out = model.prior.losses(z, logdet, y, model.cfg.train, intra)
    return out.total, {k: v.detach() for k, v in out.parts.items()}


def fit_flows(
    model: HGAD,
    features: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    progress: Progress = quiet,
) -> list[dict[str, float]]:
    """Train the flow and the prior on cached standardised features; returns mean losses per epoch."""
    cfg = model.cfg.train
    gen = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = max(1, math.ceil(labels.numel() / cfg.batch_images))
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    optimizer = torch.optim.Adam(_param_groups(model, cfg.lr, cfg.weight_decay), betas=cfg.betas)
    # AltUB: the learned scales and the rest take turns, each frozen on the other's step.
    scales = [p for name, p in model.prior.named_parameters() if name == "log_scale"]
    others = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in scales)]
    model.train()
    history, step = [], 0
    for epoch in range(cfg.epochs):
        order = class_balanced_draws(labels, steps_per_epoch * cfg.batch_images, gen)
        sums: dict[str, float] = {}
        for s in progress(range(steps_per_epoch), total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}"):
            idx = order[s * cfg.batch_images : (s + 1) * cfg.batch_images]
            sel = sample_positions(idx.numel(), model.side, cfg.positions_per_image, gen).to(device)
            f = features[idx].to(device, torch.float32)
            loss, parts = _step_loss(model, f, labels[idx].to(device), sel, epoch >= cfg.intra_start_epoch)
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
            for p in (scales if step % 2 == 0 else others) if scales else ():
                p.grad = None
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            for k, v in {"loss": loss.detach(), **parts}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        history.append({k: round(v / steps_per_epoch, 5) for k, v in sums.items()})
        log.info("epoch done", extra={"fields": {"epoch": epoch + 1, **history[-1]}})
    model.eval()
    return history


def _stats_images(labels: torch.Tensor, n_lines: int, per_line: int, seed: int) -> torch.Tensor:
    """A seeded choice of at most `per_line` image indices of every line, in line order."""
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for k in range(n_lines):
        idx = torch.nonzero(labels == k).flatten()
        chosen.append(idx[torch.randperm(idx.numel(), generator=gen)[:per_line]])
    return torch.cat(chosen)


@torch.inference_mode()
def fit_position_stats(
    model: HGAD,
    features: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    batch: int = 16,
    progress: Progress = quiet,
) -> None:
    """Freeze each line's mean and variance of normal log-likelihoods at every position, from whole maps of a
    seeded choice of `position_stats_images` training images per line.

    Normal variation differs from place to place on a part under a fixed camera (edges, print, the borders
    of the frame); standardising by it makes a position's score mean "unusual for this place on this line".
    A position's variance is shrunk towards the variance of all the line's values with the weight of two
    images, so that a line with one or two training images (or a position that never varies) does not
    divide by nothing; at 32 images that moves it by 6 %. Only the lines present in `labels` are fitted.
    """
    order = _stats_images(labels, len(model.classes), model.cfg.score.position_stats_images, model.cfg.train.seed + 1)
    line_of = labels[order]
    maps = []
    starts = range(0, order.numel(), batch)
    for i in progress(starts, total=len(starts), desc="position statistics"):
        f = features[order[i : i + batch]].to(device, torch.float32).permute(0, 2, 3, 1)
        bias = model.class_bias(None, f.shape[0])[:, None, None, :]
        maps.append(model.score_positions(f, bias, raw=True).double().cpu())
    ll = torch.cat(maps)  # [N, h, w]
    line_means, line_vars = [], []
    for k in sorted(set(line_of.tolist())):
        x = ll[line_of == k]
        n = x.shape[0]
        overall = x.var(unbiased=False)
        var = x.var(dim=0) if n > 1 else torch.zeros_like(x[0])
        var = (n * var + 2.0 * overall) / (n + 2.0)
        # A line whose values never vary at all (one constant image) keeps a unit spread: nothing to scale by.
        model.pos_mean[k] = x.mean(dim=0).float()
        model.pos_var[k] = torch.where(var > 0, var, torch.ones_like(var)).float()
        line_means.append(x.mean())
        line_vars.append(overall)
    # The pooled lines (each weighing the same) set the scale the standardised maps are put back on.
    centre = torch.stack(line_means).mean()
    spread2 = (torch.stack(line_vars) + (torch.stack(line_means) - centre) ** 2).mean()
    model.ll_centre.fill_(float(centre))
    model.ll_spread.fill_(float(spread2.sqrt()) if spread2 > 0 else 1.0)


@torch.inference_mode()
def fit_references(
    model: HGAD, features: torch.Tensor, device: torch.device, batch: int = 32, progress: Progress = quiet
) -> None:
    """Freeze the reference log-likelihood of normal from the normal training features.

    The quantile comes from a seeded sample of `positions_per_image` positions of every image, drawn without
    replacement: 150 k values for 1200 images at the default 128 pin a 0.999 quantile down (150 lie above
    it), at a fraction of the cost of scoring every position. With position statistics, an image's line is
    inferred from its sampled positions alone (it is certain from far fewer).
    """
    gen = torch.Generator().manual_seed(model.cfg.train.seed)
    n, _, h, w = features.shape
    per_image = model.cfg.train.positions_per_image
    p = per_image if 0 < per_image < h * w else h * w
    lls = []
    starts = range(0, n, batch)
    for i in progress(starts, total=len(starts), desc="reference"):
        f = features[i : i + batch].to(device, torch.float32)
        sel = torch.rand(f.shape[0], h * w, generator=gen).argsort(dim=1)[:, :p].to(device)
        bias = model.class_bias(None, f.shape[0])[:, None, :]
        lls.append(model.score_positions(vectors_at(f, sel), bias, sel=sel).flatten().cpu())
    values = torch.cat(lls).double().numpy()
    model.ll_ref.fill_(float(np.quantile(values, model.cfg.score.ref_quantile)))


def train(
    cfg: ModelConfig,
    samples: Sequence[Sample],
    device: str | torch.device = "cpu",
    progress: Progress = quiet,
    backbone: nn.Module | None = None,
) -> tuple[HGAD, TrainingReport]:
    """The recipe on `samples`; `backbone`: weights to use instead of the packaged ones (a group added to a
    model runs on that model's backbone)."""
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
    model = HGAD(cfg, pretrained_backbone=backbone is None)
    if backbone is not None:
        model.backbone.load_state_dict(backbone.state_dict())
    model.to(device)
    t0 = time.perf_counter()
    features = extract_features(model, [s.path for s in samples], device, progress=progress)
    t1 = time.perf_counter()
    fit_standardisation(model.features, features)
    labels = torch.tensor([class_index[s.class_name] for s in samples])
    history = fit_flows(model, features, labels, device, progress=progress)
    fit_position_stats(model, features, labels, device, progress=progress)
    fit_references(model, features, device, progress=progress)
    t2 = time.perf_counter()
    replay = sample(features, labels, cfg.classes, cfg.train.seed)
    report = TrainingReport(len(samples), counts, t1 - t0, t2 - t1, cfg.train.epochs, history, replay)
    return model, report
