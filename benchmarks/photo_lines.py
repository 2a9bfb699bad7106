"""Benchmarks of real photographs: product lines cut from photos shipped with scikit-image and matplotlib,
in MVTec AD layout with the six synthetic defect kinds painted on.

The first 12 lines, the default set (textures: brick, grass, gravel, moon, IHC stain, Hubble field, retina,
cells; panels: coins, printed page, motorcycle, coffee cup). `--lines 36` adds 24: twelve more products
(astronaut, camera, cat, rocket, portrait, gift box, microaneurysms, text, clock, logo, colour chart,
phantom) and twelve near-alike variants of lines already there, as a plant makes them: the motorcycle seen
from the other camera of a stereo pair, the cup and the gift box in other colourways, darker brick and
lighter grass, brick and gravel seen closer, other windows of the coins, the astronaut and the cat.
`--lines 24` adds the first half of them (six products, six variants).

Normal images of a texture line are random crops of its photo; panel lines are nearly fixed crops with
small shifts, as a part under a fixed camera. Lighting gain and sensor noise vary per image.

`--synthetic K` swaps the set's last K photo lines for K lines of `hgad-edge synth` (the same counts and
seed), spread through the order so that each third of it holds a third of them: `--lines 36 --synthetic 6`
is the first 30 photo lines and 6 synthetic ones, 2 among the first 12 and 4 among the first 24.

    python -m benchmarks.photo_lines OUT [--lines 12|24|36] [--synthetic K] [--train 100] [--test 60] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from hgad.data.synth import DEFECTS, SynthSpec, apply_defect, line_names, write_dataset

SIZE = 256


@dataclass(frozen=True)
class Line:
    source: str  # skimage:NAME or matplotlib:NAME, a file shipped inside the package
    kind: str  # texture (random crops) or panel (a fixed window with a little play)
    side: int  # crop side in source pixels
    scale: float = 1.0  # the source resized first
    hue: int = 0  # OpenCV hue steps (180 a turn) added: a colourway of the same product
    gain: float = 1.0  # a darker or lighter finish
    offset: tuple[int, int] = (0, 0)  # a panel's window moved from the centre (rows, columns)


PHOTO12 = {
    "brick": Line("skimage:brick.png", "texture", 200),
    "grass": Line("skimage:grass.png", "texture", 220),
    "gravel": Line("skimage:gravel.png", "texture", 220),
    "moon": Line("skimage:moon.png", "texture", 240),
    "ihc": Line("skimage:ihc.png", "texture", 220),
    "hubble": Line("skimage:hubble_deep_field.jpg", "texture", 300),
    "retina": Line("skimage:retina.jpg", "texture", 360),
    "cells": Line("skimage:cell.png", "texture", 260),
    "coins": Line("skimage:coins.png", "panel", 280),
    "page": Line("skimage:page.png", "panel", 180, scale=1.6),
    "motorcycle": Line("skimage:motorcycle_left.png", "panel", 300),
    "coffee": Line("skimage:coffee.png", "panel", 320),
}
# Each half: six new products and six variants of lines already there.
MORE = {
    "astronaut": Line("skimage:astronaut.png", "panel", 400),
    "camera": Line("skimage:camera.png", "panel", 400),
    "chelsea": Line("skimage:chelsea.png", "panel", 280),
    "rocket": Line("skimage:rocket.jpg", "panel", 400),
    "hopper": Line("matplotlib:grace_hopper.jpg", "panel", 440),
    "present": Line("matplotlib:Minduka_Present_Blue_Pack.png", "panel", 116),
    "motorcycle-right": Line("skimage:motorcycle_right.png", "panel", 300),
    "coffee-teal": Line("skimage:coffee.png", "panel", 320, hue=60),
    "brick-dark": Line("skimage:brick.png", "texture", 200, gain=0.7),
    "gravel-coarse": Line("skimage:gravel.png", "texture", 130),
    "coins-left": Line("skimage:coins.png", "panel", 200, offset=(0, -80)),
    "present-red": Line("matplotlib:Minduka_Present_Blue_Pack.png", "panel", 116, hue=70),
    "microaneurysms": Line("skimage:microaneurysms.png", "texture", 80),
    "text": Line("skimage:text.png", "panel", 160),
    "clock": Line("skimage:clock_motion.png", "panel", 280),
    "logo": Line("skimage:logo.png", "panel", 440),
    "color": Line("skimage:color.png", "panel", 340),
    "phantom": Line("skimage:phantom.png", "panel", 360),
    "coffee-violet": Line("skimage:coffee.png", "panel", 320, hue=120),
    "present-green": Line("matplotlib:Minduka_Present_Blue_Pack.png", "panel", 116, hue=120),
    "brick-large": Line("skimage:brick.png", "texture", 120),
    "grass-light": Line("skimage:grass.png", "texture", 220, gain=1.35),
    "astronaut-suit": Line("skimage:astronaut.png", "panel", 260, offset=(110, 40)),
    "chelsea-face": Line("skimage:chelsea.png", "panel", 200, offset=(-30, 40)),
}
_more = list(MORE)
SETS = {12: list(PHOTO12), 24: list(PHOTO12) + _more[:12], 36: list(PHOTO12) + _more}
LINES = {**PHOTO12, **MORE}


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


def crop(src: np.ndarray, line: Line, rng: np.random.Generator) -> np.ndarray:
    h, w = src.shape[:2]
    side = min(line.side, h, w)
    if line.kind == "texture":
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        s = side
    else:  # a part in a fixture: the same window, a few pixels of play, a slight scale change
        s = int(side * rng.uniform(0.97, 1.03))
        s = min(s, h, w)
        cy, cx = (h - s) // 2 + line.offset[0], (w - s) // 2 + line.offset[1]
        y = int(np.clip(cy + rng.integers(-4, 5), 0, h - s))
        x = int(np.clip(cx + rng.integers(-4, 5), 0, w - s))
    patch = cv2.resize(src[y : y + s, x : x + s], (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    patch = patch / 255.0 * (1.0 + rng.normal(0, 0.03)) + rng.normal(0, 0.01, patch.shape)
    return np.clip(patch, 0, 1).astype(np.float32)


def finish(src: np.ndarray, line: Line) -> np.ndarray:
    """The line's source photo at its scale, colourway and finish."""
    if line.scale != 1.0:
        src = cv2.resize(src, None, fx=line.scale, fy=line.scale, interpolation=cv2.INTER_CUBIC)
    if line.hue:
        hsv = cv2.cvtColor(src, cv2.COLOR_BGR2HSV)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + line.hue) % 180).astype(np.uint8)
        src = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if line.gain != 1.0:
        src = np.clip(src.astype(np.float32) * line.gain, 0, 255).astype(np.uint8)
    return src


