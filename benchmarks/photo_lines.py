"""A benchmark of real photographs: 12 product lines cut from photos shipped with scikit-image and
matplotlib (textures: brick, grass, gravel, moon, IHC stain, Hubble field, retina, cells; panels: coins,
printed page, motorcycle, coffee cup), in MVTec AD layout with the six synthetic defect kinds painted on.

Normal images of a texture line are random crops of its photo; panel lines are nearly fixed crops with
small shifts, as a part under a fixed camera. Lighting gain and sensor noise vary per image.

    python -m benchmarks.photo_lines OUT [--train 100] [--test 60] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import cv2
import numpy as np

from hgad.data.synth import DEFECTS, apply_defect

SIZE = 256
# name: (source, kind, crop side in source pixels, source scale)
LINES = {
    "brick": ("skimage:brick.png", "texture", 200, 1.0),
    "grass": ("skimage:grass.png", "texture", 220, 1.0),
    "gravel": ("skimage:gravel.png", "texture", 220, 1.0),
    "moon": ("skimage:moon.png", "texture", 240, 1.0),
    "ihc": ("skimage:ihc.png", "texture", 220, 1.0),
    "hubble": ("skimage:hubble_deep_field.jpg", "texture", 300, 1.0),
    "retina": ("skimage:retina.jpg", "texture", 360, 1.0),
    "cells": ("skimage:cell.png", "texture", 260, 1.0),
    "coins": ("skimage:coins.png", "panel", 280, 1.0),
    "page": ("skimage:page.png", "panel", 180, 1.6),
    "motorcycle": ("skimage:motorcycle_left.png", "panel", 300, 1.0),
    "coffee": ("skimage:coffee.png", "panel", 320, 1.0),
}


def load_source(spec: str) -> np.ndarray:
    """BGR uint8 from a file shipped inside an installed package (read directly: nothing is fetched)."""
    kind, name = spec.split(":")
    if kind == "skimage":
        import skimage.data

        folder = os.path.dirname(skimage.data.__file__)
    else:
        import matplotlib

        folder = os.path.join(matplotlib.get_data_path(), "sample_data")
    img = cv2.imread(os.path.join(folder, name), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"{name} is not in {folder}")
    return img


def crop(src: np.ndarray, kind: str, side: int, rng: np.random.Generator) -> np.ndarray:
    h, w = src.shape[:2]
    side = min(side, h, w)
    if kind == "texture":
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        s = side
    else:  # a part in a fixture: the same window, a few pixels of play, a slight scale change
        s = int(side * rng.uniform(0.97, 1.03))
        s = min(s, h, w)
        cy, cx = (h - s) // 2, (w - s) // 2
        y = int(np.clip(cy + rng.integers(-4, 5), 0, h - s))
        x = int(np.clip(cx + rng.integers(-4, 5), 0, w - s))
    patch = cv2.resize(src[y : y + s, x : x + s], (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    patch = patch / 255.0 * (1.0 + rng.normal(0, 0.03)) + rng.normal(0, 0.01, patch.shape)
    return np.clip(patch, 0, 1).astype(np.float32)


def write(out: Path, train: int = 100, test: int = 60, seed: int = 0, lines: list[str] | None = None) -> list[str]:
    names = lines or list(LINES)
    for li, name in enumerate(names):
        source, kind, side, scale = LINES[name]
        src = load_source(source)
        if scale != 1.0:
            src = cv2.resize(src, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        n_good = round(test * 0.4)
        jobs = [("train", "good", i) for i in range(train)] + [("test", "good", i) for i in range(n_good)]
        jobs += [("test", DEFECTS[i % len(DEFECTS)], i) for i in range(test - n_good)]
        for split, defect, i in jobs:
            kind_index = DEFECTS.index(defect) + 1 if defect != "good" else 0
            rng = np.random.default_rng([seed, li, int(split == "test"), kind_index, i])
            img = crop(src, kind, side, rng)
            folder = out / name / split / defect
            folder.mkdir(parents=True, exist_ok=True)
            if defect != "good":
                img, mask = apply_defect(img, defect, rng)
                gt = out / name / "ground_truth" / defect
                gt.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(gt / f"{i:03d}_mask.png"), mask.astype(np.uint8) * 255)
            cv2.imwrite(str(folder / f"{i:03d}.png"), (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
    (out / "photo_lines.json").write_text(json.dumps({"lines": names, "train": train, "test": test, "seed": seed}))
    return names


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=100)
    ap.add_argument("--test", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(write(a.out, a.train, a.test, a.seed))
