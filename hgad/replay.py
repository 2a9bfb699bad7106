"""A few whole images of every line, as feature grids, kept with the model so that lines can be added later
without the old lines' images (`hgad-edge train --from`, add_lines.py): routed through the grown model, they
show whether each old line's frames still go to its own group, and with it whether its calibration profiles
still hold.

Per line, GRIDS whole feature grids of training images, standardised as the line's group standardises them,
in float16: at 768 px 4 x 176 x 48 x 48 x 2 bytes, about 3.2 MB per line, in `replay.safetensors` beside the
weights. Scoring never reads it, so it is no part of the model id. A sample saved before grids were kept
(it held only vectors, for a fine-tuning this version no longer runs) loads without them; its lines cannot be
checked and must be recalibrated after an add.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import ModelFormatError

GRIDS = 4
FILE = "replay.safetensors"


@dataclass
class Replay:
    classes: tuple[str, ...]
    grids: torch.Tensor | None = None  # [M, C, h, w] float16, standardised features of whole images
    grid_lines: torch.Tensor | None = None  # [M] int64, index into `classes`

    def of(self, names: tuple[str, ...]) -> Replay:
        """The grids of these lines, re-indexed to `names`' order."""
        if self.grids is None:
            return Replay(names)
        keep = torch.tensor([self.classes[i] in names for i in self.grid_lines.tolist()], dtype=torch.bool)
        index = torch.tensor([names.index(self.classes[i]) for i in self.grid_lines[keep].tolist()])
        return Replay(names, self.grids[keep], index.to(torch.int64))

    def grids_of(self, line: int) -> torch.Tensor | None:
        """The whole grids of line `line` [G, C, h, w], or None where the sample has none of it."""
        if self.grids is None or not (self.grid_lines == line).any():
            return None
        return self.grids[self.grid_lines == line]


def concat(a: Replay, b: Replay, classes: tuple[str, ...]) -> Replay:
    """Two samples indexed into the same `classes` as one, with the grids either has."""
    whole = [(r.grids, r.grid_lines) for r in (a, b) if r.grids is not None]
    if not whole:
        return Replay(classes)
    return Replay(classes, torch.cat([g for g, _ in whole]), torch.cat([k for _, k in whole]))


def sample(
    features: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...], seed: int, grids: int = GRIDS
) -> Replay:
    """A seeded sample of `grids` whole standardised training grids [N, C, h, w] of every line."""
    gen = torch.Generator().manual_seed(seed + 7)
    whole, whole_lines = [], []
    for k in range(len(classes)):
        idx = torch.nonzero(labels == k).flatten()
        chosen = idx[torch.randperm(idx.numel(), generator=gen)[:grids]]
        whole.extend(features[i].to(torch.float16) for i in chosen.tolist())
        whole_lines.extend([k] * chosen.numel())
    return Replay(tuple(classes), torch.stack(whole), torch.tensor(whole_lines))


def save(replay: Replay, folder: Path) -> None:
    tensors = {}
    if replay.grids is not None:
        tensors = {"grids": replay.grids.contiguous(), "grid_lines": replay.grid_lines.to(torch.int16)}
    save_file(tensors, str(folder / FILE), metadata={"classes": "\n".join(replay.classes)})
    (folder / FILE).chmod(0o644)


def load(folder: Path) -> Replay | None:
    """The model's replay sample, or None for a model saved without one."""
    path = folder / FILE
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as fh:
            classes = tuple((fh.metadata() or {}).get("classes", "").split("\n"))
        t = load_file(str(path))
    except Exception as exc:
        raise ModelFormatError(f"{path}: not a readable replay sample ({exc})") from None
    grids, grid_lines = t.get("grids"), t.get("grid_lines")
    return Replay(classes, grids, None if grid_lines is None else grid_lines.long())
