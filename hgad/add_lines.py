"""Adding product lines to a trained model (`hgad-edge train --from MODEL --classes new1,new2`).

1. The model grows: the old lines keep their centres and weights; each new line's centres are placed where the
   base flow already maps its normal features (the main centre at their mean latent, moved out along the line's
   free axis as far as the old centres' spacing needs; the intra-line centres on latents drawn from them), so
   the flow need not carry them across latent space. The backbone and the feature
   standardisation stay as they are (the old lines' features must not move).
2. The flow and the new lines' prior rows are fine-tuned: each step holds two new-line images and as many rows
   of the old lines' replay sample (replay.py: a bounded sample of their training features, kept with the model).
   The loss is the recipe's prior loss plus an anchor that holds the replay rows' latents and log-determinants
   where the base flow put them (the old lines' scores are exactly those two terms), so the flow learns the new
   lines where their features lie and leaves the old lines' region alone, plus the same anchor on points drawn
   around the replay rows (Gaussian noise on them): the old lines' defects, which no replay sample holds, lie
   off their normal vectors, and the flow must go on mapping that neighbourhood as the base did. A hold on the
   flow's weights (their squared distance from the base's) is there too, off by default: holding every weight
   keeps the flow from learning a new line that lies near an old one, where holding the neighbourhood does not
   (docs/results.md, "Holding the old lines' neighbourhood"). The old lines' centres, weights and scales do not
   move; the replay rows reach the prior loss only to keep the new centres off the old lines.
3. The new lines' per-position statistics are fitted from their images. The old lines' are corrected for how
   far the flow moved them: an affine map of their log-likelihoods fitted on their replay vectors, before and
   after. The reference of normal and the pooled scale stay the model's, so scores keep their units.
4. Each old line gets a verdict: its calibration profiles still hold when no image score of its replay grids
   (whole images no fine-tuning saw) moved by `KEEP_TOLERANCE` of the spread of normal image scores or more,
   in either scoring mode. A threshold is an order statistic of normal scores and moves no further than they
   do; a tenth of their spread is under half of what calibrating on another 100 normal images moves it
   (docs/results.md, "Do the old lines' profiles hold?"). Kept lines are recorded in model.json (`lineage`);
   the agent accepts their profiles of the old model. The others, and lines whose sample holds no grids (saved
   before grids were kept), must be recalibrated.

`epochs` 0 (the harness's, not the command's) leaves the flow as it is: the old lines' class-aware scores stay
as they were, but the new lines are scored by a flow that never learnt them, and where one lies near an old
line (a variant) the two lines' statistics mix in class-agnostic scoring and both fail (docs/results.md).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .data.datasets import Sample
from .errors import BadInputError, DataError
from .model import HGAD
from .model_dir import LoadedModel
from .progress import Progress, quiet
from .replay import Replay, concat
from .replay import sample as sample_replay
from .train import _lr_factor, _param_groups, class_balanced_draws, extract_features, fit_position_stats, vectors_at

FINE_TUNE_LR = 0.5  # of the recipe's learning rate
DEFAULT_EPOCHS = 12  # over the new lines' images
# New-line images per step (and as many replay rows): a quarter of the recipe's batch, so four times the steps
# for the same passes over the images. A new line is learnt in optimizer steps more than in images seen; the old
# lines lose a little more for it (docs/results.md, "Smaller steps, more of them").
BATCH_IMAGES = 2
ANCHOR = 1.0  # weight of the old lines' latent anchor in the fine-tuning loss
HOLD = 0.0  # weight of the flow's squared distance from the base's weights (summed over every weight)
NEAR = 1.0  # weight of the anchor on points around the replay rows
NEAR_SCALE = 0.5  # their distance from the rows: Gaussian noise of this spread on the standardised features
KEEP_TOLERANCE = 0.1  # of the spread of normal image scores (score_spread), for any one image
PLACE_IMAGES, PLACE_POSITIONS = 32, 128  # the new lines' vectors the new centres are placed on
# A line the base flow maps with more than this spread per latent dimension (a trained line's is about 1) stays
# on its free axis: the flow has not learnt anything like it, and centres placed among such latents let the
# fine-tuning expand them without bound.
PLACE_MAX_SPREAD = 4.0


@dataclass
class AddReport:
    added: list[str]
    images: int
    seconds: float
    kept: list[str] = field(default_factory=list)  # old lines whose profiles still hold
    moved: dict[str, float] = field(default_factory=dict)  # old line -> how far its scores moved (of the spread)
    replay: Replay | None = field(default=None, repr=False)
    recipe: FineTune | None = None  # how the flow was fine-tuned (kept in model.json's training report)

    def to_dict(self) -> dict:
        keys = ("added", "images", "kept", "moved")
        out = {k: getattr(self, k) for k in keys} | {"seconds": round(self.seconds, 1)}
        return out | ({"fine_tune": dataclasses.asdict(self.recipe)} if self.recipe else {})


def grow(base: HGAD, classes: tuple[str, ...]) -> HGAD:
    """The base model with its lines first and new centres for the rest."""
    k_old = len(base.classes)
    cfg = dataclasses.replace(base.cfg, classes=classes)
    model = HGAD(cfg, pretrained_backbone=False)
    own = model.state_dict()
    for name, value in base.state_dict().items():
        if own[name].shape == value.shape:
            own[name] = value
        else:  # per-line tensors: the old lines' rows, then the new model's fresh rows for the new lines
            own[name][:k_old] = value
    if hasattr(model.prior, "mu"):
        new_axes = torch.eye(len(classes), model.channels)[k_old:] * base.cfg.prior.init_distance / math.sqrt(2.0)
        own["prior.mu"][k_old:] = new_axes
        own["prior.psi"][k_old:] = base.prior.psi.detach().mean()
    model.load_state_dict(own)
    return model.eval()


@torch.no_grad()
def place_new_centres(model: HGAD, features: torch.Tensor, labels: torch.Tensor, k_old: int, seed: int) -> None:
    """Put each new line's centres near where the base flow already maps its normal features: the main centre at
    their mean latent, moved out along the line's own free axis just far enough to sit as far from every other
    centre as the old lines' centres sit from one another; the intra-line centres on latents drawn from them,
    shifted with it. The flow then moves the new features only that far, not across latent space to a free
    axis (which is what disturbs the old lines), and the lines stay as separable as the old ones are. A line
    whose latents spread more than `PLACE_MAX_SPREAD` per dimension keeps the free axis grow() gave it."""
    if not hasattr(model.prior, "mu"):
        return
    gen = torch.Generator().manual_seed(seed + 13)
    pos_table = model.pos.reshape(-1, model.cfg.flow.pos_dim)
    mu = model.prior.mu
    gap = _centre_gap(mu[:k_old], model.cfg.prior.init_distance)
    m = model.prior.delta.shape[1]
    for k in labels.unique().tolist():
        if k < k_old:
            continue
        images = torch.nonzero(labels == k).flatten()
        images = images[torch.randperm(images.numel(), generator=gen)[:PLACE_IMAGES]]
        x, sel, _ = _new_batch(features, labels, images, model.side, PLACE_POSITIONS, gen)
        z, _ = model.flow(x, pos_table[sel])
        mean = z.mean(dim=0)
        if (z - mean).pow(2).mean().sqrt() > PLACE_MAX_SPREAD:
            continue  # the base flow throws these features far out: start from the free axis instead
        axis = mu[k] / mu[k].norm().clamp_min(1e-12)  # grow() put the line on a latent axis of its own
        centre = mean + _distance_out(mean, axis, mu[:k], gap) * axis  # the old lines and the new ones so far
        mu[k].copy_(centre)
        model.prior.delta[k].copy_(z[torch.randperm(z.shape[0], generator=gen)[:m]] - mean)


def _centre_gap(centres: torch.Tensor, default: float) -> float:
    """The median distance from each centre to its nearest neighbour (`default` with fewer than two)."""
    if centres.shape[0] < 2:
        return default
    d = torch.cdist(centres.double(), centres.double()).fill_diagonal_(float("inf"))
    return float(d.min(dim=1).values.median())


def _distance_out(start: torch.Tensor, axis: torch.Tensor, others: torch.Tensor, gap: float) -> float:
    """The least t >= 0 with start + t * axis at least `gap` from every one of `others`."""
    if others.shape[0] == 0:
        return 0.0
    t = torch.linspace(0.0, 4.0 * gap, 401, dtype=torch.float64)
    points = start.double()[None] + t[:, None] * axis.double()[None]
    ok = (torch.cdist(points, others.double()).min(dim=1).values >= gap).nonzero()
    return float(t[ok[0, 0]]) if ok.numel() else float(t[-1])


def _raw_ll(model: HGAD, replay: Replay, z: torch.Tensor | None = None) -> torch.Tensor:
    """Raw log-likelihood of every replay vector under its own line's mixture: [N, P]. `z`: the vectors'
    latents under this model where they are at hand."""
    if z is None:
        z = model.latents(replay.vectors.float(), replay.positions)
    bias = torch.stack([model.class_bias(replay.classes[i], 1)[0] for i in replay.lines.tolist()])[:, None, :]
    return model.score_latents(z, bias, raw=True)


@torch.inference_mode()
def correct_old_lines(base: HGAD, model: HGAD, replay: Replay, anchors: Anchors) -> None:
    """Move each old line's statistics with its log-likelihoods: an affine fit on its replay vectors, before
    (their latents under the base flow: `anchors`) and after fine-tuning."""
    before, after = _raw_ll(base, replay, anchors.z), _raw_ll(model, replay)
    for k in range(len(base.classes)):
        rows = replay.lines == k
        if not rows.any():
            continue
        x, y = before[rows].flatten().double(), after[rows].flatten().double()
        slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum().clamp_min(1e-12))
        model.pos_mean[k] = (y.mean() + slope * (model.pos_mean[k].double() - x.mean())).float()
        model.pos_var[k] = (slope**2 * model.pos_var[k].double()).float()


@torch.inference_mode()
def grid_scores(model: HGAD, grids: torch.Tensor, line: str, batch: int = 8) -> torch.Tensor:
    """Image scores [G, 2] of whole standardised feature grids [G, C, h, w] of `line`: class-aware for it, and
    class-agnostic (the two modes a profile may be calibrated in), from one pass of the flow."""
    out = []
    for i in range(0, grids.shape[0], batch):
        z = model.latents(grids[i : i + batch].float().permute(0, 2, 3, 1))
        modes = [model.class_bias(line, z.shape[0]), model.class_bias(None, z.shape[0])]
        scores = [model.forward_map(model.score_latents(z, bias[:, None, None, :]))[1] for bias in modes]
        out.append(torch.stack(scores, dim=1))
    return torch.cat(out)


def score_spread(scores: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """Per scoring mode [2], the spread of normal image scores within a line, pooled over lines (one line's
    few grids give too rough an estimate of their own): the root mean of the lines' variances. None where no
    line has two grids."""
    var = [s.double().var(dim=0) for s in scores.values() if s.shape[0] > 1]
    return torch.stack(var).mean(dim=0).sqrt() if var else None


def score_shift(before: torch.Tensor, after: torch.Tensor, spread: torch.Tensor) -> float:
    """How far the same images' scores [G, modes] moved, before and after: the largest change of any image's
    score, of `spread` [modes]. A profile's threshold is an order statistic of normal scores, so it moves no
    further than the scores do; the common shift alone would miss it, as the threshold follows the scores'
    jitter (a few images moving in the upper tail) as much as their mean."""
    shift = (after.double() - before.double()).abs() / spread.clamp_min(1e-12)
    return round(float(shift.max()), 4)


def judge_old_lines(base: HGAD, model: HGAD, replay: Replay) -> dict[str, float]:
    """How far each old line's image scores moved (score_shift), for the lines with replay grids."""
    grids = {line: g for k, line in enumerate(base.classes) if (g := replay.grids_of(k)) is not None}
    if not grids:
        return {}
    before = {line: grid_scores(base, g, line) for line, g in grids.items()}
    after = {line: grid_scores(model, g, line) for line, g in grids.items()}
    spread = score_spread(before)
    if spread is None:
        return {}
    return {line: score_shift(before[line], after[line], spread) for line in grids}


