"""The cached-feature harness behind docs/results.md's comparison of model options.

The backbone's grid features of a dataset's train and test images are extracted once (raw, at the given
image size) and cached; each run then fits the flow, the position statistics and the reference with the
library's own `fit_flows`, `fit_position_stats` and `fit_references` for one option set, and scores the test
images class-agnostic with maps at 256 px (`hgad-edge eval` scores at the model's input size, so its pixel
AUROC differs in the third digit). One JSON line per run, with per-line image AUROC.

    python -m benchmarks.ablation DATA CACHE.pt hgad:12:0 single:12:0 hgad:12:0:scale hgad:12:0:blocks=8
        [--image-size 768]

A run is PRIOR:EPOCHS:SEED, then optionally `scale` (AltUB's learned scale) and `blocks=N` (flow depth).
`--held-out a,b` trains without those lines and still scores them: how a model does on products it was not
trained on.
The real-photo lines (`python -m benchmarks.photo_lines`) take about 5 minutes per run at 12 epochs on two
cores, plus the features once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hgad.config import FlowConfig, ModelConfig, PriorConfig, TrainConfig
from hgad.data.datasets import Sample, load_split, select_classes
from hgad.data.images import read_mask
from hgad.features import fit_standardisation
from hgad.memory import keep_freed_memory
from hgad.metrics import auroc
from hgad.model import HGAD
from hgad.scoring import SmoothedMap, anomaly, image_score
from hgad.train import extract_features, fit_flows, fit_position_stats, fit_references

MAP_SIZE = 256
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Run:
    prior: str
    epochs: int
    seed: int
    blocks: int = FlowConfig().n_blocks
    learn_scale: bool = False


def build(classes: list[str], run: Run, image_size: int) -> HGAD:
    cfg = ModelConfig(
        classes=tuple(classes),
        image_size=image_size,
        flow=FlowConfig(n_blocks=run.blocks),
        prior=PriorConfig(kind=run.prior, learn_scale=run.learn_scale),
        train=TrainConfig(epochs=run.epochs, seed=run.seed),
    )
    torch.manual_seed(run.seed)
    return HGAD(cfg)


def fit(model: HGAD, features: torch.Tensor, labels: torch.Tensor) -> float:
    """The recipe's fitting steps on raw cached features (standardised in place); the flow's seconds."""
    fit_standardisation(model.features, features)
    start = time.perf_counter()
    fit_flows(model, features, labels, CPU)
    seconds = time.perf_counter() - start
    fit_position_stats(model, features, labels, CPU)
    fit_references(model, features, CPU)
    return seconds


def cached_features(path: Path, classes: list[str], train: list[Sample], test: list[Sample], size: int) -> dict:
    """Raw (unstandardised) grid features of the train and test images, extracted once."""
    if not path.exists():
        model = build(classes, Run("hgad", 1, 0), size)
        torch.save(
            {
                "train": extract_features(model, [s.path for s in train], CPU),
                "test": extract_features(model, [s.path for s in test], CPU),
            },
            path,
        )
    return torch.load(path)


@torch.inference_mode()
def score_test(model: HGAD, test_features: torch.Tensor, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Class-agnostic image scores [N] and anomaly maps [N, 256, 256] of cached test features."""
    to_map = SmoothedMap(model.side, MAP_SIZE, model.cfg.score.sigma)
    scores, maps = [], []
    for i in range(0, test_features.shape[0], batch):
        feats = model.features.standardised(test_features[i : i + batch].float())
        ll = model.forward_ll(feats, model.class_bias(None, feats.shape[0]))
        amap = to_map(anomaly(ll, model.ll_ref))
        scores.append(image_score(amap).numpy())
        maps.append(amap.numpy())
    return np.concatenate(scores), np.concatenate(maps)


def run_spec(value: str) -> Run:
    """PRIOR:EPOCHS:SEED[:scale][:blocks=N], e.g. hgad:12:0 or single:12:1:blocks=8."""
    parts = value.split(":")
    ok = len(parts) >= 3 and parts[0] in ("hgad", "single") and all(p.isdigit() for p in parts[1:3])
    extras: dict = {}
    for extra in parts[3:] if ok else ():
        if extra == "scale":
            extras["learn_scale"] = True
        elif extra.startswith("blocks=") and extra[7:].isdigit():
            extras["blocks"] = int(extra[7:])
        else:
            ok = False
    if not ok:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not PRIOR:EPOCHS:SEED[:scale][:blocks=N] with PRIOR hgad or single, e.g. hgad:12:0"
        )
    return Run(parts[0], int(parts[1]), int(parts[2]), **extras)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("cache", type=Path)
    ap.add_argument("runs", nargs="+", type=run_spec, help="PRIOR:EPOCHS:SEED[:scale][:blocks=N], e.g. hgad:12:0")
    ap.add_argument("--image-size", type=int, default=ModelConfig(classes=("a",)).image_size)
    ap.add_argument("--held-out", default="", help="comma-separated lines left out of training, still scored")
    a = ap.parse_args()
    keep_freed_memory()
    torch.set_num_threads(2)
    classes = select_classes(a.data, None)
    train, test = load_split(a.data, "train", classes), load_split(a.data, "test", classes)
    cache = cached_features(a.cache, classes, train, test, a.image_size)
    held_out = [c for c in a.held_out.split(",") if c]
    trained = [c for c in classes if c not in held_out]
    keep = torch.tensor([s.class_name in trained for s in train])
    labels = torch.tensor([trained.index(s.class_name) for s in train if s.class_name in trained])
    line = np.array([s.class_name for s in test])
    anomalous = np.array([s.label for s in test], dtype=bool)
    masks = np.stack([read_mask(s.mask, MAP_SIZE) for s in test])
    for run in a.runs:
        model = build(trained, run, a.image_size)
        seconds = fit(model, cache["train"][keep].clone(), labels)
        scores, maps = score_test(model, cache["test"])
        image = {c: auroc(anomalous[line == c], scores[line == c]) for c in classes}
        pixel = {c: auroc(masks[line == c], maps[line == c]) for c in classes}
        print(
            json.dumps(
                {
                    **dataclasses.asdict(run),
                    "image_size": a.image_size,
                    "held_out": held_out,
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
