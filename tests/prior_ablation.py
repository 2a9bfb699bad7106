"""The cached-feature harness behind docs/results.md's prior comparisons (sessions 13-15).

The backbone's features of a dataset's train and test images are extracted once (the CLI defaults'
768 px levels, raw) and cached; each run then fits the flows, position statistics and references with the
library's own `fit_flows`, `fit_position_stats` and `fit_references` for one prior, epoch count and seed,
and scores the test images class-agnostic with maps at 256 px (the CLI's `eval` scores at the model's
input size, so its pixel AUROC differs in the third digit). One JSON line per run, with per-line image
AUROC.

    python -m tests.prior_ablation DATA CACHE.pt hgad:12:0 single:12:0 [PRIOR:EPOCHS:SEED ...]

photo12 (`python -m tests.photo_lines`) takes about 5 minutes per run at 12 epochs on 2 cores, plus the
features once (4.5 minutes for its 1920 images).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from hgad.config import ModelConfig, PriorConfig, TrainConfig
from hgad.data.datasets import Sample, load_split, select_classes
from hgad.data.images import read_mask
from hgad.features import fit_standardisation
from hgad.memory import keep_freed_memory
from hgad.metrics import auroc
from hgad.model import HGAD
from hgad.scoring import GaussianBlur, anomaly_from_levels, image_score
from hgad.train import extract_features, fit_flows, fit_position_stats, fit_references

MAP_SIZE = 256
CPU = torch.device("cpu")


def build(classes: list[str], prior: str, epochs: int, seed: int) -> HGAD:
    cfg = ModelConfig(
        classes=tuple(classes), prior=PriorConfig(kind=prior), train=TrainConfig(epochs=epochs, seed=seed)
    )
    torch.manual_seed(seed)
    return HGAD(cfg)


def cached_features(path: Path, classes: list[str], train: list[Sample], test: list[Sample]) -> dict:
    """Raw (unstandardised) level features of the train and test images, extracted once."""
    if not path.exists():
        model = build(classes, "hgad", 1, 0)
        torch.save(
            {
                "train": extract_features(model, [s.path for s in train], CPU),
                "test": extract_features(model, [s.path for s in test], CPU),
            },
            path,
        )
    return torch.load(path)


@torch.inference_mode()
def score_test(model: HGAD, test_features: list[torch.Tensor], batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Class-agnostic image scores [N] and anomaly maps [N, 256, 256] of cached test features."""
    blur = GaussianBlur(model.cfg.score.sigma)
    scores, maps = [], []
    for i in range(0, test_features[0].shape[0], batch):
        feats = [model.levels.standardised(level, f[i : i + batch].float()) for level, f in enumerate(test_features)]
        lls, _ = model.forward_levels(feats, model.class_bias(None, feats[0].shape[0]))
        amap = blur(anomaly_from_levels(lls, model.ll_ref, MAP_SIZE))
        scores.append(image_score(amap, model.cfg.score).numpy())
        maps.append(amap.numpy())
    return np.concatenate(scores), np.concatenate(maps)


def run_spec(value: str) -> tuple[str, int, int]:
    """PRIOR:EPOCHS:SEED, e.g. hgad:12:0."""
    parts = value.split(":")
    if len(parts) != 3 or parts[0] not in ("hgad", "single") or not all(p.isdigit() for p in parts[1:]):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not PRIOR:EPOCHS:SEED with PRIOR hgad or single, e.g. hgad:12:0"
        )
    return parts[0], int(parts[1]), int(parts[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("cache", type=Path)
    ap.add_argument("runs", nargs="+", type=run_spec, help="PRIOR:EPOCHS:SEED, e.g. hgad:12:0")
    a = ap.parse_args()
    keep_freed_memory()
    torch.set_num_threads(2)
    classes = select_classes(a.data, None)
    train, test = load_split(a.data, "train", classes), load_split(a.data, "test", classes)
    cache = cached_features(a.cache, classes, train, test)
    labels = torch.tensor([classes.index(s.class_name) for s in train])
    line = np.array([s.class_name for s in test])
    anomalous = np.array([s.label for s in test], dtype=bool)
    masks = np.stack([read_mask(s.mask, MAP_SIZE) for s in test])
    for prior, epochs, seed in a.runs:
        model = build(classes, prior, epochs, seed)
        features = [f.clone() for f in cache["train"]]  # standardised in place below
        fit_standardisation(model.levels, features)
        start = time.perf_counter()
        fit_flows(model, features, labels, CPU)
        seconds = time.perf_counter() - start
        fit_position_stats(model, features, labels, CPU)
        fit_references(model, features, CPU)
        scores, maps = score_test(model, cache["test"])
        image = {c: auroc(anomalous[line == c], scores[line == c]) for c in classes}
        pixel = {c: auroc(masks[line == c], maps[line == c]) for c in classes}
        print(
            json.dumps(
                {
                    "prior": prior,
                    "epochs": epochs,
                    "seed": seed,
                    "flow_seconds": round(seconds),
                    "image_auroc": round(float(np.mean(list(image.values()))), 4),
                    "pixel_auroc": round(float(np.mean(list(pixel.values()))), 4),
                    "per_line_image_auroc": {c: round(v, 3) for c, v in image.items()},
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