@dataclass(frozen=True)
class FineTune:
    """How the grown model is fine-tuned."""

    epochs: int = DEFAULT_EPOCHS  # passes over the new lines' images
    lr_factor: float = FINE_TUNE_LR  # of the recipe's learning rate
    anchor: float = ANCHOR  # weight of the old lines' latent anchor
    place: bool = True  # the new centres start where the base flow maps the new lines' features
    weight_decay: float | None = None  # of the flow's weights; None: the recipe's
    hold: float = HOLD  # weight of the flow's squared distance from the base's weights
    near: float = NEAR  # weight of the anchor around the replay rows (the old lines' neighbourhood)
    near_scale: float = NEAR_SCALE  # spread of the noise that draws those points, per feature channel
    batch_images: int = BATCH_IMAGES  # new-line images per step, and as many replay rows


@dataclass
class Anchors:
    """The base flow's output on every replay row: latents [N, P, C] and log-determinants [N, P]."""

    z: torch.Tensor
    logdet: torch.Tensor

    @classmethod
    @torch.inference_mode()
    def of(cls, base: HGAD, replay: Replay) -> Anchors:
        pos = base.pos.reshape(-1, base.pos.shape[-1])[replay.positions]
        z, logdet = base.flow(replay.vectors.float(), pos)
        return cls(z.clone(), logdet.clone())


