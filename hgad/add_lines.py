"""Adding product lines to a trained model (`hgad-edge train --from MODEL --classes new1,new2`).

1. The new lines get a group of their own (groups.py): the recipe, trained on their normal images alone, on the
   model's backbone (its weights, copied) and with the model's configuration (input size, flow, prior), beside
   the model's groups, which do not change. The old lines' images are not needed, and the add takes the time
   of training a model of the new lines alone.
2. Each old line gets a verdict. Its class-aware scores are its group's, as before. Its class-agnostic scores
   are as before wherever its frames still go to its own group: the whole images of it kept in the model's
   replay sample (replay.py) are routed through the grown model, and a line all of whose
   images stay in its group keeps its calibration profiles (model.json's `lineage`; the agent accepts its
   profiles of the old model). A line some of whose images the new group takes must be recalibrated, and
   lies so near a new line that the two are confused in class-agnostic scoring: the report says how often.
   The new lines' training images are routed the same way, so a new line the old groups take is named too.
3. The grown model's replay sample is the old one with the new lines' sample added, each line's features
   standardised as its group standardises them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .data.datasets import Sample
from .errors import BadInputError, DataError
from .groups import GroupedHGAD, InferenceModel
from .model import HGAD
from .model_dir import LoadedModel
from .progress import Progress, quiet
from .replay import Replay, concat
from .train import train


@dataclass
class AddReport:
    added: list[str]
    images: int
    seconds: float
    kept: list[str] = field(default_factory=list)  # old lines whose profiles still hold
    # Per line (old and new): the share of its stored images another group scores in class-agnostic mode.
    confused: dict[str, float] = field(default_factory=dict)
    replay: Replay | None = field(default=None, repr=False)
    training: dict | None = None  # the new group's training report

    def to_dict(self) -> dict:
        out = {"added": self.added, "images": self.images, "kept": self.kept, "confused": self.confused}
        return out | {"seconds": round(self.seconds, 1)} | ({"group": self.training} if self.training else {})


def groups_of(model: InferenceModel) -> list[HGAD]:
    return list(model.groups) if isinstance(model, GroupedHGAD) else [model]


def raw_grids(model: GroupedHGAD, replay: Replay, line: int) -> torch.Tensor | None:
    """A line's stored whole grids [G, C, h, w] as the backbone gave them (the sample holds them standardised
    by the line's group)."""
    grids = replay.grids_of(line)
    if grids is None:
        return None
    group = model.groups[model.group_of(replay.classes[line])]
    scale, shift = group.features.scale[:, None, None], group.features.shift[:, None, None]
    return grids.float() / scale + shift


@torch.inference_mode()
def confusion(model: GroupedHGAD, replay: Replay, lines: Sequence[str], batch: int = 8) -> dict[str, float]:
    """Per line of `lines` with stored grids: the share of them the grown model scores class-agnostically with
    another group than the line's."""
    out = {}
    for name in lines:
        grids = raw_grids(model, replay, replay.classes.index(name))
        if grids is None:
            continue
        chosen = torch.cat(
            [model.route(grids[i : i + batch], model.class_bias(None, grids[i : i + batch].shape[0]))
             for i in range(0, grids.shape[0], batch)]
        )  # fmt: skip
        out[name] = round(float((chosen != model.group_of(name)).float().mean()), 4)
    return out


def check_new_lines(old: Sequence[str], new: Sequence[str]) -> None:
    if clash := [c for c in new if c in old]:
        raise DataError(f"--classes: {', '.join(clash)} already in the model (it has {', '.join(old)})")


def add_lines(
    base: LoadedModel,
    samples: Sequence[Sample],
    replay: Replay,
    epochs: int | None = None,
    device: str | torch.device = "cpu",
    progress: Progress = quiet,
) -> tuple[GroupedHGAD, AddReport]:
    """The base model with the lines of `samples` added as a group of their own (see the module's docstring);
    `epochs`: the new group's training epochs (default: the model's recipe's)."""
    t0 = time.perf_counter()
    old = base.model.classes
    new = tuple(dict.fromkeys(s.class_name for s in samples))
    check_new_lines(old, new)
    if missing := [c for c in old if c not in replay.classes]:
        raise BadInputError(f"the model's replay sample lacks line(s) {', '.join(missing)}: retrain it from scratch")
    groups = groups_of(base.model.cpu().eval())
    recipe = groups[0].cfg
    cfg = dataclasses.replace(
        recipe, classes=new, train=dataclasses.replace(recipe.train, epochs=epochs or recipe.train.epochs)
    )
    group, training = train(cfg, samples, device, progress, backbone=groups[0].backbone)
    model = GroupedHGAD([*groups, group.cpu().eval()])
    grown = concat(replay.of(old), training.replay.of(model.classes), model.classes)
    confused = confusion(model, grown, model.classes)
    kept = [line for line in old if confused.get(line) == 0.0]
    seconds = time.perf_counter() - t0
    report = AddReport(list(new), len(samples), seconds, kept, confused, grown, training.to_dict())
    return model.eval(), report
