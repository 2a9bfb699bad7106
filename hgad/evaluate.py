"""Per-class evaluation: image AUROC, pixel AUROC and AUPRO, class-agnostic or class-aware."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data.datasets import Sample, available_classes, load_split
from .data.images import read_mask
from .errors import DataError
from .groups import InferenceModel
from .memory import frames_per_batch
from .metrics import aupro, auroc
from .progress import Progress, quiet
from .train import load_batches

log = logging.getLogger(__name__)

MODES = ("class-agnostic", "class-aware")


@dataclass
class Scored:
    scores: np.ndarray  # [N]
    maps: np.ndarray  # [N, S, S] float32


@torch.inference_mode()
def score_paths(
    model: InferenceModel,
    paths: list[Path],
    line: str | None,
    device: torch.device,
    batch: int | None = None,
    progress: Progress = quiet,
    desc: str = "scoring",
) -> Scored:
    """Anomaly maps and image scores; `line` None is class-agnostic, a class name is class-aware."""
    batch = batch or frames_per_batch(model.cfg.image_size)
    scores, maps = [], []
    for frames in progress(load_batches(paths, model.cfg.image_size, batch), total=-(-len(paths) // batch), desc=desc):
        x = torch.from_numpy(frames).to(device)
        amap, score = model(x, model.class_bias(line, x.shape[0]))
        scores.append(score.float().cpu().numpy())
        maps.append(amap.float().cpu().numpy())
    return Scored(np.concatenate(scores), np.concatenate(maps))


def _check_lines(model: InferenceModel, data: Path, classes: list[str] | None, class_aware: bool) -> list[str]:
    chosen = classes or list(model.classes)
    if not classes:
        have = available_classes(data)
        missing = [c for c in chosen if c not in have]
        if missing:
            # Named here: select_classes would blame a --classes flag the user did not give.
            raise DataError(
                f"{data}: the model's line(s) {', '.join(missing)} are not in this dataset "
                f"(it has {', '.join(have) or 'none'}); choose lines with --classes"
            )
    if class_aware:
        unknown = [c for c in chosen if c not in model.classes]
        if unknown:
            raise DataError(
                f"--class-aware: class(es) {', '.join(unknown)} are not in the model "
                f"(it knows {', '.join(model.classes)})"
            )
    return chosen


def line_metrics(subset: list[Sample], scored: Scored, size: int) -> dict:
    """Image AUROC of every image; pixel AUROC and AUPRO of the images whose pixels are known.

    An anomalous image without a ground-truth mask says nothing about which of its pixels are anomalous: read
    as all-normal it would count its defect's pixels as false alarms. It counts for the image AUROC only."""
    labels = np.array([s.label for s in subset], dtype=bool)
    has_truth = np.array([not s.label or s.mask is not None for s in subset], dtype=bool)
    masks = np.stack([read_mask(s.mask, size) for s, ok in zip(subset, has_truth, strict=True) if ok])
    maps = scored.maps[has_truth]
    return {
        "image_auroc": auroc(labels, scored.scores),
        "pixel_auroc": auroc(masks, maps),
        "aupro": aupro(masks, maps),
        "n_normal": int((~labels).sum()),
        "n_anomalous": int(labels.sum()),
        "n_without_mask": int((~has_truth).sum()),
    }


def evaluate(
    model: InferenceModel,
    data: Path,
    classes: list[str] | None = None,
    class_aware: bool = False,
    device: str | torch.device = "cpu",
    progress: Progress = quiet,
) -> dict:
    """The `eval` JSON: {"classes": {NAME: {image_auroc, pixel_auroc, aupro, ...}}, "mean": {...}, "mode"}."""
    device = torch.device(device)
    chosen = _check_lines(model, data, classes, class_aware)
    samples = load_split(data, "test", chosen)
    results = {}
    # The outer line also covers the metrics, which take a while at 768 px (tens of millions of pixels
    # sorted per line) and would otherwise pass in silence after each line's scoring bar.
    for cls in progress(chosen, total=len(chosen), desc="eval lines"):
        subset: list[Sample] = [s for s in samples if s.class_name == cls]
        line = cls if class_aware else None
        scored = score_paths(model, [s.path for s in subset], line, device, progress=progress, desc=f"score {cls}")
        results[cls] = line_metrics(subset, scored, model.cfg.image_size)
        if results[cls]["n_without_mask"]:
            fields = {"line": cls, "images": results[cls]["n_without_mask"], "pixel_metrics": "leave them out"}
            log.warning("anomalous test images without a mask", extra={"fields": fields})
    keys = ("image_auroc", "pixel_auroc", "aupro")
    mean = {k: float(np.nanmean([r[k] for r in results.values()])) for k in keys}
    return {"classes": results, "mean": mean, "mode": MODES[int(class_aware)]}