def _freeze_old_rows(prior: nn.Module, k_old: int) -> list:
    """Gradient hooks that keep the old lines' centres, weights and scales where they are."""

    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:k_old] = 0
        return grad

    return [p.register_hook(hook) for p in prior.parameters()]


def fine_tune(
    base: HGAD,
    model: HGAD,
    features: torch.Tensor,
    labels: torch.Tensor,
    replay: Replay,
    anchors: Anchors,
    recipe: FineTune,
    progress: Progress,
):
    """The flow and the new lines' prior on the new lines' cached features [N, C, h, w] (labels index the grown
    model's lines), each step `recipe.batch_images` new-line images and as many rows of the old lines' replay.

    Loss: the recipe's prior loss over both, plus `anchor` x the mean squared move of the replay rows' latents
    and per-dimension log-determinants from the base flow's (`anchors`): an old line's log-likelihood is its
    latent's density plus its log-determinant, so holding both holds its scores, while the flow stays free
    wherever the new lines' features lie; plus `near` x the same move of points drawn around the replay rows
    (noise of spread `near_scale` on each channel, the base flow's outputs computed afresh), which holds what
    no stored vector shows: how the old lines' defects, off their normal vectors, are mapped; plus `hold` x the
    squared distance of the flow's weights from the base's (their state when fine-tuning starts). In the prior
    loss the replay rows' latents are detached: there they only show the new lines' centres where the old lines
    lie; were the flow trained on them, it would fit the few stored vectors rather than their lines. The old
    lines' prior rows do not move."""
    cfg = model.cfg.train
    gen = torch.Generator().manual_seed(cfg.seed + 11)
    k_old = len(replay.classes)
    batch = recipe.batch_images
    steps = max(1, math.ceil(labels.numel() / batch)) * recipe.epochs
    lr = cfg.lr * recipe.lr_factor
    decay = cfg.weight_decay if recipe.weight_decay is None else recipe.weight_decay
    optimizer = torch.optim.Adam(_param_groups(model, lr, decay), betas=cfg.betas)
    pos_table = model.pos.reshape(-1, model.cfg.flow.pos_dim)
    hooks = _freeze_old_rows(model.prior, k_old)
    new_draws = class_balanced_draws(labels, steps * batch, gen).view(steps, batch)
    old_draws = class_balanced_draws(replay.lines, steps * batch, gen).view(steps, batch)
    start = [p.detach().clone() for p in model.flow.parameters()] if recipe.hold else []  # the hold's origin
    model.train()
    try:
        for step in progress(range(steps), total=steps, desc="add lines"):
            x, sel, y = _new_batch(features, labels, new_draws[step], model.side, cfg.positions_per_image, gen)
            rows = old_draws[step]
            xr = replay.vectors[rows].float().reshape(-1, model.channels)
            selr = replay.positions[rows].flatten()
            z, logdet = model.flow(torch.cat([x, xr]), pos_table[torch.cat([sel, selr])])
            n = x.shape[0]
            ys = torch.cat([y, replay.lines[rows][:, None].expand(-1, replay.positions.shape[1]).flatten()])
            zs, lds = torch.cat([z[:n], z[n:].detach()]), torch.cat([logdet[:n], logdet[n:].detach()])
            loss = model.prior.losses(zs, lds, ys, cfg, intra=True).total
            loss = loss + recipe.anchor * _drift(z[n:], logdet[n:], anchors.z[rows], anchors.logdet[rows])
            loss = loss + _holds(base.flow, model.flow, xr, pos_table[selr], recipe, start, gen)
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * _lr_factor(step, steps, max(1, steps // 10))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
    finally:
        for h in hooks:
            h.remove()
    model.eval()


def _holds(base: nn.Module, flow: nn.Module, xr, pos, recipe: FineTune, start: list, gen) -> torch.Tensor:
    """The loss terms that hold the flow where the old lines need it beyond their stored vectors: the anchor on
    points around the replay rows `xr` [N, C] at positions with encodings `pos`, and the weights' hold."""
    loss = torch.zeros(())
    if recipe.hold:
        loss = loss + recipe.hold * _squared_distance(flow, start)
    if recipe.near:
        xn = xr + recipe.near_scale * torch.randn(xr.shape, generator=gen)
        with torch.no_grad():
            zb, ldb = base(xn, pos)
        zn, ldn = flow(xn, pos)
        loss = loss + recipe.near * _drift(zn, ldn, zb, ldb)
    return loss


def _drift(z: torch.Tensor, logdet: torch.Tensor, z0: torch.Tensor, logdet0: torch.Tensor) -> torch.Tensor:
    """The mean squared move of latents [N, C] and per-dimension log-determinants [N] from where the base flow
    put them (z0, logdet0: the same rows, in any shape)."""
    channels = z.shape[-1]
    return (z - z0.reshape(-1, channels)).pow(2).mean() + ((logdet - logdet0.flatten()) / channels).pow(2).mean()


def _squared_distance(module: nn.Module, start: list[torch.Tensor]) -> torch.Tensor:
    """The squared distance of a module's weights from `start` (its weights when fine-tuning began)."""
    return sum((p - p0).pow(2).sum() for p, p0 in zip(module.parameters(), start, strict=True))


def _new_batch(features, labels, images, side, per_image, gen):
    """Vectors [N, C], their flat positions [N] and lines [N] at sampled positions of new-line images."""
    sel = torch.randint(0, side * side, (images.numel(), per_image), generator=gen)
    x = vectors_at(features[images].float(), sel).reshape(-1, features.shape[1])
    return x, sel.flatten(), labels[images][:, None].expand(-1, per_image).flatten()


def check_new_lines(old: Sequence[str], new: Sequence[str], replay: Replay) -> None:
    """Refuse lines the model already has, and a replay sample that misses one of its lines."""
    if clash := [c for c in new if c in old]:
        raise DataError(f"--classes: {', '.join(clash)} already in the model (it has {', '.join(old)})")
    if missing := [c for c in old if c not in replay.classes]:
        raise BadInputError(f"the model's replay sample lacks line(s) {', '.join(missing)}: retrain it from scratch")


def add_lines(
    base: LoadedModel,
    samples: Sequence[Sample],
    replay: Replay,
    recipe: FineTune = FineTune(),
    device: str | torch.device = "cpu",
    progress: Progress = quiet,
) -> tuple[HGAD, AddReport]:
    """The base model with the lines of `samples` added (see the module's docstring); the report's seconds
    include reading the new images."""
    t0 = time.perf_counter()
    new = tuple(dict.fromkeys(s.class_name for s in samples))
    check_new_lines(base.model.classes, new, replay)  # before the images are read, not after
    # Raw features are the frozen backbone's: the base model gives them as the grown one would.
    raw = extract_features(base.model.cpu().eval(), [s.path for s in samples], torch.device(device), progress=progress)
    lines = [s.class_name for s in samples]
    model, report = add_lines_from_features(base.model, raw, lines, replay, recipe, device, progress)
    return model, dataclasses.replace(report, seconds=time.perf_counter() - t0)


def add_lines_from_features(
    base: HGAD,
    raw: torch.Tensor,
    lines: Sequence[str],
    replay: Replay,
    recipe: FineTune = FineTune(),
    device: str | torch.device = "cpu",
    progress: Progress = quiet,
) -> tuple[HGAD, AddReport]:
    """As `add_lines`, from the new lines' raw grid features [N, C, h, w] and each row's line."""
    t0 = time.perf_counter()
    old, new = base.classes, tuple(dict.fromkeys(lines))
    check_new_lines(old, new, replay)
    base, old_replay = base.cpu().eval(), replay.of(old)
    model = grow(base, old + new)
    with torch.inference_mode():
        features = model.features.standardised(raw.float()).half()
    labels = torch.tensor([len(old) + new.index(line) for line in lines])
    if recipe.place:
        place_new_centres(model, features, labels, len(old), model.cfg.train.seed)
    anchors = Anchors.of(base, old_replay)
    if recipe.epochs:  # with none the flow stays the base's: only the new lines' centres and statistics are set
        fine_tune(base, model, features, labels, old_replay, anchors, recipe, progress)
    fit_position_stats(model, features, labels, torch.device(device), progress=progress, scale=False)
    correct_old_lines(base, model, old_replay, anchors)
    moved = judge_old_lines(base, model, old_replay)
    kept = [line for line, shift in moved.items() if shift < KEEP_TOLERANCE]
    # The new lines' sample is shaped like the old lines' (the same positions per image), so the two stack.
    per_image = old_replay.positions.shape[1]
    grown = sample_replay(features, labels, model.classes, model.cfg.train.seed, positions=per_image)
    combined = concat(old_replay, grown, model.classes)
    report = AddReport(list(new), len(lines), time.perf_counter() - t0, kept, moved, combined, recipe)
    return model, report
