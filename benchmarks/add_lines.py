"""Adding lines to a trained model against training on every line from scratch, on cached features.

    python -m benchmarks.add_lines DATA CACHE.pt --add motorcycle,grass [--lines a,b,...] [--epochs 12]
        [--image-size 768] [--scratch]

The recipe is trained on the other lines (the base), the `--add` lines are then added as `train --from` adds
them (a group of their own: the recipe on their cached features alone, beside the base: hgad/add_lines.py), and
every line taking part is scored class-agnostically, as benchmarks.ablation scores (maps at 256 px). One JSON
line: per-line image and pixel AUROC of the base (on its own lines) and of the grown model, per line the share
of its test images the grown model scored with another group than the line's (normal and anomalous apart),
and the minutes each step took. CACHE.pt is the ablation harness's cache of the same size; every model trained
is kept beside it (CACHE.base-<lines>.pt) for the next run with the same lines. `--lines` limits the lines
taking part to some of DATA's (e.g. the first 12 lines of a 36-line set and one more), with the cache still of
all of DATA. `--scratch` also trains the recipe on every line taking part from scratch, the model the grown
one is measured against.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from hgad.data.datasets import load_split, select_classes
from hgad.data.images import read_mask
from hgad.groups import GroupedHGAD
from hgad.memory import keep_freed_memory
from hgad.metrics import auroc
from hgad.scoring import SmoothedMap, anomaly, image_score

from .ablation import MAP_SIZE, Run, build, cached_features, fit, score_test


@torch.inference_mode()
def score_grouped(model: GroupedHGAD, raw: torch.Tensor, batch: int = 16) -> tuple[np.ndarray, ...]:
    """As ablation.score_test for a grouped model (which takes raw features), with each frame's group."""
    to_map = SmoothedMap(model.groups[0].side, MAP_SIZE, model.cfg.score.sigma)
    scores, maps, groups = [], [], []
    for i in range(0, raw.shape[0], batch):
        feats = raw[i : i + batch].float()
        ll, chosen = model.scored(feats, class_bias=model.class_bias(None, feats.shape[0]))
        amap = to_map(anomaly(ll, model.ll_ref))
        scores.append(image_score(amap).numpy())
        maps.append(amap.numpy())
        groups.append(chosen.numpy())
    return np.concatenate(scores), np.concatenate(maps), np.concatenate(groups)


def per_line(model, cache_test, test, lines) -> dict[str, dict[str, float]]:
    taking_part = torch.tensor([s.class_name in lines for s in test])
    test = [s for s in test if s.class_name in lines]
    grouped = isinstance(model, GroupedHGAD)
    if grouped:
        scores, maps, chosen = score_grouped(model, cache_test[taking_part])
    else:
        scores, maps = score_test(model, cache_test[taking_part])
    line = np.array([s.class_name for s in test])
    anomalous = np.array([s.label for s in test], dtype=bool)
    masks = np.stack([read_mask(s.mask, MAP_SIZE) for s in test])
    out = {}
    for c in lines:
        k = line == c
        out[c] = {"image": round(auroc(anomalous[k], scores[k]), 4), "pixel": round(auroc(masks[k], maps[k]), 4)}
        if grouped:
            elsewhere = chosen[k] != model.group_of(c)
            out[c]["confused"] = [round(float(elsewhere[~anomalous[k]].mean()), 3),
                                  round(float(elsewhere[anomalous[k]].mean()), 3)]  # fmt: skip
    return out


def trained(cache_path: Path, lines: list[str], features: torch.Tensor, train, size: int, epochs: int = 12):
    """The recipe trained from scratch on `lines` (kept beside the cache for the next run)."""
    taking_part = torch.tensor([s.class_name in lines for s in train])
    suffix = "" if epochs == 12 else f".e{epochs}"
    path = cache_path.with_name(f"{cache_path.stem}.base-{'-'.join(lines)}{suffix}.pt")
    if path.exists():
        return torch.load(path, weights_only=False)
    model = build(lines, Run("hgad", epochs, 0), size)
    labels = torch.tensor([lines.index(s.class_name) for s in train if s.class_name in lines])
    fit(model, features[taking_part].clone(), labels)
    torch.save(model, path)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("cache", type=Path)
    ap.add_argument("--add", required=True)
    ap.add_argument("--lines", default="", help="the lines taking part (default: all of DATA's)")
    ap.add_argument("--epochs", type=int, default=12, help="the new group's training epochs")
    ap.add_argument("--image-size", type=int, default=768)
    ap.add_argument("--scratch", action="store_true", help="also train every line taking part from scratch")
    a = ap.parse_args()
    keep_freed_memory()
    torch.set_num_threads(2)
    classes = select_classes(a.data, None)
    added = a.add.split(",")
    lines = a.lines.split(",") if a.lines else classes
    old = [c for c in lines if c not in added]
    train, test = load_split(a.data, "train", classes), load_split(a.data, "test", classes)
    cache = cached_features(a.cache, classes, train, test, a.image_size)
    t0 = time.perf_counter()
    base = trained(a.cache, old, cache["train"], train, a.image_size)
    t1 = time.perf_counter()
    group = trained(a.cache, added, cache["train"], train, a.image_size, a.epochs)
    grown = GroupedHGAD([base, group]).eval()
    t2 = time.perf_counter()
    result = {
        "added": added, "epochs": a.epochs, "image_size": a.image_size,
        "base_minutes": round((t1 - t0) / 60, 1), "add_minutes": round((t2 - t1) / 60, 1),
        "base": per_line(base, cache["test"], test, old),
        "grown": per_line(grown, cache["test"], test, lines),
    }  # fmt: skip
    if a.scratch:
        t3 = time.perf_counter()
        scratch = trained(a.cache, lines, cache["train"], train, a.image_size)
        result["scratch_minutes"] = round((time.perf_counter() - t3) / 60, 1)
        result["scratch"] = per_line(scratch, cache["test"], test, lines)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