def write(out: Path, train: int = 100, test: int = 60, seed: int = 0, lines: list[str] | None = None) -> list[str]:
    names = lines or SETS[12]
    write_images(out, train, test, seed, names)
    (out / "photo_lines.json").write_text(json.dumps({"lines": names, "train": train, "test": test, "seed": seed}))
    return names


def write_images(out: Path, train: int, test: int, seed: int, names: list[str]) -> None:
    """Each line's training and test images, with the defects' masks, in MVTec AD layout."""
    for li, name in enumerate(names):
        line = LINES[name]
        src = finish(load_source(line.source), line)
        n_good = round(test * 0.4)
        jobs = [("train", "good", i) for i in range(train)] + [("test", "good", i) for i in range(n_good)]
        jobs += [("test", DEFECTS[i % len(DEFECTS)], i) for i in range(test - n_good)]
        for split, defect, i in jobs:
            kind_index = DEFECTS.index(defect) + 1 if defect != "good" else 0
            rng = np.random.default_rng([seed, li, int(split == "test"), kind_index, i])
            img = crop(src, line, rng)
            folder = out / name / split / defect
            folder.mkdir(parents=True, exist_ok=True)
            if defect != "good":
                img, mask = apply_defect(img, defect, rng)
                gt = out / name / "ground_truth" / defect
                gt.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(gt / f"{i:03d}_mask.png"), mask.astype(np.uint8) * 255)
            cv2.imwrite(str(folder / f"{i:03d}.png"), (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))


def spread(photo: list[str], synthetic: list[str], parts: int = 3) -> list[str]:
    """The photo lines in order with the synthetic lines spread through them: each of `parts` equal parts of
    the order ends with its share of the synthetic lines."""
    if len(photo) % parts or len(synthetic) % parts:
        raise ValueError(f"{len(photo)} photo and {len(synthetic)} synthetic lines do not split into {parts} parts")
    p, k = len(photo) // parts, len(synthetic) // parts
    return [n for i in range(parts) for n in photo[i * p : (i + 1) * p] + synthetic[i * k : (i + 1) * k]]


def write_mixed(out: Path, lines: int, synthetic: int, train: int = 100, test: int = 60, seed: int = 0) -> list[str]:
    """The set of `lines` with its last `synthetic` photo lines swapped for synthetic ones (see the module)."""
    if not 0 < synthetic < lines:
        raise ValueError(f"--synthetic {synthetic}: give 1 to {lines - 1} synthetic lines for --lines {lines}")
    photo, names = SETS[lines][: lines - synthetic], sorted(line_names(synthetic))
    order = spread(photo, names)  # refused here, before anything is written
    write_dataset(out, SynthSpec(synthetic, train, test, SIZE, seed))
    (out / "synth.json").unlink()  # the folder is this benchmark's, not a synth dataset to be replaced whole
    write_images(out, train, test, seed, photo)
    meta = {"lines": order, "synthetic": names, "train": train, "test": test, "seed": seed}
    (out / "photo_lines.json").write_text(json.dumps(meta))
    return order


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--lines", type=int, choices=list(SETS), default=12, help="how many lines (default: 12)")
    ap.add_argument("--train", type=int, default=100)
    ap.add_argument("--test", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--synthetic", type=int, default=0, help="synthetic lines in place of the last photo lines")
    a = ap.parse_args()
    if a.synthetic:
        try:
            print(write_mixed(a.out, a.lines, a.synthetic, a.train, a.test, a.seed))
        except ValueError as exc:
            ap.error(str(exc))
    else:
        print(write(a.out, a.train, a.test, a.seed, SETS[a.lines]))
