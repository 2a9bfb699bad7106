"""A bounded sample of every line's training features, kept with the model so that lines can be added later
without the old lines' images (`hgad-edge train --from`, add_lines.py).

Per line IMAGES images x POSITIONS positions: the standardised feature vectors there (float16) and the
positions (flat grid indices): at the recipe's 176 channels 16 x 128 x 176 x 2 bytes, about 0.7 MB per line,
in `replay.safetensors` beside the weights. Scoring never reads it, so it is no part of the model id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import ModelFormatError

IMAGES = 16
POSITIONS = 128
FILE = "replay.safetensors"


@dataclass
class Replay:
    vectors: torch.Tensor  # [N, P, C] float16, standardised features
    positions: torch.Tensor  # [N, P] int64, flat grid indices
    lines: torch.Tensor  # [N] int64, index into `classes`
    classes: tuple[str, ...]

    def of(self, names: tuple[str, ...]) -> Replay:
        """The rows of these lines, re-indexed to `names`' order."""
        keep = torch.tensor([self.classes[i] in names for i in self.lines.tolist()], dtype=torch.bool)
        index = torch.tensor([names.index(self.classes[i]) for i in self.lines[keep].tolist()], dtype=torch.int64)
        return Replay(self.vectors[keep], self.positions[keep], index, names)

    def every_nth_image(self, n: int) -> torch.Tensor:
        """A mask [N] of every n-th image (row) of each line."""
        rank = torch.zeros_like(self.lines)
        for k in self.lines.unique().tolist():
            rows = self.lines == k
            rank[rows] = torch.arange(int(rows.sum()))
        return rank % n == n - 1

    def rows(self, mask: torch.Tensor) -> Replay:
        """The rows of a mask [N], with the same lines."""
        return Replay(self.vectors[mask], self.positions[mask], self.lines[mask], self.classes)

    @property
    def nbytes(self) -> int:
        return self.vectors.numel() * self.vectors.element_size() + self.positions.numel() * 2 + self.lines.numel() * 2


def sample(
    features: torch.Tensor,
    labels: torch.Tensor,
    classes: tuple[str, ...],
    seed: int,
    images: int = IMAGES,
    positions: int = POSITIONS,
) -> Replay:
    """A seeded sample of standardised training features [N, C, h, w] of every line: `images` images per line,
    `positions` positions per image."""
    gen = torch.Generator().manual_seed(seed + 7)
    _, c, h, w = features.shape
    rows, where, lines = [], [], []
    for k in range(len(classes)):
        idx = torch.nonzero(labels == k).flatten()
        for i in idx[torch.randperm(idx.numel(), generator=gen)[:images]].tolist():
            sel = torch.randperm(h * w, generator=gen)[: min(positions, h * w)]
            rows.append(features[i].reshape(c, h * w)[:, sel].t().to(torch.float16))
            where.append(sel)
            lines.append(k)
    return Replay(torch.stack(rows), torch.stack(where), torch.tensor(lines), tuple(classes))


def save(replay: Replay, folder: Path) -> None:
    tensors = {
        "vectors": replay.vectors.contiguous(),
        "positions": replay.positions.to(torch.int16),
        "lines": replay.lines.to(torch.int16),
    }
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
    return Replay(t["vectors"], t["positions"].long(), t["lines"].long(), classes)
