"""A bounded sample of every line's training features, kept with the model so that lines can be added later
without the old lines' images (`hgad-edge train --from`, add_lines.py).

Per line, two parts, both standardised features in float16:
- vectors: IMAGES images x POSITIONS positions and the positions (flat grid indices), what the fine-tuning
  rehearses; at the recipe's 176 channels 16 x 128 x 176 x 2 bytes, about 0.7 MB per line;
- grids: GRIDS whole feature grids of other images, never trained on, scored under the model before and after
  an add to judge whether the line's calibration profiles still hold (an image's score is the highest point of
  its smoothed map, which only a whole grid gives); at 768 px 4 x 176 x 48 x 48 x 2 bytes, about 3.2 MB.
Both in `replay.safetensors` beside the weights. Scoring never reads it, so it is no part of the model id. A
sample saved before grids were kept loads without them; its lines cannot be judged and must be recalibrated
after an add.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import ModelFormatError

IMAGES = 16
POSITIONS = 128
GRIDS = 4
FILE = "replay.safetensors"


@dataclass
class Replay:
    vectors: torch.Tensor  # [N, P, C] float16, standardised features
    positions: torch.Tensor  # [N, P] int64, flat grid indices
    lines: torch.Tensor  # [N] int64, index into `classes`
    classes: tuple[str, ...]
    grids: torch.Tensor | None = None  # [M, C, h, w] float16, standardised features of whole images
    grid_lines: torch.Tensor | None = None  # [M] int64, index into `classes`

    def of(self, names: tuple[str, ...]) -> Replay:
        """The rows and grids of these lines, re-indexed to `names`' order."""
        keep, index = self._reindex(self.lines, names)
        grids = grid_lines = None
        if self.grids is not None:
            kept_grids, grid_lines = self._reindex(self.grid_lines, names)
            grids = self.grids[kept_grids]
        return Replay(self.vectors[keep], self.positions[keep], index, names, grids, grid_lines)

    def _reindex(self, lines: torch.Tensor, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        keep = torch.tensor([self.classes[i] in names for i in lines.tolist()], dtype=torch.bool)
        return keep, torch.tensor([names.index(self.classes[i]) for i in lines[keep].tolist()], dtype=torch.int64)

    def grids_of(self, line: int) -> torch.Tensor | None:
        """The whole grids of line `line` [G, C, h, w], or None where the sample has none of it."""
        if self.grids is None or not (self.grid_lines == line).any():
            return None
        return self.grids[self.grid_lines == line]

    @property
    def nbytes(self) -> int:
        n = self.vectors.numel() * self.vectors.element_size() + self.positions.numel() * 2 + self.lines.numel() * 2
        if self.grids is not None:
            n += self.grids.numel() * self.grids.element_size() + self.grid_lines.numel() * 2
        return n


def concat(a: Replay, b: Replay, classes: tuple[str, ...]) -> Replay:
    """Two samples indexed into the same `classes` as one, with the grids either has."""
    whole = [(r.grids, r.grid_lines) for r in (a, b) if r.grids is not None]
    grids = torch.cat([g for g, _ in whole]) if whole else None
    grid_lines = torch.cat([k for _, k in whole]) if whole else None
    return Replay(
        torch.cat([a.vectors, b.vectors]), torch.cat([a.positions, b.positions]), torch.cat([a.lines, b.lines]),
        classes, grids, grid_lines,
    )  # fmt: skip


def sample(
    features: torch.Tensor,
    labels: torch.Tensor,
    classes: tuple[str, ...],
    seed: int,
    images: int = IMAGES,
    positions: int = POSITIONS,
    grids: int = GRIDS,
) -> Replay:
    """A seeded sample of standardised training features [N, C, h, w] of every line: `images` images per line,
    `positions` positions per image, and the whole grids of `grids` further images (of the same ones where the
    line has too few)."""
    gen = torch.Generator().manual_seed(seed + 7)
    _, c, h, w = features.shape
    rows, where, lines, whole, whole_lines = [], [], [], [], []
    for k in range(len(classes)):
        idx = torch.nonzero(labels == k).flatten()
        order = idx[torch.randperm(idx.numel(), generator=gen)]
        for i in order[:images].tolist():
            sel = torch.randperm(h * w, generator=gen)[: min(positions, h * w)]
            rows.append(features[i].reshape(c, h * w)[:, sel].t().to(torch.float16))
            where.append(sel)
            lines.append(k)
        rest = order[images : images + grids] if order.numel() >= images + grids else order[-grids:]
        whole.extend(features[i].to(torch.float16) for i in rest.tolist())
        whole_lines.extend([k] * rest.numel())
    return Replay(
        torch.stack(rows), torch.stack(where), torch.tensor(lines), tuple(classes),
        torch.stack(whole), torch.tensor(whole_lines),
    )  # fmt: skip


def save(replay: Replay, folder: Path) -> None:
    tensors = {
        "vectors": replay.vectors.contiguous(),
        "positions": replay.positions.to(torch.int16),
        "lines": replay.lines.to(torch.int16),
    }
    if replay.grids is not None:
        tensors |= {"grids": replay.grids.contiguous(), "grid_lines": replay.grid_lines.to(torch.int16)}
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
    return Replay(
        t["vectors"], t["positions"].long(), t["lines"].long(), classes,
        grids, None if grid_lines is None else grid_lines.long(),
    )  # fmt: skip
